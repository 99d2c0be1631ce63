#!/usr/bin/env bash
# Overhead of watching the device: simulated-VM throughput with probes/enobufs.bt attached
# (all probes, and FRAMES=0), with the in-process recorder, and with DEBUG logging, each
# as a ratio to the same workload untraced, measured in this run. Needs root for bpftrace.
#
#   sudo probes/bench.sh [SECS per run, default 5] [REPEATS, default 3]
#
# Prints a markdown table: median Gbit/s per mode, and the median over rounds of each
# mode's throughput divided by the untraced run of the same round.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
reps=${2:-3}
[ "$(id -u)" = 0 ] || { echo "bench.sh: needs root (bpftrace)"; exit 1; }
command -v bpftrace >/dev/null || { echo "bench.sh: bpftrace not installed"; exit 1; }
[ -n "${VNET_SIM:-}" ] || cargo build --release -q -p vnet-device --bin vnet-sim
sim=${VNET_SIM:-$PWD/target/release/vnet-sim}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# the workload: bidirectional, 8 streams, ENOBUFS injected on every 50th send so the
# episode probes fire too (the per-frame probes dominate either way)
load="--duration $secs --inject-enobufs 50 --json --no-progress"

gbit() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["gbit_per_s"])' "$1"; }
one() { # mode -> prints Gbit/s of one run
  local mode=$1 out=$work/run.json
  case $mode in
    untraced) "$sim" $load > "$out" ;;
    enobufs.bt) bpftrace -q -o "$work/t.csv" probes/enobufs.bt "$sim" -c "$sim $load" > "$out" 2>/dev/null ;;
    enobufs.bt-FRAMES=0) bpftrace -q -o "$work/t.csv" probes/enobufs.bt "$sim" 0 -c "$sim $load" > "$out" 2>/dev/null ;;
    recorder) "$sim" $load --trace "$work/r.csv" > "$out" ;;
    debug-log) "$sim" $load --log-level debug > "$out" 2> "$work/debug.log" ;;
  esac
  gbit "$out"
}
median() { sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

modes=(untraced enobufs.bt enobufs.bt-FRAMES=0 recorder debug-log)
declare -A result ratios
for m in "${modes[@]}"; do result[$m]=""; ratios[$m]=""; done
# Interleave the modes and compare each run with the untraced run of its own round: on a
# shared machine the load drifts between rounds more than it does within one.
for r in $(seq "$reps"); do
  for m in "${modes[@]}"; do
    g=$(one "$m")
    [ "$m" = untraced ] && base=$g
    result[$m]+="$g "
    ratios[$m]+="$(python3 -c "print($g / $base)") "
    echo "round $r $m: $g Gbit/s" >&2
  done
done
echo "| mode | Gbit/s (median of $reps x ${secs}s) | throughput vs untraced (median of per-round ratios) |"
echo "|---|---|---|"
for m in "${modes[@]}"; do
  med=$(echo "${result[$m]}" | tr ' ' '\n' | grep . | median)
  rat=$(echo "${ratios[$m]}" | tr ' ' '\n' | grep . | median)
  printf '| %s | %.2f | %.2f |\n' "$m" "$med" "$rat"
done
