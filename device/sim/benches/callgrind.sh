#!/usr/bin/env bash
# User-space instructions per frame of the device worker thread, counted by callgrind for a
# fixed run (a number of frames, not a time): other jobs on the machine do not move the
# count, so a change to the device's own code shows up where the throughput bench's
# wall-clock and CPU-time ratios drown it. Runs of one build agree within about 2%; how
# valgrind interleaves the threads changes how frames batch, so compare several runs. The kernel's side of each
# system call is not counted (callgrind sees user space only): the same run's counters say
# how often the worker entered the kernel, printed per frame below: its event-loop turns
# (one `epoll_wait` each, `wakeups`), the interrupts it raised (one eventfd write each,
# `guest_irqs`), the kicks it drained (one eventfd read each, `guest_kicks`), its sends and
# receives on the proxy's socket (`tx_syscalls`/`rx_syscalls`), and their sum.
#
#   bash device/sim/benches/callgrind.sh [FRAMES per direction (default 20000)] [SIZE (default 1514)] [extra vnet-sim flags...]
#   VNET_SIM=/path/to/vnet-sim CALLGRIND_OUT=dir bash device/sim/benches/callgrind.sh ...   # another build (before/after), its own output directory
#
# Only the worker is measured: collection is on inside `vnet_device::worker::run` (the
# thread's body) and off everywhere else (the simulated guest and proxy threads).
set -euo pipefail
cd "$(dirname "$0")/../../.."
frames=${1:-20000}
size=${2:-1514}
shift $(( $# > 2 ? 2 : $# ))
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 1; }
out=${CALLGRIND_OUT:-target/callgrind}
mkdir -p "$out"
bin=${VNET_SIM:-}
if [ -z "$bin" ]; then
  cargo build -q --release -p vnet-sim --bin vnet-sim
  bin=target/release/vnet-sim
fi
rm -f "$out"/callgrind.out.*
# Valgrind runs one thread at a time and ~50x slower: a generous stall timeout.
valgrind --tool=callgrind --collect-atstart=no \
  --toggle-collect='vnet_device::worker::run' \
  --callgrind-out-file="$out/callgrind.out.%p" \
  "$bin" --frames "$frames" --tx-size "$size" --rx-size "$size" \
  --no-progress --stall-timeout 60 --json "$@" > "$out/run.json" 2> "$out/valgrind.log" ||
  { echo "callgrind.sh: the run failed; see $out/valgrind.log and $out/run.json" >&2; exit 1; }
python3 - "$out" <<'PY'
import glob, json, sys
out = sys.argv[1]
run = json.load(open(f"{out}/run.json"))
d = run["device"]
ir = 0
for f in glob.glob(f"{out}/callgrind.out.*"):
    for line in open(f):
        if line.startswith("totals:") or line.startswith("summary:"):
            ir = max(ir, int(line.split()[1]))
frames = d["tx_frames"] + d["rx_frames"]
if ir == 0 or frames == 0:
    sys.exit(f"callgrind.sh: nothing counted (instructions {ir}, frames {frames})")
bad = {k: run[k] for k in ("lost", "duplicated", "reordered", "corrupted") if run[k]}
if bad:
    sys.exit(f"callgrind.sh: integrity errors in the run: {bad}")
print(f"frames: TX {d['tx_frames']} RX {d['rx_frames']} ({run['direction']}, {frames} total)")
print(f"worker instructions (user space): {ir}  per frame: {ir / frames:.0f}")
print(f"syscalls per frame: TX {d['tx_syscalls'] / max(d['tx_frames'], 1):.3f}"
      f"  RX {d['rx_syscalls'] / max(d['rx_frames'], 1):.3f}")
loop = {"epoll_wait": d["wakeups"], "irqs": d["guest_irqs"], "kicks": d["guest_kicks"]}
print("per frame (both ways): " + "  ".join(f"{k} {v / frames:.3f}" for k, v in loop.items()))
total = d["tx_syscalls"] + d["rx_syscalls"] + sum(loop.values())
print(f"worker syscalls per frame (sends + receives + epoll_wait + irq writes + kick reads): {total / frames:.3f}")
PY
