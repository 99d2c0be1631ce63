#!/usr/bin/env bash
# Whom the vnet-vhost daemon's worker wakes in the real VM, and how often per frame moved:
# runs `vnet-vm` once (its flags pass through) while perf counts the scheduler's
# sched_waking events the daemon's threads raise, over the daemon's whole life, and prints
# per frame: the worker's CPU, its context switches, and the wake-ups it gave by the
# thread woken (QEMU, which injects the guest's interrupt under TCG; passt, reading the
# frames the worker sent). `device/sim/benches/worker-profile.sh` prints the same line for
# the simulated load, where the worker wakes sleeping threads about twice as often per
# frame; on a machine where a wake-up costs microseconds, that is much of why the real VM
# costs less per frame (README, "What a sleep and a wake-up cost on this machine").
#
#   bash device/vm/benches/worker-wakes.sh [vnet-vm flags, e.g. --tests fwd,rev --seconds 5]
#   VNET_VM=/path/to/vnet-vm WAKES_OUT=dir bash device/vm/benches/worker-wakes.sh ...
#
# Needs root (perf on another process's tracepoints; vnet-vm's own needs), perf (Debian:
# linux-perf) and what vnet-vm needs. The tracepoint costs the worker some CPU per
# wake-up: its CPU per frame here is above what `vnet-vm` alone prints.
# Example output (Debian 12 guest with 2 vCPUs, kernel 6.18, TCG, 2026-12-04):
#
#   $ bash device/vm/benches/worker-wakes.sh --tests fwd,rev --seconds 5 --daemon-arg=--no-checksum-offload
#   daemon worker: 1080 ns of CPU per frame (1153935 frames both ways); context switches per frame: voluntary 0.0431, involuntary 0.0066
#   wake-ups the worker gave per frame: 0.0486: qemu-system-x86 0.0275, passt.avx2 0.0210
set -euo pipefail
cd "$(dirname "$0")/../../.."
for a in "$@"; do
  case $a in
    --rounds|--rounds=*|--baseline-only|--json)
      echo "worker-wakes.sh: $a: one daemon per run is counted, and the script reads vnet-vm's JSON itself" >&2
      exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "worker-wakes.sh: needs root" >&2; exit 1; }
command -v perf >/dev/null || { echo "worker-wakes.sh: perf is not installed (Debian: apt-get install linux-perf)" >&2; exit 1; }
out=${WAKES_OUT:-target/worker-wakes}
mkdir -p "$out"
bin=${VNET_VM:-}
if [ -z "$bin" ]; then
  cargo build -q --release -p vnet-vm -p vnet-vhost
  bin=target/release/vnet-vm
fi
if [ ! -d /sys/kernel/tracing/events/sched ] && [ ! -d /sys/kernel/debug/tracing/events/sched ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2> /dev/null || true
fi

"$bin" "$@" --json > "$out/vm.json" 2> "$out/vm.log" &
vm=$!
# The daemon is vnet-vm's child; it starts before the guest boots, and perf follows the
# worker threads it creates later.
daemon=
for _ in $(seq 300); do
  sleep 0.1
  daemon=$(ps -o pid=,comm= --ppid "$vm" 2> /dev/null | awk '$2 == "vnet-vhost" { print $1; exit }' || true)
  [ -n "$daemon" ] && break
  kill -0 "$vm" 2> /dev/null || break
done
if [ -z "$daemon" ]; then
  status=0; wait "$vm" || status=$?
  echo "worker-wakes.sh: no vnet-vhost daemon appeared (vnet-vm exited $status): $(head -n 1 "$out/vm.log")" >&2
  # A flag vnet-vm refused is a usage error of this script too.
  [ $status -eq 2 ] && exit 2
  exit 1
fi
rm -f "$out/wake.data"
perf record -q -e sched:sched_waking -p "$daemon" -o "$out/wake.data" 2> "$out/perf.log" &
rec=$!
# Thread names of everything the worker may wake, taken while the guest runs: QEMU and
# passt keep theirs until the run ends.
: > "$out/threads.txt"
while kill -0 "$vm" 2> /dev/null; do
  # Merged without repeats, so a long run keeps one line per thread that ever ran.
  ps -eLo tid=,comm= > "$out/threads.now" 2> /dev/null && sort -u -o "$out/threads.txt" "$out/threads.txt" "$out/threads.now"
  sleep 2
done
status=0; wait "$vm" || status=$?
kill -INT "$rec" 2> /dev/null || true
wait "$rec" || true
if [ $status -ne 0 ]; then
  echo "worker-wakes.sh: vnet-vm failed ($status); see $out/vm.log" >&2
  exit 1
fi
perf script -i "$out/wake.data" -F comm,trace 2> /dev/null > "$out/wakes.txt" ||
  { echo "worker-wakes.sh: perf recorded nothing; see $out/perf.log" >&2; exit 1; }
python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
run = json.load(open(f"{out}/vm.json"))
daemon = run.get("daemon") or {}
d = daemon.get("device", daemon)
frames = d.get("tx_frames", 0) + d.get("rx_frames", 0)
if not frames or not d.get("worker_cpu_ns"):
    sys.exit(f"worker-wakes.sh: the daemon reported no frames or no worker usage; see {out}/vm.json")
names = {}
for line in open(f"{out}/threads.txt"):
    parts = line.split(None, 1)
    if len(parts) == 2:
        names[parts[0]] = parts[1].strip()
woken = {}
for line in open(f"{out}/wakes.txt"):
    # "vnet-worker  comm=passt.avx2 pid=1234 prio=120 target_cpu=001": the waker's name,
    # then the woken thread's.
    m = re.match(r"\s*(\S+)\s+comm=(.*?) pid=(\d+)", line)
    if m and m.group(1) == "vnet-worker":
        name = names.get(m.group(3), m.group(2))
        woken[name] = woken.get(name, 0) + 1
per = lambda n: n / frames
print(f"daemon worker: {per(d['worker_cpu_ns']):.0f} ns of CPU per frame ({frames} frames both ways); "
      f"context switches per frame: voluntary {per(d.get('worker_voluntary_switches', 0)):.4f}, "
      f"involuntary {per(d.get('worker_involuntary_switches', 0)):.4f}")
if not woken:
    sys.exit(f"worker-wakes.sh: no wake-ups by the worker recorded; see {out}/perf.log")
# Threads woken too rarely to show alone (kernel workers, iperf3 now and then) are one entry,
# so the parts add up to the total.
shown = [(k, v) for k, v in sorted(woken.items(), key=lambda kv: -kv[1]) if per(v) >= 0.00005]
rest = sum(woken.values()) - sum(v for _, v in shown)
if rest:
    shown.append(("other threads", rest))
print(f"wake-ups the worker gave per frame: {per(sum(woken.values())):.4f}: "
      + ", ".join(f"{k} {per(v):.4f}" for k, v in shown))
PY
