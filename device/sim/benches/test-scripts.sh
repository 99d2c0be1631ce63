#!/usr/bin/env bash
# Runs the two measuring scripts beside the throughput bench on short runs and checks that
# what they print adds up: a script nobody runs rots, and these are the ones README tables
# are made with. callgrind.sh needs valgrind; worker-profile.sh needs perf and root. Both
# are installed by .ci/setup.sh; without them the step says what it skipped.
set -uo pipefail
cd "$(dirname "$0")/../../.."
cargo build -q --release -p vnet-sim --bin vnet-sim || exit 1
export VNET_SIM=target/release/vnet-sim
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "test-scripts: FAIL: $*"; fails=$((fails + 1)); }

# Usage errors: one line, exit 2.
for args in "x" "1 0" "1 123456789"; do
  # shellcheck disable=SC2086
  PROFILE_OUT=$tmp/p bash device/sim/benches/worker-profile.sh $args > "$tmp/out" 2> "$tmp/err"
  code=$?
  [ $code -eq 2 ] && [ "$(wc -l < "$tmp/err")" -eq 1 ] || fail "worker-profile.sh $args: exit $code, stderr: $(cat "$tmp/err")"
done

if command -v valgrind > /dev/null; then
  CALLGRIND_OUT=$tmp/c bash device/sim/benches/callgrind.sh 300 1514 --backend unixstream > "$tmp/cg" 2>&1 || fail "callgrind.sh: $(cat "$tmp/cg")"
  # 300 frames each way plus ACKs; the device's own code takes some hundreds to some
  # thousands of instructions per frame.
  python3 - "$tmp/cg" <<'PY' || fail "callgrind.sh output: $(cat "$tmp/cg")"
import re, sys
text = open(sys.argv[1]).read()
total = int(re.search(r"\((\w+), (\d+) total\)", text).group(2))
per = int(re.search(r"per frame: (\d+)", text).group(1))
assert total == 900, total
assert 200 < per < 20000, per
PY
  echo "test-scripts: callgrind.sh ok: $(grep 'per frame:' "$tmp/cg" | head -1)"
else
  echo "test-scripts: callgrind.sh skipped: valgrind is not installed"
fi

if [ "$(id -u)" = 0 ] && command -v perf > /dev/null; then
  # A run that fails is reported with vnet-sim's own line, not as a missing thread.
  PROFILE_OUT=$tmp/p bash device/sim/benches/worker-profile.sh 1 1514 --backend nope > /dev/null 2> "$tmp/err"
  code=$?
  { [ $code -eq 1 ] && grep -q 'exited (2).*unknown backend' "$tmp/err"; } || fail "worker-profile.sh with a bad vnet-sim flag: exit $code, stderr: $(cat "$tmp/err")"
  PROFILE_OUT=$tmp/p bash device/sim/benches/worker-profile.sh 1 1514 --backend unixgram > "$tmp/wp" 2>&1 || fail "worker-profile.sh: $(cat "$tmp/wp")"
  # Six kinds of work, every sample in one of them, and the worker's own usage.
  python3 - "$tmp/wp" <<'PY' || fail "worker-profile.sh output: $(cat "$tmp/wp")"
import re, sys
text = open(sys.argv[1]).read()
rows = re.findall(r"^(.+?)\s+(\d+\.\d)%\s+(\d+) ns/frame$", text, re.M)
assert len(rows) == 6, rows
assert abs(sum(float(r[1]) for r in rows) - 100) < 0.5, rows
per = int(re.search(r"worker: (\d+) ns of CPU per frame", text).group(1))
assert abs(sum(int(r[2]) for r in rows) - per) <= 6, (per, rows)
assert int(re.search(r"(\d+) samples at", text).group(1)) > 100, text
switches = re.search(r"voluntary (\d\.\d+)\s+involuntary (\d\.\d+)", text)
assert float(switches.group(1)) > 0, text
# The worker hands frames to the proxy's reader and interrupts the guest: under the
# default load it wakes each of them some of the time.
woken = re.search(r"wake-ups the worker gave per frame: (\d\.\d+): (.*)$", text, re.M)
assert woken, text
assert float(woken.group(1)) > 0, text
per_thread = dict((name, float(n)) for name, n in re.findall(r"([^,]+?) (\d\.\d+)(?:, |$)", woken.group(2)))
assert per_thread.get("sim-proxy-rx", 0) > 0, per_thread
assert per_thread.get("sim-guest-rx", 0) + per_thread.get("sim-guest-tx", 0) > 0, per_thread
assert abs(sum(per_thread.values()) - float(woken.group(1))) < 0.001 * (len(per_thread) + 1), per_thread
PY
  echo "test-scripts: worker-profile.sh ok: $(head -1 "$tmp/wp")"
else
  echo "test-scripts: worker-profile.sh skipped: needs root and perf"
fi
[ $fails -eq 0 ] && echo "test-scripts: ok"
[ $fails -eq 0 ]
