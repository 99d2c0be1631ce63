#!/usr/bin/env bash
# capture.sh - Capture a trace CSV with the platform's tracer and check it is complete.
#
# Runs probes/enobufs.bt (Linux, bpftrace) or probes/enobufs.d (macOS, DTrace), then:
# warns at exit, on stderr and as a '# warning:' line in the CSV, when the tracer reported
# lost records (bpftrace "Lost N events", DTrace "N drops on CPU M"), and sorts the rows by
# ts_ns (both tracers write per-CPU buffers, so raw captures are ordered per CPU only).
#
# USAGE: sudo probes/capture.sh -o FILE [--no-frames] -p PID BINARY
#        sudo probes/capture.sh -o FILE [--no-frames] -c 'BINARY ARGS' BINARY
#
#   BINARY       executable with the vnet probes (bpftrace needs its path; DTrace ignores it)
#   --no-frames  leave out tx_frame/rx_frame, for long runs: they are not attached at all
#                (bpftrace gets a copy of enobufs.bt without them, from noframes.awk;
#                DTrace gets -D FRAMES=0), so they cost nothing and the device skips them
#
# Example: sudo probes/capture.sh -o trace.csv -c 'target/release/vnet-sim --duration 30' \
#              target/release/vnet-sim && target/release/analyze report trace.csv
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
usage() { sed -n 's/^# \{0,1\}//; 9,15p' "$0" >&2; exit 2; }

out="" frames=1 target=() binary=""
while [ $# -gt 0 ]; do
  case $1 in
    -o) out=$2; shift 2 ;;
    --no-frames) frames=0; shift ;;
    -p|-c) target=("$1" "$2"); shift 2 ;;
    -h|--help) usage ;;
    -*) echo "capture.sh: unknown option $1" >&2; usage ;;
    *) binary=$1; shift ;;
  esac
done
[ -n "$out" ] && [ ${#target[@]} -eq 2 ] || usage
err=$(mktemp)
tmpscript=$(mktemp)
trap 'rm -f "$err" "$tmpscript"' EXIT
rm -f "$out" # dtrace -o appends

case $(uname -s) in
  Linux)
    [ -n "$binary" ] || { echo "capture.sh: bpftrace needs the BINARY path" >&2; usage; }
    export BPFTRACE_PERF_RB_PAGES=${BPFTRACE_PERF_RB_PAGES:-1024}
    # bpftrace 0.17 attaches every clause it is given (enobufs.bt's FRAMES=0 only filters),
    # so leaving the frame probes out means a script without their clauses
    script=$here/enobufs.bt
    if [ "$frames" = 0 ]; then
      script=$tmpscript
      awk -f "$here/noframes.awk" "$here/enobufs.bt" > "$script"
    fi
    status=0
    bpftrace -q -o "$out" "$script" "$binary" "${target[@]}" 2> >(tee "$err" >&2) || status=$?
    ;;
  Darwin)
    status=0
    # -C runs cpp: enobufs.d's '#if FRAMES' leaves the frame clauses unenabled
    # stderr to a file, shown afterwards: macOS's /bin/bash 3.2 does not wait for a
    # process substitution, so a tee of it could still be writing when we count drops
    dtrace -C -D FRAMES=$frames -s "$here/enobufs.d" "${target[@]}" -o "$out" 2> "$err" || status=$?
    cat "$err" >&2
    ;;
  *) echo "capture.sh: no tracer for $(uname -s)" >&2; exit 1 ;;
esac
wait # for the tee of stderr

lost=$( { grep -oE 'Lost [0-9]+ events|[0-9]+ drops on CPU' "$err" || true; } | { grep -oE '^[0-9]+|[0-9]+' || true; } | awk '{s += $1} END {print s + 0}')
if [ -s "$out" ]; then
  # comment lines and the header stay first; rows sorted by ts_ns, stable
  tmp=$(mktemp "$out.XXXXXX")
  { grep -E '^(#|ts_ns,)' "$out" || true; grep -vE '^(#|ts_ns,)' "$out" | sort -t, -k1,1n -s; } > "$tmp"
  mv "$tmp" "$out"
fi
if [ "$lost" -gt 0 ]; then
  echo "# warning: the tracer lost $lost records; this trace is incomplete" >> "$out"
  echo "capture.sh: WARNING: the tracer lost $lost records: $out is incomplete (raise BPFTRACE_PERF_RB_PAGES, or enobufs.d's -D BUFSIZE= for DTrace, or use --no-frames)" >&2
fi
rows=$(grep -cvE '^(#|ts_ns,)' "$out" || true)
echo "capture.sh: $rows rows in $out" >&2
exit "$status"
