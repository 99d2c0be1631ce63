#!/usr/bin/env bash
# Runs the bpftrace scripts against the simulated VM and checks what they print.
# Needs root and bpftrace; skips with the reason otherwise. Called by .ci/test.sh.
#
#  (a) enobufs.bt: with backpressure and injected ENOBUFS, the CSV has the header of
#      dtrace/README.md, its enobufs_begin/enobufs_resolved/tx_frame/rx_frame counts equal
#      the run's JSON summary, `analyze report` reads it, and it has the same rows per probe
#      as the run's own in-process trace. Again with FRAMES=0: no frame rows, the rest unchanged, but the
#      frame probes attached (their USDT semaphores are non-zero); and with capture.sh
#      --no-frames: the same rows, and the frame probes not attached (semaphores 0).
#  (b) stall.bt: reports the lost-write-event run with the timer off; silent on a healthy one.
#  (c) enobufs-hist.bt: prints the histograms of a run with episodes.
#  (d) capture.sh: sorts a bpftrace capture and still matches the in-process trace; and, with
#      a stand-in tracer (runs without root too), turns "Lost N events" into warnings.
#  (e) capture.sh --syscalls, which sees the process only through its system calls, once
#      with each tracer (vnet-systrace, then syscalls.bt; lines tagged [systrace]/[bpftrace]):
#      on the device's socket it finds the same episodes as the device's own recorder
#      in the same run (count, retries histogram; median |wait difference| and median begin
#      stamp difference under 10 us; begin and resolved lengths equal episode by episode),
#      the same frames (length by length) and poller wake-ups, and no device stamp
#      earlier than the tracer's for the same event; a row map (syscalls.bt) or ring
#      (vnet-systrace) too small is reported (lost rows counted); with --no-frames the same episodes and no
#      frame rows; attached by --socket PATH to a running process it traces that fd; with -p
#      and no fd only the process's unix sockets (not a polled stdin), and no episode
#      outlives its socket; on a stream socket, begin/resolved len of 40- and 1024-iovec
#      sends is every byte asked for; bad use (no such pid, no socket at the path, not
#      root) is one line and exit 2.
# The DTrace scripts cannot run here; device/sim/tests/probe_scripts.rs checks them by reading.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- capture.sh's bookkeeping, with a stand-in bpftrace (no root needed) --------------------
# It must sort rows by ts_ns behind the comment and header lines, and turn the tracer's
# "Lost N events" into a warning on stderr and a '# warning:' line in the CSV.
fake=$(mktemp -d)
cat > "$fake/bpftrace" <<'EOF'
#!/usr/bin/env bash
while [ "$1" != -o ]; do shift; done
printf '# clock mono_ns=5 wall_ns=7\nts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno\n30,1,tx_frame,7,,66,,,,\n10,1,enobufs_begin,7,,66,,,,105\n20,2,guest_kick,,0,,,,,\n' > "$2"
echo "Lost 5 events" >&2; echo "Lost 2 events" >&2
EOF
chmod +x "$fake/bpftrace"
if PATH=$fake:$PATH bash probes/capture.sh -o "$fake/t.csv" -c true /bin/true 2> "$fake/err" \
  && [ "$(sed -n '3,5p' "$fake/t.csv" | cut -d, -f1 | tr -d '\n')" = 102030 ] \
  && grep -q '^# warning: the tracer lost 7 records' "$fake/t.csv" && grep -q 'WARNING: the tracer lost 7' "$fake/err"; then
  echo "ok   capture.sh sorts rows and reports lost records (stand-in tracer)"
  capture_ok=1
else
  echo "FAIL capture.sh with a stand-in tracer:"; sed 's/^/     /' "$fake/t.csv" "$fake/err"
  capture_ok=0
fi
rm -rf "$fake"

# Bad use of capture.sh --syscalls: one line on stderr, exit 2 (as anyone).
bad_use() { # expected-message-part args...
  local want=$1; shift
  local rc=0
  bash probes/capture.sh -o "$fake.csv" --syscalls "$@" > /dev/null 2> "$fake.err" || rc=$?
  [ $rc = 2 ] && [ "$(wc -l < "$fake.err")" = 1 ] && grep -q -- "$want" "$fake.err" \
    || { echo "     capture.sh --syscalls $*: exit $rc, stderr: $(cat "$fake.err")"; return 1; }
}
fake=$(mktemp)
use_ok=1
if [ "$(id -u)" = 0 ]; then
  bad_use "no such process" -p 999999999 || use_ok=0
  bad_use "no such process" -p notapid || use_ok=0
  bad_use "no AF_UNIX socket of process $$" -p $$ --socket /nonexistent/sock || use_ok=0
  bad_use "not a file descriptor" -p $$ --fd x || use_ok=0
  bad_use "exists already" -p $$ --ready "$fake" || use_ok=0
  bad_use "goes with -p" -c true --ready "$fake.none" || use_ok=0
  bad_use "systrace or bpftrace" -p $$ --tracer dtrace || use_ok=0
  # -o naming a device is refused, never removed (it once deleted /dev/null)
  rc=0; bash probes/capture.sh -o /dev/null --syscalls -p $$ > /dev/null 2> "$fake.err" || rc=$?
  { [ $rc = 2 ] && [ -c /dev/null ] && grep -q "not a regular file" "$fake.err"; } \
    || { echo "     capture.sh -o /dev/null: exit $rc, stderr: $(cat "$fake.err")"; use_ok=0; }
  # a failed run leaves an existing -o file as it was
  echo "keep me" > "$fake.csv"
  bad_use "no AF_UNIX socket" -p $$ --socket /nonexistent/sock || use_ok=0
  [ "$(cat "$fake.csv")" = "keep me" ] && [ -z "$(ls "$fake.csv".?????? 2>/dev/null)" ] \
    || { echo "     capture.sh: a failed run changed or left scratch files beside -o"; use_ok=0; }
  what="no such pid, bad fd, no socket at the path, -o a device; a failed run keeps -o, --ready misused"
else
  bad_use "needs root" -p $$ || use_ok=0
  what="not root"
fi
rm -f "$fake" "$fake.err" "$fake.csv"
capture_total=2
if [ $use_ok = 1 ]; then
  echo "ok   capture.sh --syscalls: bad use is one line and exit 2 ($what)"
  capture_ok=$((capture_ok + 1))
else
  echo "FAIL capture.sh --syscalls bad use"
fi

if [ "$(id -u)" != 0 ]; then
  echo "probes/test.sh: SKIP the bpftrace checks: needs root (bpftrace attaches uprobes)"
  echo "probes: $capture_ok passed, $((capture_total - capture_ok)) failed"; [ $capture_ok -eq $capture_total ]; exit
fi
if ! command -v bpftrace >/dev/null; then
  echo "probes/test.sh: SKIP the bpftrace checks: bpftrace not installed"
  echo "probes: $capture_ok passed, $((capture_total - capture_ok)) failed"; [ $capture_ok -eq $capture_total ]; exit
fi

# VNET_SIM / ANALYZE point at other builds (e.g. an installed one); default: build ours.
if [ -z "${VNET_SIM:-}" ] || [ -z "${ANALYZE:-}" ]; then
  cargo build --release -q -p vnet-sim --bin vnet-sim -p analyze --bin analyze
fi
sim=${VNET_SIM:-$PWD/target/release/vnet-sim}
# vnet-systrace, the native twin of syscalls.bt that capture.sh --syscalls prefers
[ -n "${VNET_SYSTRACE:-}" ] || cargo build --release -q -p vnet-systrace
systrace=${VNET_SYSTRACE:-$PWD/target/release/vnet-systrace}
# 4 MiB of perf ring per CPU instead of 256 KiB: a loaded machine must not lose rows
# ("Lost N events"), or the counts below stop matching.
export BPFTRACE_PERF_RB_PAGES=${BPFTRACE_PERF_RB_PAGES:-1024}
analyze=${ANALYZE:-$PWD/target/release/analyze}
work=$(mktemp -d)
# The test processes below start sending only once capture.sh's --ready file exists (a
# send before every probe is attached would be missing from the capture).
cat > "$work/await_ready.py" <<'EOF'
import os, sys, time


def await_ready(path, seconds=120):
    deadline = time.time() + seconds
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.05)
    if not os.path.exists(path):
        sys.exit("the ready file never appeared")
EOF
trap 'rm -rf "$work"' EXIT
pass=$capture_ok
fail=$((capture_total - capture_ok))
# (e) runs once per syscall tracer; $tag names it in each line
tag=""
ok() { pass=$((pass + 1)); echo "ok   ${tag:+[$tag] }$*"; }
bad() { fail=$((fail + 1)); echo "FAIL ${tag:+[$tag] }$*"; }
# bpftrace's harmless noise on this kernel (no tracefs mount for legacy detach, memlock)
quiet_bt() { grep -v -e RLIMIT_MEMLOCK -e uprobe_events -e 'failed to detach' >&2 || true; }
# ... and, for syscalls.bt, its compile warnings (bpftrace 0.17 flags the file-table walk
# and size_t arithmetic; each warning is three lines: message, source, marker)
quiet_sys() { grep -v -e RLIMIT_MEMLOCK -e uprobe_events -e 'failed to detach' -e 'WARNING: ' -e '^ *~*$' \
  -e 'fdt->max_fds' -e 'uptr(' >&2 || true; }

# capture_pid NAME PID READY: captures process PID with capture.sh --syscalls until it
# exits, into $work/NAME.csv (stderr $work/NAME.err); READY appears once the probes are
# attached (the process waits for it before its first system call under test).
capture_pid() {
  bash probes/capture.sh --syscalls --tracer "$tr" -o "$work/$1.csv" -p "$2" --ready "$3" 2> "$work/$1.err" || true
  wait "$2" || true
}

# Counts rows per probe in a trace CSV after checking its clock line and header.
counts() {
  python3 - "$1" <<'EOF'
import csv, json, re, sys
HEADER = "ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno".split(",")
path = sys.argv[1]
with open(path) as f:
    lines = f.read().splitlines()
if not lines or not re.fullmatch(r"# clock mono_ns=\d+ wall_ns=\d+", lines[0]):
    sys.exit(f"{path}:1: expected '# clock mono_ns=N wall_ns=N', got {lines[:1]}")
rows = [l for l in lines[1:] if not l.startswith("#")]
if not rows or rows[0].split(",") != HEADER:
    sys.exit(f"{path}:2: header {rows[:1]} is not {','.join(HEADER)}")
n = {}
for i, r in enumerate(csv.reader(rows[1:]), start=3):
    if len(r) != len(HEADER):
        sys.exit(f"{path}:{i}: {len(r)} fields, expected {len(HEADER)}")
    for col, v in zip(HEADER, r):
        if col != "probe" and v != "" and not re.fullmatch(r"-?\d+", v):
            sys.exit(f"{path}:{i}: {col}={v!r} is not an integer")
    n[r[2]] = n.get(r[2], 0) + 1
print(json.dumps(n, sort_keys=True))
EOF
}

# Prints, as JSON, the vnet USDT semaphores of the running BINARY process started with
# `--trace TRACE`, read once that process has created TRACE: vnet-sim does so after
# registering its probes, and bpftrace -c lets it run only once every probe is attached
# (read earlier, while bpftrace attaches one probe after the other, they are still partly 0).
# A semaphore counts the tracers attached to its probe and the device evaluates a probe
# only when it is non-zero, so tx_frame=0 there means "not attached": the check for
# --no-frames.
semaphores() { # BINARY TRACE
  python3 - "$1" "$2" <<'EOF'
import json, os, re, subprocess, sys, time
binary, trace = os.path.realpath(sys.argv[1]), sys.argv[2]
marker = f"--trace {trace}"
notes = subprocess.run(["readelf", "-nW", binary], capture_output=True, text=True, check=True).stdout
sems = {}
for m in re.finditer(r"Provider: vnet\s+Name: (\w+)\s+Location: \S+, Base: \S+, Semaphore: (0x[0-9a-f]+)", notes):
    sems[m.group(1)] = int(m.group(2), 16)
if not sems or 0 in sems.values():
    sys.exit(f"{binary}: no vnet USDT semaphores in .note.stapsdt")
loads = []  # (vaddr, offset, filesz) of PT_LOAD segments, to turn an address into a file offset
for l in subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True, check=True).stdout.splitlines():
    f = l.split()
    if f and f[0] == "LOAD":
        loads.append((int(f[2], 16), int(f[1], 16), int(f[4], 16)))
def file_off(v):
    for va, off, sz in loads:
        if va <= v < va + sz:
            return v - va + off
    sys.exit(f"semaphore {v:#x} is in no PT_LOAD segment")
seen_proc = False
for _ in range(600):  # polls for at most a minute; the run itself lasts a few seconds
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/exe") != binary:
                continue
            if marker not in open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace"):
                continue
            seen_proc = True
            if not os.path.exists(trace):
                continue  # still held by the tracer, attaching: values not final yet
            maps = []
            for l in open(f"/proc/{pid}/maps"):
                f = l.split()
                if len(f) >= 6 and os.path.realpath(f[5]) == binary:
                    s, e = (int(x, 16) for x in f[0].split("-"))
                    maps.append((s, e, int(f[2], 16)))
            vals = {}
            with open(f"/proc/{pid}/mem", "rb") as mem:
                for name, v in sems.items():
                    off = file_off(v)
                    addr = next(s + off - mo for s, e, mo in maps if mo <= off < mo + (e - s))
                    mem.seek(addr)
                    vals[name] = int.from_bytes(mem.read(2), "little")
        except (OSError, StopIteration):
            continue  # the process went away (or is not mapped yet): look again
        print(json.dumps(vals, sort_keys=True))
        sys.exit(0)
    time.sleep(0.1)
sys.exit(f"never saw the traced process create {trace}" if seen_proc else f"never saw a {binary} process with {marker!r}")
EOF
}

# --- (a) enobufs.bt against the run's own summary and in-process trace ---------------------
# backpressure from a proxy that stops reading 5 ms in every 50, plus ENOBUFS on every 50th send
sim_args="--duration 3 --proxy-pause-ms 5 --proxy-pause-every-ms 50 --inject-enobufs 50 --json --no-progress"
run_capture() { # $1 = FRAMES argument (may be empty), $2 = name
  local frames=$1 name=$2
  bpftrace -q -o "$work/$name.bt.csv" probes/enobufs.bt "$sim" $frames \
    -c "$sim $sim_args --trace $work/$name.inproc.csv" > "$work/$name.json" 2> >(quiet_bt) &
  local tracer=$!
  semaphores "$sim" "$work/$name.inproc.csv" > "$work/$name.sem" || true
  wait "$tracer"
}
run_capture "" all
if bt=$(counts "$work/all.bt.csv") && inproc=$(counts "$work/all.inproc.csv"); then
  ok "both traces parse with the clock line of dtrace/README.md and header"
  python3 - "$work/all.json" "$bt" "$inproc" <<'EOF' && ok "bpftrace counts equal the JSON summary and the in-process trace" || bad "counts differ"
import json, sys
s = json.load(open(sys.argv[1])); bt = json.loads(sys.argv[2]); inproc = json.loads(sys.argv[3])
want = {"enobufs_begin": s["episodes"], "enobufs_resolved": s["resolved"], "tx_frame": s["tx_frames"], "rx_frame": s["rx_frames"]}
print(f"     summary {want}")
print(f"     bpftrace {bt}")
ok = s["episodes"] > 0 and s["tx_frames"] > 0 and s["rx_frames"] > 0
if not ok:
    print("     the run had no episodes or no frames: nothing was tested")
for k, v in want.items():
    if bt.get(k, 0) != v:
        print(f"     {k}: bpftrace {bt.get(k, 0)} != summary {v}"); ok = False
if bt != inproc:
    print(f"     in-process {inproc}"); ok = False
sys.exit(0 if ok else 1)
EOF
else
  bad "a trace did not parse"
fi
if python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); print(f"     semaphores while it ran {s}"); sys.exit(0 if s and all(s.values()) else 1)' "$work/all.sem"; then
  ok "every probe attached in the full capture (USDT semaphores non-zero)"
else
  bad "full capture: some probe not attached, or semaphores not read"
fi
# the clock lines of both producers must map monotonic to wall time alike (bpftrace's comes
# from strftime("%s%f", nsecs), microseconds; the recorder's from clock_gettime)
if python3 - "$work/all.bt.csv" "$work/all.inproc.csv" <<'EOF'
import re, sys
off = []
for p in sys.argv[1:]:
    m = re.match(r"# clock mono_ns=(\d+) wall_ns=(\d+)", open(p).readline())
    off.append(int(m.group(2)) - int(m.group(1)))
d = abs(off[0] - off[1])
print(f"     wall - mono differs by {d / 1000:.1f} us between bpftrace and the recorder")
sys.exit(0 if d < 1_000_000 else 1)
EOF
then ok "clock lines agree within 1 ms"; else bad "clock lines disagree"; fi
if "$analyze" report "$work/all.bt.csv" > "$work/report.txt" 2>&1 && grep -q "Retries" "$work/report.txt"; then
  ok "analyze report reads the bpftrace trace: $(grep -m1 events "$work/report.txt")"
else
  bad "analyze report failed:"; sed 's/^/     /' "$work/report.txt"
fi

# Checks a capture made without frame rows: exactly the in-process trace minus tx_frame and
# rx_frame, episodes matching the JSON summary, and the frame probes attached or not as the
# last argument says (from the semaphores read while it ran).
check_no_frames() { # what trace.csv inproc.csv summary.json semaphores.json attached(0/1)
  local what=$1
  if nf=$(counts "$2") && nfi=$(counts "$3"); then
    python3 - "$nf" "$nfi" "$4" "$5" "$6" <<'EOF' && ok "$what" || bad "$what"
import json, sys
bt = json.loads(sys.argv[1]); inproc = json.loads(sys.argv[2]); s = json.load(open(sys.argv[3]))
try:
    sem = json.load(open(sys.argv[4]))
except ValueError:
    sys.exit("     no semaphore values were read while it ran")
attached = sys.argv[5] == "1"
want = {k: v for k, v in inproc.items() if k not in ("tx_frame", "rx_frame")}
print(f"     bpftrace {bt}")
print(f"     semaphores while it ran {sem}")
ok = bt == want and inproc.get("tx_frame", 0) > 0 and s["episodes"] > 0
ok &= bt.get("enobufs_begin") == s["episodes"] and bt.get("enobufs_resolved") == s["resolved"]
frames = [sem.get("tx_frame"), sem.get("rx_frame")]
ok &= (all(v and v > 0 for v in frames) if attached else frames == [0, 0])
ok &= all(v > 0 for k, v in sem.items() if k not in ("tx_frame", "rx_frame"))
sys.exit(0 if ok else 1)
EOF
  else
    bad "$what: the trace did not parse"
  fi
}
# FRAMES=0 only filters: same rows as --no-frames, but the frame probes stay attached
# (this also shows the semaphore check sees an attached probe)
run_capture 0 noframes
check_no_frames "FRAMES=0 leaves out exactly the frame rows; the frame probes stay attached" \
  "$work/noframes.bt.csv" "$work/noframes.inproc.csv" "$work/noframes.json" "$work/noframes.sem" 1
# capture.sh --no-frames: the frame probes not attached at all
bash probes/capture.sh --no-frames -o "$work/nf.bt.csv" -c "$sim $sim_args --trace $work/nf.inproc.csv" "$sim" \
  > "$work/nf.json" 2> >(quiet_bt) &
tracer=$!
semaphores "$sim" "$work/nf.inproc.csv" > "$work/nf.sem" || true
wait "$tracer" || true
check_no_frames "capture.sh --no-frames: no frame rows, the rest match; tx_frame/rx_frame not attached" \
  "$work/nf.bt.csv" "$work/nf.inproc.csv" "$work/nf.json" "$work/nf.sem" 0

# --- (d) capture.sh on a real capture: sorted, same rows as the in-process trace ------------
if bash probes/capture.sh -o "$work/cap.csv" \
    -c "$sim --duration 2 --inject-enobufs 50 --trace $work/cap.inproc.csv --no-progress" "$sim" \
    > /dev/null 2> >(quiet_bt) && c1=$(counts "$work/cap.csv") && c2=$(counts "$work/cap.inproc.csv") \
    && [ "$c1" = "$c2" ] && awk -F, '/^[0-9]/ { if ($1 < p) bad = 1; p = $1 } END { exit bad }' "$work/cap.csv"; then
  ok "capture.sh: sorted by ts_ns, same rows per probe as the in-process trace"
else
  bad "capture.sh capture: ${c1:-?} vs ${c2:-?}"
fi

# --- (b) stall.bt -------------------------------------------------------------------------
# 50 ms rather than the default 10: a busy 2-core CI machine can delay a healthy retry
# by a few milliseconds, and this check is about silence, not scheduling.
bpftrace probes/stall.bt "$sim" 50 \
  -c "$sim --duration 2 --inject-enobufs 50 --lose-write-events --no-timer --stall-timeout 1 --no-progress" \
  > "$work/stall.out" 2> >(quiet_bt) || true
if grep -q '^[0-9:]* STALL .*no write event, no timer, no TX kick' "$work/stall.out" && grep -q ' LONG ' "$work/stall.out"; then
  ok "stall.bt reports the lost-write-event run without timer:"; grep -E ' (STALL|LONG) ' "$work/stall.out" | sed 's/^/     /'
else
  bad "stall.bt did not report the hang:"; sed 's/^/     /' "$work/stall.out"
fi
bpftrace probes/stall.bt "$sim" 50 \
  -c "$sim --duration 2 --inject-enobufs 50 --json --no-progress" > "$work/healthy.out" 2> >(quiet_bt) || true
episodes=$(sed -n 's/.*"episodes": *\([0-9]*\).*/\1/p' "$work/healthy.out" | head -1)
if grep -qE ' (STALL|LONG) ' "$work/healthy.out"; then
  bad "stall.bt reported a healthy run:"; grep -E ' (STALL|LONG) ' "$work/healthy.out" | sed 's/^/     /'
elif [ "${episodes:-0}" -gt 0 ]; then
  ok "stall.bt stays quiet on a healthy run with $episodes episodes"
else
  bad "healthy run had no episodes (nothing was tested)"
fi

# --- (c) enobufs-hist.bt ------------------------------------------------------------------
bpftrace probes/enobufs-hist.bt "$sim" 1 \
  -c "$sim --duration 2 --inject-enobufs 50 --no-progress" > "$work/hist.out" 2> >(quiet_bt) || true
if grep -q '^@wait_us:' "$work/hist.out" && grep -q '^@retries:' "$work/hist.out" && grep -q '^\[1, 2) *[1-9]' "$work/hist.out"; then
  ok "enobufs-hist.bt prints wait and retry histograms"
else
  bad "enobufs-hist.bt output lacks histograms:"; sed 's/^/     /' "$work/hist.out" | head -30
fi

for tr in systrace bpftrace; do
tag=$tr
# --- (e) syscalls.bt: the device seen from outside, through its system calls -------------
# A default run: the built-in unixgram proxy binds its own socket, so the device meets real
# EAGAIN. The device's own recorder writes the same run's trace; both must show the same
# episodes. syscalls.bt traces every AF_UNIX socket of the process (the proxy runs in it
# too), so only the device's fd is compared: the fd of the recorder's tx_frame rows.
bash probes/capture.sh --syscalls --tracer "$tr" -o "$work/sys.csv" \
  -c "$sim --duration 3 --json --no-progress --trace $work/sys.inproc.csv" > "$work/sys.json" 2> >(quiet_sys) || true
if counts "$work/sys.csv" > /dev/null && counts "$work/sys.inproc.csv" > /dev/null; then
  python3 - "$work/sys.csv" "$work/sys.inproc.csv" "$work/sys.json" "$work/sys.fd.csv" <<'EOF' && ok "the syscall capture agrees with the device's recorder: episodes, retries, waits, frames, wake-ups" || bad "the syscall capture and the recorder disagree"
import csv, json, statistics, sys
from collections import Counter
def load(path):
    with open(path) as f:
        return list(csv.DictReader(l for l in f if not l.startswith("#")))
sysrows, rec, summary = load(sys.argv[1]), load(sys.argv[2]), json.load(open(sys.argv[3]))
fds = {r["fd"] for r in rec if r["probe"] == "tx_frame"}
if len(fds) != 1:
    sys.exit(f"     the recorder's tx_frame rows name fds {fds}, expected one")
fd = fds.pop()
mine = [r for r in sysrows if r["fd"] == fd]
with open(sys.argv[4], "w") as out:  # the device's rows only, for analyze below
    out.writelines(l for l in open(sys.argv[1]) if l.startswith(("#", "ts_ns,")) or l.split(",")[3] == fd)
ok = summary["episodes"] > 0 and summary["tx_frames"] > 0
if not ok:
    print("     the run had no episodes or no frames: nothing was tested")
probes = ("enobufs_begin", "enobufs_retry", "enobufs_resolved", "tx_frame", "rx_frame", "kevent_write", "kevent_read")
a = Counter(r["probe"] for r in mine)
b = Counter(r["probe"] for r in rec)
print(f"     fd {fd}: syscalls.bt {dict((p, a[p]) for p in probes)}")
print(f"     fd {fd}: recorder    {dict((p, b[p]) for p in probes)}")
for p in probes:
    if a[p] != b[p]:
        print(f"     {p}: syscalls.bt {a[p]} != recorder {b[p]}")
        ok = False
if (a["enobufs_begin"], a["tx_frame"], a["rx_frame"]) != (summary["episodes"], summary["tx_frames"], summary["rx_frames"]):
    print(f"     summary: episodes {summary['episodes']}, tx_frames {summary['tx_frames']}, rx_frames {summary['rx_frames']}")
    ok = False
def episodes(rows):  # (start, retries, wait_ns) per resolved episode, in time order
    return sorted((int(r["ts_ns"]) - int(r["wait_ns"]), int(r["retries"]), int(r["wait_ns"]))
                  for r in rows if r["probe"] == "enobufs_resolved")
ea, eb = episodes(mine), episodes(rec)
ha, hb = sorted(Counter(e[1] for e in ea).items()), sorted(Counter(e[1] for e in eb).items())
print(f"     retries histogram (retries, episodes): syscalls.bt {ha}, recorder {hb}")
ok &= ha == hb and len(ea) == len(eb) > 0
if ea and len(ea) == len(eb):
    # Episode i of one trace is episode i of the other. syscalls.bt stamps the system call's
    # return, the device reads its clock just after the return reaches it: a few
    # microseconds later (1-2 us median |wait difference|, 3-5 us begin lag measured here,
    # probes/README.md). A wrong clock or episode start would be off by the whole wait
    # (~500 us); a tracer that delays the traced thread (as a printf per row did: 6-46 us)
    # shows up as a larger median.
    d = sorted(abs(x[2] - y[2]) for x, y in zip(ea, eb))
    med, p90 = statistics.median(d) / 1e3, d[int(len(d) * 0.9)] / 1e3
    begins = [int(y["ts_ns"]) - int(x["ts_ns"]) for x, y in zip(
        [r for r in mine if r["probe"] == "enobufs_begin"], [r for r in rec if r["probe"] == "enobufs_begin"])]
    bmed = statistics.median(abs(v) for v in begins) / 1e3
    print(f"     per-episode |wait difference|: median {med:.1f} us, p90 {p90:.1f} us, max {d[-1] / 1e3:.1f} us;"
          f" begin stamps {bmed:.1f} us apart (median)")
    if med >= 10:
        print("     waits disagree by 10 us or more per episode (median)")
        ok = False
    if bmed >= 10:
        print("     episodes begin 10 us or more apart (median)")
        ok = False
# The same event, stamped twice: the device's stamp comes after the tracer's (it reads its
# clock once the call has returned), never before; and each frame has the same length.
for p in ("enobufs_begin", "enobufs_retry", "enobufs_resolved", "tx_frame", "rx_frame", "kevent_write", "kevent_read"):
    x = [r for r in mine if r["probe"] == p]
    y = [r for r in rec if r["probe"] == p]
    early = sum(int(v["ts_ns"]) < int(u["ts_ns"]) for u, v in zip(x, y))
    if early:
        print(f"     {p}: {early} of {len(y)} device stamps earlier than the tracer's")
        ok = False
    if p in ("tx_frame", "rx_frame"):
        lens = sum(u["len"] != v["len"] for u, v in zip(x, y))
        print(f"     {p}: {len(y)} frames, lengths different in {lens}, device stamps earlier: {early}")
        ok &= lens == 0
    # An episode's len is the frame the device tried to send (begin) and then sent
    # (resolved): its pieces are up to 32 iovecs, so a tracer that adds up only some of
    # them is wrong on the large gathered frames. Episode by episode, equal.
    if p in ("enobufs_begin", "enobufs_resolved"):
        lens = [(u["len"], v["len"]) for u, v in zip(x, y) if u["len"] != v["len"]]
        print(f"     {p}: {len(y)} episodes, lengths different in {len(lens)}"
              + (f" (tracer, device: {lens[:3]})" if lens else ""))
        ok &= len(y) > 0 and not lens
# The built-in proxy's sockets (the other fds): it received every frame the device sent and
# sent every frame the device received, so their frame rows have the device's lengths, as
# multisets (the proxy's threads interleave). A row some stale per-thread state wrote (as a
# sendmmsg pointer left from an earlier call once did: 64 rows of stale lengths) breaks it.
other = [r for r in sysrows if r["fd"] != fd]
def lens(rows, p):
    return sorted(int(r["len"]) for r in rows if r["probe"] == p)
prx, ptx = lens(other, "rx_frame"), lens(other, "tx_frame")
print(f"     the proxy's fds {sorted({r['fd'] for r in other})}: rx_frame {len(prx)}, tx_frame {len(ptx)};"
      f" lengths equal to the device's tx/rx: {prx == lens(rec, 'tx_frame')}/{ptx == lens(rec, 'rx_frame')}")
ok &= prx == lens(rec, "tx_frame") and ptx == lens(rec, "rx_frame")
# FIONREAD of a datagram socket is the head datagram's length, which only the device's own
# read changes: equal. The free send space is read by the tracer at the return and by the
# device just after; in between only the proxy runs, and its reads free space: the device's
# value is never smaller, and equal when the proxy read nothing meanwhile.
for p in ("kevent_read", "kevent_write"):
    x = [int(r["data"]) for r in mine if r["probe"] == p]
    y = [int(r["data"]) for r in rec if r["probe"] == p]
    same = sum(u == v for u, v in zip(x, y))
    smaller = sum(v < u for u, v in zip(x, y))
    print(f"     {p} data equal to the device's: {same} of {len(y)}; device's smaller: {smaller}")
    ok &= len(y) > 0 and same >= (0.99 if p == "kevent_read" else 0.5) * len(y) and smaller == 0
sys.exit(0 if ok else 1)
EOF
  if "$analyze" compare "$work/sys.inproc.csv" "$work/sys.fd.csv" > "$work/sys.compare" 2>&1; then
    ok "analyze compare, recorder (A) vs the syscall capture (B):"; sed 's/^/     /' "$work/sys.compare"
  else
    bad "analyze compare failed:"; sed 's/^/     /' "$work/sys.compare"
  fi
else
  bad "the syscall capture or its recorder trace did not parse"
fi

if [ "$tr" = bpftrace ]; then
# A row map too small for the run (64 rows between two drains, 4 ms apart): the rows that did not fit
# are counted, not silently missing: syscalls-rows.awk says how many in one line, capture.sh
# warns, and the rows in the CSV plus the lost ones are every row the script made.
BPFTRACE_MAP_KEYS_MAX=64 bash probes/capture.sh --syscalls --tracer bpftrace -o "$work/small.csv" \
  -c "$sim --duration 2 --no-progress" > /dev/null 2> "$work/small.err" || true
lostline=$(grep '^syscalls-rows.awk: lost' "$work/small.err" || true)
rows=$(grep -c '^[0-9]' "$work/small.csv" || true)
if [[ $lostline =~ lost\ ([0-9]+)\ rows\ of\ ([0-9]+) ]] && [ $((rows + BASH_REMATCH[1])) = "${BASH_REMATCH[2]}" ] \
    && grep -q '^# warning: the tracer lost' "$work/small.csv" && grep -q 'capture.sh: WARNING' "$work/small.err"; then
  ok "syscalls.bt with a full row map: $rows rows kept; ${lostline#syscalls-rows.awk: }"
else
  bad "syscalls.bt with a full row map: $rows rows, no or wrong lost-rows report:"; quiet_sys < "$work/small.err" 2>&1 | sed 's/^/     /'
fi
else
# A ring too small for the time between two reads (1 MiB, about 18700 rows, read only once
# the 2 s run has ended, which makes 35000-130000 rows here): vnet-systrace counts the rows
# it had no room for, capture.sh warns, and kept plus lost is every row made.
printf '#!/bin/sh\nexec %s --ring-mib 1 --drain-ms 60000 "$@"\n' "$systrace" > "$work/small-ring"
chmod +x "$work/small-ring"
VNET_SYSTRACE=$work/small-ring bash probes/capture.sh --syscalls --tracer systrace -o "$work/small.csv" \
  -c "$sim --duration 2 --no-progress" > /dev/null 2> "$work/small.err" || true
lostline=$(grep '^vnet-systrace: lost' "$work/small.err" || true)
rows=$(grep -c '^[0-9]' "$work/small.csv" || true)
if [[ $lostline =~ lost\ ([0-9]+)\ rows\ of\ ([0-9]+) ]] && [ "${BASH_REMATCH[1]}" -gt 0 ] && [ $((rows + BASH_REMATCH[1])) = "${BASH_REMATCH[2]}" ] \
    && grep -q '^# warning: the tracer lost' "$work/small.csv" && grep -q 'capture.sh: WARNING' "$work/small.err"; then
  ok "vnet-systrace with a full ring: $rows rows kept; ${lostline#vnet-systrace: }"
else
  bad "vnet-systrace with a full ring: $rows rows, no or wrong lost-rows report:"; sed 's/^/     /' "$work/small.err"
fi
fi

# --no-frames: the receive probes are not attached and sends write no tx_frame rows; the
# episodes and wake-ups of the device's fd still equal the recorder's.
bash probes/capture.sh --syscalls --tracer "$tr" --no-frames -o "$work/sysnf.csv" \
  -c "$sim --duration 2 --json --no-progress --trace $work/sysnf.inproc.csv" > /dev/null 2> >(quiet_sys) || true
if counts "$work/sysnf.csv" > /dev/null && python3 - "$work/sysnf.csv" "$work/sysnf.inproc.csv" <<'EOF'
import csv, sys
from collections import Counter
rows = [list(csv.DictReader(l for l in open(p) if not l.startswith("#"))) for p in sys.argv[1:]]
fd = {r["fd"] for r in rows[1] if r["probe"] == "tx_frame"}.pop()
a = Counter(r["probe"] for r in rows[0] if r["fd"] == fd)
b = Counter(r["probe"] for r in rows[1] if r["probe"] not in ("tx_frame", "rx_frame", "guest_kick", "guest_irq", "timer_fired"))
frames = sum(1 for r in rows[0] if r["probe"] in ("tx_frame", "rx_frame"))
print(f"     fd {fd}: syscalls.bt --no-frames {dict(sorted(a.items()))}, frame rows {frames}")
print(f"     fd {fd}: recorder (no frames)    {dict(sorted(b.items()))}")
sys.exit(0 if a == b and frames == 0 and a["enobufs_begin"] > 0 else 1)
EOF
then
  ok "capture.sh --syscalls --no-frames: no frame rows, the device's episodes and wake-ups unchanged"
else
  bad "capture.sh --syscalls --no-frames"
fi

# Attached to a running process by the path of its socket (-p, --socket): capture.sh finds
# the fd and the epoll registration made before the capture, so wake-ups show up too.
# (8 s: attaching takes bpftrace a few seconds on this machine, the run must outlast it)
"$sim" --duration 8 --no-progress --json > "$work/sysp.json" &
simpid=$!
sock=""
for _ in $(seq 50); do
  sock=$(awk -v p="/vnet-sim-$simpid-" 'index($8, p) && $8 ~ /device\.sock$/ { print $8 }' /proc/net/unix)
  [ -n "$sock" ] && break
  sleep 0.1
done
bash probes/capture.sh --syscalls --tracer "$tr" -o "$work/sysp.csv" -p "$simpid" --socket "${sock:-/nonexistent}" 2> "$work/sysp.err" || true
wait "$simpid" || true
if [ -n "$sock" ] && c=$(counts "$work/sysp.csv") && python3 - "$work/sysp.csv" "$c" <<'EOF'
import json, sys
c = json.loads(sys.argv[2])
fds = {l.split(",")[3] for l in open(sys.argv[1]) if l[0].isdigit()}
print(f"     {c}, fds {sorted(fds)}")
sys.exit(0 if len(fds) == 1 and all(c.get(p, 0) > 0 for p in ("tx_frame", "rx_frame", "kevent_write", "kevent_read", "enobufs_begin")) else 1)
EOF
then
  ok "capture.sh --syscalls -p PID --socket PATH: $(grep -o 'tracing fd.*' "$work/sysp.err")"
else
  bad "capture.sh --syscalls --socket ${sock:-(device socket not found)}:"; quiet_sys < "$work/sysp.err" 2>&1 | sed 's/^/     /'
fi

# --ready FILE: the file appears only once every probe is attached. A process that starts
# sending only when it sees the file must have every one of its sends in the capture.
rm -f "$work/ready"
PYTHONPATH="$work" python3 - "$work/ready" <<'EOF' &
import socket, sys
from await_ready import await_ready
a, b = socket.socketpair()
await_ready(sys.argv[1])
for _ in range(500):
    a.send(b"x" * 100)
    b.recv(1000)
EOF
sendpid=$!
capture_pid ready "$sendpid" "$work/ready"
tx=$(grep -c ',tx_frame,' "$work/ready.csv" || true)
rx=$(grep -c ',rx_frame,' "$work/ready.csv" || true)
if [ -e "$work/ready" ] && [ "$tx" = 500 ] && [ "$rx" = 500 ]; then
  ok "capture.sh --ready: every send after the ready file is in the capture (tx $tx, rx $rx of 500)"
else
  bad "capture.sh --ready: tx $tx, rx $rx of 500 (ready file: $(ls "$work/ready" 2>&1))"; quiet_sys < "$work/ready.err" 2>&1 | sed 's/^/     /'
fi

# -p PID with no fd given: every row must name one of the process's AF_UNIX sockets, and
# an fd number's next socket starts clean. The process polls its stdin (a pipe with data:
# with no FD, poll's fd 0 once passed the fd filter), leaves an episode open when it closes
# a socket, then makes a new socket that gets the same number (its first send once
# "resolved" the old episode).
rm -f "$work/fds.ready"
cat > "$work/fds.py" <<'EOF'
import json, os, select, socket, sys, time
from await_ready import await_ready
await_ready(sys.argv[1])
ep = select.epoll()
fds, begins, resolved = set(), 0, 0
for _ in range(20):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    fds |= {s.fileno() for s in (a, b, c, d)}
    ep.register(a.fileno(), select.EPOLLOUT | select.EPOLLIN)
    ep.register(0, select.EPOLLIN)
    p = select.poll()
    p.register(0, select.POLLIN)
    p.register(a.fileno(), select.POLLOUT)
    p.poll(0)
    ep.poll(0)
    os.read(0, 1)
    for s in (a, c):  # fill to EAGAIN: an episode on each
        s.setblocking(False)
        try:
            while True:
                s.send(b"x" * 1000)
        except BlockingIOError:
            begins += 1
    b.recv(2000)
    a.send(b"y")  # resolves a's episode; c's is left open
    resolved += 1
    ep.unregister(0)
    for s in (a, b, c, d):  # no EPOLL_CTL_DEL for a: the kernel drops it on close
        s.close()
    r, w = os.pipe()  # takes a's number: a pipe, not traced
    os.write(w, b"z"); os.read(r, 1); os.close(r); os.close(w)
json.dump({"fds": sorted(fds), "begins": begins, "resolved": resolved}, open(sys.argv[2], "w"))
EOF
python3 "$work/fds.py" "$work/fds.ready" "$work/fds.json" < <(yes | head -c 1000) &
fdspid=$!
capture_pid fds "$fdspid" "$work/fds.ready"
if counts "$work/fds.csv" > /dev/null && python3 - "$work/fds.csv" "$work/fds.json" <<'EOF'
import csv, json, sys
from collections import Counter
rows = list(csv.DictReader(l for l in open(sys.argv[1]) if not l.startswith("#")))
want = json.load(open(sys.argv[2]))
fds = Counter(r["fd"] for r in rows)
c = Counter(r["probe"] for r in rows)
print(f"     rows per fd {dict(sorted(fds.items()))}; the sockets were fds {want['fds']}")
print(f"     enobufs_begin {c['enobufs_begin']}, enobufs_resolved {c['enobufs_resolved']};"
      f" the process met {want['begins']} and resolved {want['resolved']}")
ok = set(fds) <= {str(f) for f in want["fds"]} and c["kevent_write"] > 0
ok &= (c["enobufs_begin"], c["enobufs_resolved"]) == (want["begins"], want["resolved"])
sys.exit(0 if ok else 1)
EOF
then
  ok "capture.sh --syscalls -p PID: rows only for the process's unix sockets (not its polled stdin), no episode outlives its socket"
else
  bad "capture.sh --syscalls -p PID: rows for other fds, or stale episodes"; quiet_sys < "$work/fds.err" 2>&1 | sed 's/^/     /'
fi

# Send lengths past the device's gather limit: on a stream socket (where resolved's len is
# what the call asked for, so the iovecs are added up for it too) episodes of sendmsg calls
# with 40 and with 1024 iovecs (Linux's UIO_MAXIOV, the loop's bound) must show the exact
# byte count in begin and resolved; 1100 iovecs fail with EMSGSIZE and make no row.
rm -f "$work/iov.ready"
cat > "$work/iov.py" <<'EOF'
import json, os, socket, sys, time
from await_ready import await_ready
await_ready(sys.argv[1])
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
a.setblocking(False)
b.setblocking(False)
want = []
for bufs in ([b"x" * 1000] * 40, [b"y" * 64] * 1024):
    try:
        while True:
            a.sendmsg(bufs)
    except BlockingIOError:
        pass
    try:
        while True:
            b.recv(1 << 20)
    except BlockingIOError:
        pass
    a.sendmsg(bufs)
    want.append(sum(map(len, bufs)))
try:
    a.sendmsg([b"z"] * 1100)
except OSError:
    pass
json.dump({"fd": a.fileno(), "lens": want}, open(sys.argv[2], "w"))
EOF
python3 "$work/iov.py" "$work/iov.ready" "$work/iov.json" &
iovpid=$!
capture_pid iov "$iovpid" "$work/iov.ready"
if counts "$work/iov.csv" > /dev/null && python3 - "$work/iov.csv" "$work/iov.json" <<'EOF'
import csv, json, sys
rows = list(csv.DictReader(l for l in open(sys.argv[1]) if not l.startswith("#")))
want = json.load(open(sys.argv[2]))
got = [(r["probe"], int(r["len"])) for r in rows
       if r["fd"] == str(want["fd"]) and r["probe"] in ("enobufs_begin", "enobufs_resolved")]
exp = [(p, n) for n in want["lens"] for p in ("enobufs_begin", "enobufs_resolved")]
print(f"     (probe, len) {got}; asked {want['lens']}")
sys.exit(0 if got == exp else 1)
EOF
then
  ok "begin/resolved len of 40- and 1024-iovec sends on a stream socket is every byte asked for"
else
  bad "begin/resolved len of many-iovec sends"; quiet_sys < "$work/iov.err" 2>&1 | sed 's/^/     /'
fi

done
tag=""

echo "probes: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
