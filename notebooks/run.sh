#!/usr/bin/env bash
# Runs every notebook headless on fresh traces from the simulated VM and checks the figures.
#
#   notebooks/run.sh                 # venv (reused), two vnet-sim runs, execute, check PNGs
#   notebooks/run.sh --write-back    # also copy the executed notebooks over notebooks/*.ipynb
#                                    # (how the committed outputs are made)
#   TRACE=my.csv notebooks/run.sh    # plot an existing trace instead of a fresh run
#   MATRIX=m.csv notebooks/run.sh    # plot an existing policies.sh matrix instead of a fresh one
#
# Outputs: notebooks/out/*.png, notebooks/out/*.ipynb (executed copies), notebooks/out/traces/.
# Fails on any cell error, and when an expected PNG is missing or empty.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
nb=$root/notebooks
out=$nb/out
venv=$nb/.venv
write_back=0
[ "${1:-}" = --write-back ] && write_back=1

say() { echo "notebooks: $*"; }

# 1. virtualenv, reinstalled only when requirements.txt changed (hash stamp in the venv).
want=$(sha256sum "$nb/requirements.txt" | cut -d' ' -f1)
have=$(cat "$venv/.requirements.sha256" 2>/dev/null || true)
if [ "$want" != "$have" ] || [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$nb/requirements.txt"
  echo "$want" > "$venv/.requirements.sha256"
else
  say "reusing $venv (requirements unchanged)"
fi

# 2. fresh traces: two different backpressure regimes, so compare.ipynb has something to show.
mkdir -p "$out/traces"
if [ -n "${TRACE:-}" ]; then
  trace_a=$(realpath "$TRACE"); trace_b=$(realpath "${TRACE_B:-$TRACE}")
else
  cargo build --release -q -p vnet-sim --bin vnet-sim
  sim=$root/target/release/vnet-sim
  trace_a=$out/traces/paused-proxy-enobufs.csv
  trace_b=$out/traces/paused-proxy.csv
  # Both: a 256 KiB device send buffer and a proxy that stops reading for 5 ms in every 50,
  # so the socket fills (EAGAIN, ended by a write event, as on Linux).
  common=(--duration "${SIM_SECS:-4}" --backend unixgram --sndbuf 262144 --proxy-pause-ms 5
    --proxy-pause-every-ms 50 --no-progress --json)
  # A adds ENOBUFS on every 40th send (the macOS failure, retried by the 50 us timer).
  say "vnet-sim run A -> $trace_a"
  "$sim" "${common[@]}" --inject-enobufs 40 --trace "$trace_a" > "${trace_a%.csv}.json"
  say "vnet-sim run B -> $trace_b"
  "$sim" "${common[@]}" --trace "$trace_b" > "${trace_b%.csv}.json"
fi

# 3. execute every notebook; nbconvert exits non-zero on the first failing cell.
run_nb() {
  local name=$1; shift
  say "executing $name.ipynb"
  env "$@" OUT="$out" "$venv/bin/jupyter" nbconvert --to notebook --execute \
    --ExecutePreprocessor.timeout=900 --output-dir "$out" --output "$name.ipynb" "$nb/$name.ipynb" \
    2> >(grep -v -e 'Kernel is running over TCP' -e '^\s*$' >&2)
}
# The retry-policy matrix with short runs (the README's table uses longer ones).
matrix=$out/traces/policies-matrix.csv
if [ -z "${MATRIX:-}" ]; then
  say "retry-policy matrix -> $matrix"
  MATRIX_CSV=$matrix bash "$root/device/sim/benches/policies.sh" "${POLICY_SECS:-1}" 1 > "$out/policies-matrix.txt"
else
  matrix=$(realpath "$MATRIX")
fi
rm -f "$out"/*.png
run_nb enobufs TRACE="$trace_a"
run_nb compare TRACE_A="$trace_a" TRACE_B="$trace_b" LABEL_A="A: paused proxy + ENOBUFS" LABEL_B="B: paused proxy"
run_nb policies MATRIX="$matrix"

# 4. every expected figure exists and is not empty.
expected=(enobufs_1_wait_cdf enobufs_2_retries enobufs_3_wakeup_space enobufs_4_over_time
  enobufs_5_episode_timeline compare_1_wait_cdf compare_2_retries compare_3_wakeup_space
  compare_4_over_time policies_1_gbit policies_2_ack_p99 policies_3_ack_max policies_4_drops
  policies_5_ack_over_1ms)
missing=0
for f in "${expected[@]}"; do
  p=$out/$f.png
  if [ ! -s "$p" ]; then echo "notebooks: MISSING or empty: $p" >&2; missing=$((missing + 1)); continue; fi
  # a PNG starts with \x89PNG; anything else is a broken write
  if [ "$(head -c 4 "$p" | od -An -c | tr -d ' ')" != "211PNG" ]; then
    echo "notebooks: not a PNG: $p" >&2; missing=$((missing + 1)); continue
  fi
  say "ok $f.png ($(stat -c %s "$p") bytes)"
done
[ $missing -eq 0 ] || { echo "notebooks: $missing figure(s) missing"; exit 1; }

if [ $write_back -eq 1 ]; then
  cp "$out/enobufs.ipynb" "$out/compare.ipynb" "$out/policies.ipynb" "$nb/"
  say "executed notebooks written back to $nb"
fi
say "${#expected[@]} figures in $out"
