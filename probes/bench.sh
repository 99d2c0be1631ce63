#!/usr/bin/env bash
# Overhead of watching the device: simulated-VM throughput with probes/enobufs.bt attached
# (all probes, and FRAMES=0), with the in-process recorder, and with DEBUG logging, each
# as a ratio to the same workload untraced, measured in this run. Needs root for bpftrace.
#
#   sudo probes/bench.sh [SECS per run, default 5] [REPEATS, default 3]
#
# Prints a markdown table (median Gbit/s of REPEATS runs per mode, ratio to untraced).
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
declare -A result
for m in "${modes[@]}"; do result[$m]=""; done
# interleave the modes so a slow phase of the machine hits them all alike
for r in $(seq "$reps"); do
  for m in "${modes[@]}"; do
    g=$(one "$m")
    result[$m]+="$g "
    echo "run $r $m: $g Gbit/s" >&2
  done
done
base=$(echo "${result[untraced]}" | tr ' ' '\n' | grep . | median)
echo "| mode | Gbit/s (median of $reps x ${secs}s) | ratio to untraced |"
echo "|---|---|---|"
for m in "${modes[@]}"; do
  med=$(echo "${result[$m]}" | tr ' ' '\n' | grep . | median)
  printf '| %s | %.2f | %.2f |\n' "$m" "$med" "$(python3 -c "print($med / $base)")"
done
