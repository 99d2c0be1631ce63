#!/usr/bin/env bash
# Overhead of watching the device: simulated-VM throughput with probes/enobufs.bt attached
# (all probes; FRAMES=0, which only filters; and the script without the frame clauses that
# capture.sh --no-frames runs, which leaves them unattached), with the in-process recorder,
# with syscalls.bt (the syscall-level capture, which needs no probes), and with DEBUG
# logging, each as a ratio to the same workload untraced, measured in this run. Needs root
# for bpftrace. The syscalls.bt modes:
#   syscalls.bt            every AF_UNIX socket of the process, as capture.sh --syscalls -c
#                          runs it (here: the device's socket and its built-in proxy's two)
#   syscalls-no-frames     the same as --syscalls --no-frames runs it (no receive probes,
#                          no tx_frame/rx_frame rows)
#   syscalls-fd            the device's socket only, as --socket/--fd traces a VMM's
#   syscalls-fd-no-frames  that, with --no-frames
#   syscalls-fd-nice       syscalls-fd with bpftrace (the reader of the rows) at nice
#                          $NICE (default 10), so it takes less CPU from the traced process
#   syscalls-floor         every tracepoint syscalls.bt attaches, each with a program that
#                          only counts the process's calls: what being attached costs
#                          before the script does any work of its own
#   systrace               vnet-systrace (probes/systrace: the same rules as one BPF object,
#                          rows through a BPF ring buffer, CSV written by the loader), every
#                          AF_UNIX socket, as capture.sh --syscalls runs it when it is built
#   systrace-no-frames     that, with --no-frames
#   systrace-fd            that, the device's socket only
# Each syscalls run's row lines go through syscalls-rows.awk, and rows it could not keep
# are reported with the run's line on stderr ("lost N rows").
#
#   sudo probes/bench.sh [SECS per run, default 5] [REPEATS, default 3]
#   sudo MODES="untraced syscalls.bt" probes/bench.sh 5 7     # only some modes
#   sudo PIN=1 MODES="untraced syscalls-floor syscalls-fd" probes/bench.sh 5 7
#
# PIN=1 runs the simulator on CPU 1 and bpftrace on CPU 0 (taskset): the process then pays
# only for what the kernel does in its system calls (the probes' programs), not for the
# reader, which competes with it for the cores otherwise; and its throughput, no longer
# depending on where the scheduler puts its threads, varies far less between rounds.
#
# Prints a markdown table per mode: throughput, and CPU seconds (the simulator plus the
# tracer) per GB moved, each also as the median over rounds of its ratio to the untraced run
# of the same round.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
reps=${2:-3}
[ "$(id -u)" = 0 ] || { echo "bench.sh: needs root (bpftrace)"; exit 1; }
command -v bpftrace >/dev/null || { echo "bench.sh: bpftrace not installed"; exit 1; }
[ -n "${VNET_SIM:-}" ] || cargo build --release -q -p vnet-sim --bin vnet-sim
sim=${VNET_SIM:-$PWD/target/release/vnet-sim}
[ -n "${VNET_SYSTRACE:-}" ] || [[ " ${MODES:-systrace} " != *" systrace"* ]] || cargo build --release -q -p vnet-systrace
systrace=${VNET_SYSTRACE:-$PWD/target/release/vnet-systrace}
# 4 MiB of perf ring per CPU instead of 256 KiB: a loaded machine must not lose rows
# ("Lost N events"), or the counts below stop matching.
export BPFTRACE_PERF_RB_PAGES=${BPFTRACE_PERF_RB_PAGES:-1024}
# syscalls.bt's row map, as capture.sh --syscalls sizes it
export BPFTRACE_MAP_KEYS_MAX=${BPFTRACE_MAP_KEYS_MAX:-65536}
nice=${NICE:-10}
proc=$sim tracer=(bpftrace) native=("$systrace")
if [ "${PIN:-0}" = 1 ]; then
  [ "$(nproc)" -ge 2 ] || { echo "bench.sh: PIN=1 needs two CPUs"; exit 1; }
  proc="$(command -v taskset) -c 1 $sim" tracer=(taskset -c 0 bpftrace) native=(taskset -c 0 "$systrace")
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# the workload: bidirectional, 8 streams, ENOBUFS injected on every 50th send so the
# episode probes fire too (the per-frame probes dominate either way)
load="--duration $secs --inject-enobufs 50 --json --no-progress"

# Runs a command, stdout to $out, and writes the CPU seconds it and its children used to
# $work/cpu: the tracer's own CPU counts, it is part of the price of watching.
cpu() {
  python3 - "$work/cpu" "$@" <<'PY'
import resource, subprocess, sys
subprocess.run(sys.argv[2:], check=False)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{r.ru_utime + r.ru_stime}\n")
PY
}
stats() { # Gbit/s and CPU seconds per GB moved, from the JSON summary and $work/cpu
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); c=float(open(sys.argv[2]).read())
print(d["gbit_per_s"], c / ((d["tx_bytes"] + d["rx_bytes"]) / 1e9))' "$1" "$work/cpu"
}
one() { # mode -> prints "Gbit/s cpu_s_per_GB" of one run
  local mode=$1 out=$work/run.json
  case $mode in
    untraced) cpu $proc $load > "$out" ;;
    enobufs.bt) cpu "${tracer[@]}" -q -o "$work/t.csv" probes/enobufs.bt "$sim" -c "$proc $load" > "$out" 2>/dev/null ;;
    enobufs.bt-FRAMES=0) cpu "${tracer[@]}" -q -o "$work/t.csv" probes/enobufs.bt "$sim" 0 -c "$proc $load" > "$out" 2>/dev/null ;;
    no-frames) cpu "${tracer[@]}" -q -o "$work/t.csv" "$work/noframes.bt" "$sim" -c "$proc $load" > "$out" 2>/dev/null ;;
    syscalls.bt) cpu "${tracer[@]}" -q -o "$work/t.csv" "$work/syscalls.bt" 0 -c "$proc $load" > "$out" 2>/dev/null ;;
    syscalls-no-frames) cpu "${tracer[@]}" -q -o "$work/t.csv" "$work/syscalls-nf.bt" 0 -c "$proc $load" > "$out" 2>/dev/null ;;
    syscalls-fd) cpu "${tracer[@]}" -q -o "$work/t.csv" "$work/syscalls.bt" 0 "$devfd" -c "$proc $load" > "$out" 2>/dev/null ;;
    syscalls-fd-no-frames) cpu "${tracer[@]}" -q -o "$work/t.csv" "$work/syscalls-nf.bt" 0 "$devfd" -c "$proc $load" > "$out" 2>/dev/null ;;
    syscalls-floor) cpu "${tracer[@]}" -q -o "$work/t.csv" "$work/floor.bt" -c "$proc $load" > "$out" 2>/dev/null ;;
    syscalls-fd-nice) cpu nice -n "$nice" "${tracer[@]}" -q -o "$work/t.csv" "$work/syscalls.bt" 0 "$devfd" -c "$proc $load" > "$out" 2>/dev/null ;;
    systrace) rm -f "$work/t.csv"; cpu "${native[@]}" -o "$work/t.csv" -c "$proc $load" > "$out" 2> "$work/st.err" ;;
    systrace-no-frames) rm -f "$work/t.csv"; cpu "${native[@]}" --no-frames -o "$work/t.csv" -c "$proc $load" > "$out" 2> "$work/st.err" ;;
    systrace-fd) rm -f "$work/t.csv"; cpu "${native[@]}" --fd "$devfd" -o "$work/t.csv" -c "$proc $load" > "$out" 2> "$work/st.err" ;;
    recorder) cpu $proc $load --trace "$work/r.csv" > "$out" ;;
    debug-log) cpu $proc $load --log-level debug > "$out" 2> "$work/debug.log" ;;
  esac
  # third field: rows syscalls.bt's maps could not hold (the reader too slow), "-" otherwise
  local lost=-
  if [[ $mode == syscalls* && $mode != syscalls-floor ]]; then
    lost=$(awk -f probes/syscalls-rows.awk "$work/t.csv" 2>&1 > /dev/null | grep -o 'lost [0-9]* rows of [0-9]*' || echo "lost 0 rows")
    lost=${lost// /_}
  elif [[ $mode == systrace* ]]; then
    lost=$(grep -o 'lost [0-9]* rows of [0-9]*' "$work/st.err" || echo "lost 0 rows")
    lost=${lost// /_}
  fi
  echo "$(stats "$out") $lost"
}
median() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

# what capture.sh --no-frames runs (it would also sort the rows afterwards: not tracing cost)
awk -f probes/noframes.awk probes/enobufs.bt > "$work/noframes.bt"
# what capture.sh --syscalls -c runs: syscalls.bt filtering on bpftrace's child
sed 's/pid == \$1/pid == cpid/' probes/syscalls.bt > "$work/syscalls.bt"
# ... and with --no-frames: the frame blocks cut out (no receive probes, no tx_frame rows)
sed '/\/\* frames {/,/\/\* } frames \*\//d' "$work/syscalls.bt" > "$work/syscalls-nf.bt"
# ... and the floor: its tracepoints, each counting the child's calls and nothing else
{ grep -o '^tracepoint:syscalls:[a-z0-9_]*' probes/syscalls.bt | sort -u | paste -sd, -
  echo '/pid == cpid/ { @calls = count(); }'
  echo 'END { clear(@calls); }'; } > "$work/floor.bt"
read -r -a modes <<< "${MODES:-untraced enobufs.bt enobufs.bt-FRAMES=0 no-frames syscalls.bt syscalls-no-frames syscalls-fd syscalls-fd-no-frames syscalls-fd-nice recorder debug-log}"
[ "${modes[0]}" = untraced ] || { echo "bench.sh: MODES must start with untraced (the baseline)"; exit 2; }
# The device's own socket, for the syscalls-fd modes: the fd whose sends are the device's
# frames (its tx_frame rows number the run's tx_frames), found by a 1 s run of the same
# command under syscalls.bt (fds are numbered alike in every run of it).
devfd=""
if [[ " ${modes[*]} " == *" syscalls-fd"* || " ${modes[*]} " == *" systrace-fd"* ]]; then
  bpftrace -q -o "$work/fd.raw" "$work/syscalls.bt" 0 -c "$sim --duration 1 --inject-enobufs 50 --json --no-progress" \
    > "$work/fd.json" 2> /dev/null
  devfd=$(awk -f probes/syscalls-rows.awk "$work/fd.raw" 2> /dev/null | python3 -c '
import csv, json, sys
from collections import Counter
tx = json.load(open(sys.argv[1]))["tx_frames"]
n = Counter(r["fd"] for r in csv.DictReader(l for l in sys.stdin if not l.startswith("#")) if r["probe"] == "tx_frame")
print(" ".join(fd for fd, c in n.items() if c == tx))' "$work/fd.json")
  [[ $devfd =~ ^[0-9]+$ ]] || { echo "bench.sh: could not tell the device's fd (candidates: '$devfd')"; exit 1; }
  echo "the device's socket is fd $devfd" >&2
fi
declare -A gb cpus rg rc
for m in "${modes[@]}"; do gb[$m]=""; cpus[$m]=""; rg[$m]=""; rc[$m]=""; done
# Interleave the modes and compare each run with the untraced run of its own round: on a
# shared machine the load drifts between rounds more than it does within one. CPU seconds
# per GB moved is the steadier number when other work competes for the cores.
for r in $(seq "$reps"); do
  for m in "${modes[@]}"; do
    read -r g c l < <(one "$m")
    [ "$m" = untraced ] && { bg=$g; bc=$c; }
    gb[$m]+="$g "; cpus[$m]+="$c "
    rg[$m]+="$(python3 -c "print($g / $bg)") "; rc[$m]+="$(python3 -c "print($c / $bc)") "
    echo "round $r $m: $g Gbit/s, $c CPU s/GB${l#-}" | sed 's/GBlost_/GB, lost /; s/_/ /g' >&2
  done
done
med() { echo "$1" | tr ' ' '\n' | grep . | median; }
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs$([ "${PIN:-0}" = 1 ] && echo ", simulator pinned to CPU 1, bpftrace to CPU 0")"
echo
span() { echo "$1" | tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f-%.2f", lo, hi }'; }
echo "| mode | Gbit/s | throughput vs untraced | (min-max over rounds) | CPU s per GB moved | CPU vs untraced |"
echo "|---|---|---|---|---|---|"
for m in "${modes[@]}"; do
  printf '| %s | %.2f | %.2f | %s | %.3f | %.2f |\n' "$m" "$(med "${gb[$m]}")" "$(med "${rg[$m]}")" \
    "$(span "${rg[$m]}")" "$(med "${cpus[$m]}")" "$(med "${rc[$m]}")"
done
echo
echo "(medians of $reps rounds of ${secs} s; ratios are per round against that round's untraced run)"
