#!/usr/bin/env bash
# Cost of the USDT probes when no tracer is attached: vnet-sim built with probes compiled
# in (default features) vs compiled out (--no-default-features), same workload, runs
# alternated so machine drift hits both; prints the medians and the ratio (target: the
# probes build within 1% of the no-probes build).
#
#   bash device/sim/benches/throughput-probes.sh [ROUNDS (default 5)] [SECS per run (default 3)]
set -euo pipefail
cd "$(dirname "$0")/../../.."
rounds=${1:-5}
secs=${2:-3}
# Same target dir for both builds: only vnet-device itself recompiles when the feature
# flips, so each binary is copied aside right after its build.
out=target/probes-bench
mkdir -p "$out"
cargo build -q --release -p vnet-sim --bin vnet-sim --no-default-features
cp target/release/vnet-sim "$out/vnet-sim-noprobes"
cargo build -q --release -p vnet-sim --bin vnet-sim
cp target/release/vnet-sim "$out/vnet-sim-probes"
with_bin=$out/vnet-sim-probes
without_bin=$out/vnet-sim-noprobes

# 64 KiB frames guest->sink and 1514-byte frames, no ACKs, no payload hashing: the
# device's own path dominates.
measure() { # bin size -> Gbit/s
  # A generous stall timeout: on a loaded machine a starved thread is not a device hang.
  "$1" --direction tx --ack-size 0 --tx-size "$2" --no-checksum --no-progress \
    --stall-timeout 10 --duration "$secs" --json > "$out/run.json" ||
    { echo "run of $1 failed: $(head -c 2000 "$out/run.json")" >&2; exit 1; }
  # Gbit per CPU second of the whole process: the machine's other load cancels out.
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["tx_bytes"]*8e-9/d["cpu_seconds"], d["tx_gbit_per_s"])' "$out/run.json"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for size in 65536 1514; do
  w=(); o=(); ww=(); ow=()
  for _ in $(seq "$rounds"); do
    read -r c g < <(measure "$with_bin" "$size"); w+=("$c"); ww+=("$g")
    read -r c g < <(measure "$without_bin" "$size"); o+=("$c"); ow+=("$g")
  done
  mw=$(printf '%s\n' "${w[@]}" | median); mo=$(printf '%s\n' "${o[@]}" | median)
  mww=$(printf '%s\n' "${ww[@]}" | median); mow=$(printf '%s\n' "${ow[@]}" | median)
  printf '%-6s B frames, median of %s: per CPU-s: probes in %7.3f, compiled out %7.3f Gbit  ratio %6.1f%%  (target >= 99%%) | wall: %7.3f vs %7.3f Gbit/s  %6.1f%%\n' \
    "$size" "$rounds" "$mw" "$mo" "$(python3 -c "print(100*$mw/$mo)")" "$mww" "$mow" "$(python3 -c "print(100*$mww/$mow)")"
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
