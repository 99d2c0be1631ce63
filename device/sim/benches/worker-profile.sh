#!/usr/bin/env bash
# Where the device worker thread's CPU time goes, by kind of work: user space (the rings,
# the frame checks), the kernel's send and receive on the proxy's socket, waking another
# thread (the proxy's reader or writer, the guest's interrupt), leaving the CPU and coming
# back to it (sleeping in epoll_wait for lack of work, or preempted by a thread it woke),
# and the rest of the kernel (epoll, eventfd reads, system call entry and exit).
# `callgrind.sh` counts the user-space part exactly; this script shows how small that part
# is next to the others at 1514 B, which is why the throughput bench's worker costs more
# per frame than a raw loop that only sends (README, "Where the worker's CPU goes at 1514 B").
#
#   bash device/sim/benches/worker-profile.sh [SECONDS (default 4)] [SIZE (default 1514)] [extra vnet-sim flags...]
#   VNET_SIM=/path/to/vnet-sim PROFILE_OUT=dir bash device/sim/benches/worker-profile.sh ...
#
# Needs perf (Debian: linux-perf) and the right to profile (root, or
# kernel.perf_event_paranoid <= 1). It samples the worker's thread only, on the software
# cpu-clock event: virtual machines often have no hardware counters. A sample taken while
# the kernel had interrupts off is delivered where it turns them back on, so it is sorted
# by its call stack (what the thread was doing), not by the function it landed in.
# Example output (Debian 12 guest with 2 vCPUs, kernel 6.18, unixgram, 2026-12-04):
#
#   $ bash device/sim/benches/worker-profile.sh 4 1514 --backend unixgram
#   worker: 2208 ns of CPU per frame over the run (1353546 frames both ways); 8122 samples at 4000 Hz over 4 s
#   kernel: sending to the proxy              27.7%    612 ns/frame
#   leaving the CPU and coming back           24.0%    529 ns/frame
#   waking another thread                     18.3%    404 ns/frame
#   kernel: receiving from the proxy          16.7%    368 ns/frame
#   user space (device code, libc)             7.9%    175 ns/frame
#   kernel: epoll, eventfd, entry and exit     5.4%    120 ns/frame
#   wake-ups the worker gave per frame: 0.0873: sim-proxy-rx 0.0370, sim-guest-rx 0.0263, sim-guest-tx 0.0238, threads outside vnet-sim 0.0001
#   switches per frame: voluntary 0.0446  involuntary 0.0465  (the whole run; wakeups 0.0736, irqs 0.0719)
#
# The wake-ups line counts the scheduler's sched_waking events the worker raised in the
# sampled seconds, by the thread woken, per frame moved in them; with the "waking another
# thread" row it gives the price of one wake-up on this machine (README, "What a sleep and
# a wake-up cost on this machine"). The worker's `wakeups` counter is something else: its
# own returns from epoll_wait.
set -euo pipefail
cd "$(dirname "$0")/../../.."
secs=${1:-4}
size=${2:-1514}
shift $(( $# > 2 ? 2 : $# ))
[[ $secs =~ ^[1-9][0-9]{0,4}$ ]] || { echo "worker-profile.sh: SECONDS: a whole number of seconds from 1, not '$secs'" >&2; exit 2; }
[[ $size =~ ^[1-9][0-9]{0,5}$ ]] || { echo "worker-profile.sh: SIZE: a frame size in bytes, not '$size'" >&2; exit 2; }
command -v perf >/dev/null || { echo "worker-profile.sh: perf is not installed (Debian: apt-get install linux-perf)" >&2; exit 1; }
out=${PROFILE_OUT:-target/worker-profile}
hz=4000
mkdir -p "$out"
bin=${VNET_SIM:-}
if [ -z "$bin" ]; then
  cargo build -q --release -p vnet-sim --bin vnet-sim
  bin=target/release/vnet-sim
fi
# The run outlasts the sampling on both ends: the worker is found after it starts, and
# sampling ends before the senders stop and the queues drain.
"$bin" --duration "$(( secs + 2 ))" --tx-size "$size" --rx-size "$size" --no-progress --json "$@" \
  > "$out/run.json" 2> "$out/run.log" &
sim=$!
worker=
for _ in $(seq 50); do
  sleep 0.1
  if ! kill -0 "$sim" 2>/dev/null; then
    status=0; wait "$sim" || status=$?
    echo "worker-profile.sh: vnet-sim exited ($status) before its worker could be sampled: $(head -n 1 "$out/run.log")" >&2
    exit 1
  fi
  worker=$(ps -T -p "$sim" -o spid=,comm= 2>/dev/null | awk '$2 == "vnet-worker" { print $1; exit }' || true)
  [ -n "$worker" ] && break
done
if [ -z "$worker" ]; then
  kill "$sim" 2>/dev/null || true
  echo "worker-profile.sh: no vnet-worker thread appeared in vnet-sim (pid $sim); see $out/run.log" >&2
  exit 1
fi
ps -T -p "$sim" -o spid=,comm= > "$out/threads.txt" 2> /dev/null || true
# Which threads the worker wakes, from the scheduler's tracepoint, over the same seconds
# as the samples. Tracepoints need tracefs, which a fresh boot may not have mounted.
if [ ! -d /sys/kernel/tracing/events/sched ] && [ ! -d /sys/kernel/debug/tracing/events/sched ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2> /dev/null || true
fi
rm -f "$out/wake.data"
perf record -q -e sched:sched_waking -t "$worker" -o "$out/wake.data" -- sleep "$secs" 2> "$out/wake.log" &
wakes=$!
perf record -q -e cpu-clock -F "$hz" -g -t "$worker" -o "$out/perf.data" -- sleep "$secs" 2> "$out/perf.log" ||
  { kill "$sim" "$wakes" 2>/dev/null || true; echo "worker-profile.sh: perf record failed; see $out/perf.log" >&2; exit 1; }
wait "$wakes" || true
wait "$sim" || { echo "worker-profile.sh: the run failed; see $out/run.log and $out/run.json" >&2; exit 1; }
perf script -i "$out/perf.data" -F ip,sym,dso 2> /dev/null > "$out/stacks.txt"
: > "$out/wakes.txt"
[ -s "$out/wake.data" ] && perf script -i "$out/wake.data" -F trace 2> /dev/null > "$out/wakes.txt"
python3 - "$out" "$secs" "$hz" <<'PY'
import json, re, sys
out, secs, hz = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
run = json.load(open(f"{out}/run.json"))
d = run["device"]
bad = {k: run[k] for k in ("lost", "duplicated", "reordered", "corrupted") if run[k]}
if bad:
    sys.exit(f"worker-profile.sh: integrity errors in the run: {bad}")
# Looked for anywhere in a sample's kernel stack, in this order: the first kind whose
# functions appear names the sample.
KINDS = [
    ("leaving the CPU and coming back", {"__schedule", "schedule", "finish_task_switch.isra.0",
                                         "finish_task_switch", "preempt_schedule_common",
                                         "__cond_resched"}),
    ("waking another thread", {"try_to_wake_up", "__wake_up_common", "__wake_up_sync_key",
                               "__wake_up", "__wake_up_locked_key", "sock_def_readable",
                               "unix_write_space", "eventfd_write", "ep_poll_callback",
                               "default_wake_function"}),
    ("kernel: sending to the proxy", {"__sys_sendmmsg", "__sys_sendmsg", "___sys_sendmsg",
                                      "__sys_sendto", "unix_stream_sendmsg",
                                      "unix_dgram_sendmsg", "sock_write_iter"}),
    ("kernel: receiving from the proxy", {"__sys_recvmmsg", "___sys_recvmsg", "__sys_recvmsg",
                                          "__sys_recvfrom", "unix_stream_recvmsg",
                                          "unix_dgram_recvmsg", "sock_read_iter"}),
]
OTHER_KERNEL, USER = "kernel: epoll, eventfd, entry and exit", "user space (device code, libc)"
counts = {name: 0 for name, _ in KINDS} | {OTHER_KERNEL: 0, USER: 0}

def classify(stack):
    if not stack or "kernel" not in stack[0][1]:
        return USER
    syms = {sym.split("+")[0] for sym, dso in stack if "kernel" in dso}
    for name, fns in KINDS:
        if syms & fns:
            return name
    return OTHER_KERNEL

stack, samples = [], 0
for line in open(f"{out}/stacks.txt"):
    line = line.strip()
    if not line:
        if stack:
            counts[classify(stack)] += 1
            samples += 1
        stack = []
        continue
    parts = line.split(None, 1)
    if len(parts) < 2:
        continue
    rest = parts[1]
    sym, _, dso = rest.rpartition(" (")
    stack.append((sym, dso.rstrip(")")))
if stack:
    counts[classify(stack)] += 1
    samples += 1
frames = d["tx_frames"] + d["rx_frames"]
if samples == 0 or frames == 0:
    sys.exit(f"worker-profile.sh: nothing sampled (samples {samples}, frames {frames}); see {out}/perf.log")
# The shares come from the samples, the CPU per frame from the worker's own clock over
# the whole run.
per_frame = d["worker_cpu_ns"] / frames
print(f"worker: {per_frame:.0f} ns of CPU per frame over the run ({frames} frames both ways); "
      f"{samples} samples at {hz} Hz over {secs:g} s")
for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
    print(f"{name:<40} {100 * n / samples:5.1f}%  {per_frame * n / samples:5.0f} ns/frame")
# Frames in the sampled seconds, from the worker's CPU in them (one sample per 1/hz s of
# it) and its CPU per frame over the whole run.
window_frames = samples * 1e9 / hz / per_frame
sim_threads = {}
for line in open(f"{out}/threads.txt"):
    parts = line.split(None, 1)
    if len(parts) == 2:
        sim_threads[parts[0]] = parts[1].strip()
woken = {}
for line in open(f"{out}/wakes.txt"):
    m = re.search(r"comm=(.*?) pid=(\d+)", line)
    if m:
        name = sim_threads.get(m.group(2), "threads outside vnet-sim")
        woken[name] = woken.get(name, 0) + 1
if woken:
    total = sum(woken.values())
    print(f"wake-ups the worker gave per frame: {total / window_frames:.4f}: " + ", ".join(
        f"{name} {n / window_frames:.4f}" for name, n in sorted(woken.items(), key=lambda kv: -kv[1])))
else:
    print(f"wake-ups the worker gave: not recorded (sched:sched_waking; see {out}/wake.log)")
print(f"switches per frame: voluntary {d['worker_voluntary_switches'] / frames:.4f}"
      f"  involuntary {d['worker_involuntary_switches'] / frames:.4f}"
      f"  (the whole run; wakeups {d['wakeups'] / frames:.4f}, irqs {d['guest_irqs'] / frames:.4f})")
PY
