#!/usr/bin/env bash
# A real VM through the vhost-user daemon: a Debian guest kernel's virtio-net driver on
# vnet-vhost, passt behind it, iperf3 forward and reverse for a few seconds each: the
# machine's own Debian 12 kernel on q35 and on microvm, then Debian 13's current cloud
# kernel (a newer virtio-net driver, modules compressed as .ko.xz) at MTU 65520.
# Asserts that traffic moved both ways through the daemon (its counters cover what iperf3
# moved, and equal frame for frame and byte for byte what the guest's NIC counted), that the bpftrace capture has per-frame rows matching the counters, that under
# --tracer syscalls the captures of passt and of its peer (QEMU, the daemon) read with
# analyze and agree on the bytes each side wrote and the other read, and that nothing the
# run started is left running. Needs root (bpftrace, and apt-get download on a fresh
# machine), QEMU, passt and iperf3; skips with the reason otherwise.
set -euo pipefail
cd "$(dirname "$0")/../../.."

skip() { echo "vm.sh: SKIP: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root (bpftrace, apt-get download)"
for tool in qemu-system-x86_64 passt iperf3 python3; do
  command -v "$tool" >/dev/null || skip "$tool is not installed (run .ci/setup.sh)"
done

SECONDS_PER_TEST=${VNET_VM_SECONDS:-3}
cargo build --release --quiet -p vnet-vm -p vnet-vhost -p analyze
bin=${CARGO_TARGET_DIR:-target}/release

out=$(mktemp -d /tmp/vnet-vm-ci.XXXXXX)
trap 'rm -rf "$out"' EXIT
# The runner's socket directory goes under $out (via TMPDIR), so every process of this run
# has $out in its command line; passt runs as nobody and must reach it.
chmod 755 "$out"
mkdir -m 1777 "$out/tmp"
tracer=()
if command -v bpftrace >/dev/null; then tracer=(--tracer bpftrace); else echo "vm.sh: bpftrace missing: no trace checks"; fi

# run NAME ARGS...: one vnet-vm invocation into $out/NAME; prints the logs if it fails.
run() {
  local name=$1; shift
  local dir="$out/$name" status=0
  mkdir -p "$dir"
  echo "vm.sh: $name: vnet-vm $*"
  TMPDIR="$out/tmp" timeout --kill-after=10 240 "$bin/vnet-vm" "$@" --json --out "$dir" \
    >"$dir/stdout.json" 2>"$dir/runner.log" || status=$?
  if [ $status -ne 0 ]; then
    echo "vm.sh: $name: vnet-vm failed ($status):"; cat "$dir/runner.log"
    for f in "$dir"/vhost/{daemon.log,qemu.err,passt.err} "$dir"/*/*.capture.log; do [ -s "$f" ] && { echo "--- $f"; tail -20 "$f"; }; done
    [ -f "$dir/vhost/console.log" ] && { echo "--- console"; tail -60 "$dir/vhost/console.log"; }
    # Everything the run wrote, for a closer look than the tails above.
    rm -rf "${CARGO_TARGET_DIR:-target}/vm-failure" && cp -r "$dir" "${CARGO_TARGET_DIR:-target}/vm-failure" &&
      echo "vm.sh: logs kept in ${CARGO_TARGET_DIR:-target}/vm-failure"
    exit 1
  fi
  cat "$dir/runner.log"
  check "$dir/stdout.json" "$@"
}

check() {
ANALYZE="$bin/analyze" python3 - "$@" <<'EOF'
import json, os, sys
summary = json.load(open(sys.argv[1]))
args = sys.argv[2:]
tracer = args[args.index("--tracer") + 1] if "--tracer" in args else None
out_dir = os.path.dirname(os.path.dirname(sys.argv[1]))
fail = []
def check(cond, msg):
    print(("ok   " if cond else "FAIL ") + msg)
    if not cond:
        fail.append(msg)

# The default TCG model leaves out the CPU features that make the guest copy a byte per
# emulated loop turn; the guest's own flags show whether QEMU honoured that.
if summary["accel"] == "tcg" and "--tcg-cpu" not in args:
    console = os.path.join(os.path.dirname(sys.argv[1]), "vhost", "console.log")
    cpu = next((l.strip() for l in open(console, errors="replace") if l.startswith("VNET-CPU ")), "no VNET-CPU line")
    check("erms=0 fsrm=0" in cpu, f"the guest's CPU has neither ERMS nor FSRM under -cpu {summary['cpu']}: {cpu}")
fwd, rev = summary["fwd_gbit_per_s"], summary["rev_gbit_per_s"]
check(fwd is not None and fwd > 0, f"forward throughput {fwd} Gbit/s > 0")
check(rev is not None and rev > 0, f"reverse throughput {rev} Gbit/s > 0")
d = summary["daemon"]
check(d is not None and d.get("end") == "disconnected", f"daemon ended on QEMU's disconnect: {d and d.get('end')}")
# Its workers exited before it reported, so their own usage is in the counters.
dev = (d or {}).get("device", d or {})
usage = {k: dev.get(k) for k in ("worker_cpu_ns", "worker_voluntary_switches", "worker_involuntary_switches")}
check(all(isinstance(v, int) for v in usage.values()) and usage["worker_cpu_ns"] > 0
      and usage["worker_voluntary_switches"] > 0, f"the daemon's workers reported CPU time and context switches: {usage}")
tests = {t["name"]: t for t in summary["tests"]}
# The payload each test's receiver got: it crossed the link. (Not the sender's count: bytes
# iperf3 wrote into the guest's socket buffer and the test's end discarded never left the
# guest; a baseline run once sent 38535168 while 37021512 bytes, headers included, crossed.)
sent = tests["fwd"]["fwd"]["bytes_received"]        # TCP payload the guest sent that arrived
received = tests["rev"]["rev"]["bytes_received"]    # TCP payload the guest received
# Every payload byte crossed the daemon inside an Ethernet frame: counters must cover them,
# and not by absurd margins (headers and ACKs add well under 2x at MTU 1500).
check(d["tx_bytes"] >= sent, f"daemon tx_bytes {d['tx_bytes']} >= guest sent {sent}")
check(d["rx_bytes"] >= received, f"daemon rx_bytes {d['rx_bytes']} >= guest received {received}")
# Exactly what the device handed over: the guest's NIC counts every frame the daemon
# delivered, byte for byte. Its last snapshot is taken once the link has been quiet for
# half a second after the last test (see `settle` in device/vm/guest/init: a snapshot
# taken while the guest still took what the host had queued read rx_bytes and rx_packets
# at different moments, 139146 bytes apart in one CI run), so the daemon may have moved a
# few more frames since (connection teardown), never fewer.
stats = summary.get("guest_stats", [])
nic = stats[-1]["counters"] if stats else {}
check(bool(nic), f"the guest reported its counters after {[g['label'] for g in stats]}")
if nic:
    # RX coalescing (GUEST_TSO4/6): the guest received each GSO frame as one, and its
    # segments' headers but the first's once.
    merged = d.get("rx_coalesced_segments", 0) - d.get("rx_gso_frames", 0)
    # TSO: the guest counts a GSO chain as one packet of the length it handed over; the
    # daemon counts each segment it cut, each with its copy of the headers.
    cut = d.get("tx_gso_segments", 0) - d.get("tx_gso_chains", 0)
    delivered = {"rx": (d["rx_frames"] - merged, d["rx_bytes"] - d.get("rx_coalesced_hdr_bytes", 0)),
                 "tx": (d["tx_frames"] - cut, d["tx_bytes"] - d.get("tx_gso_header_bytes", 0))}
    for way, what in (("rx", "delivered to the guest"), ("tx", "taken from the guest")):
        frames, nbytes = delivered[way]
        df = frames - nic[f"nic.{way}_packets"]
        db = nbytes - nic[f"nic.{way}_bytes"]
        check(0 <= df <= 64, f"daemon {way} frames {frames} = the guest NIC's {nic[f'nic.{way}_packets']} ({what}; {df} later)")
        check(0 <= db <= df * 65550 and (db == 0) == (df == 0),
              f"daemon {way} bytes {nbytes} = the guest NIC's {nic[f'nic.{way}_bytes']} ({db} in the {df} frames later)")
    check(nic["nic.rx_dropped"] == 0 and nic["nic.rx_errors"] == 0 and nic.get("nic.rx_length_errors", 0) == 0,
          f"the guest's NIC dropped nothing (rx_dropped {nic['nic.rx_dropped']}, rx_errors {nic['nic.rx_errors']}, rx_length_errors {nic.get('nic.rx_length_errors')})")
    check(nic.get("ip.InHdrErrors", 0) == 0 and nic.get("ip.InTruncatedPkts", 0) == 0,
          f"no malformed or truncated IP packets in the guest (InHdrErrors {nic.get('ip.InHdrErrors')}, InTruncatedPkts {nic.get('ip.InTruncatedPkts')})")
    check(nic.get("tcp.InCsumErrors", 0) == 0, f"no TCP checksum errors in the guest ({nic.get('tcp.InCsumErrors')})")
    # More frames than payload is the proxy's doing, not the device's: passt resends what
    # the guest had not acknowledged in time (under TCG the guest is slow to), and the
    # guest counts each copy it already had.
    if d["rx_bytes"] > 3 * received + 50_000_000:
        print(f"info the guest took {d['rx_bytes']} bytes for {received} of iperf3 payload: "
              f"segments received twice {nic.get('tcp.TCPDSACKOldSent')}, receive-queue drops {nic.get('tcp.TCPRcvQDrop')}, "
              f"out-of-order {nic.get('tcp.TCPOFOQueue')}")
check(d["handshake"]["early_enables"] > 0, f"QEMU's early SET_VRING_ENABLE seen ({d['handshake']['early_enables']})")
acked = d["handshake"]["acked_features"] or 0
check(acked & (1 << 32) != 0, f"VERSION_1 negotiated (features {acked:#x})")
# The guest's virtio-net takes both checksum offloads (CSUM bit 0, GUEST_CSUM bit 1), and
# the daemon completed the checksums of nearly all it sent: everything but a few frames
# without one (ARP); no TCP checksum error above says the results were right.
check(acked & 3 == 3, f"CSUM and GUEST_CSUM negotiated (features {acked:#x})")
check(d.get("tx_csum_offload", 0) > d["tx_frames"] // 2,
      f"the daemon completed TX checksums: tx_csum_offload {d.get('tx_csum_offload')} of {d['tx_frames']} frames")
mtu = int(args[args.index("--mtu") + 1]) if "--mtu" in args else 1500
# A daemon told to send one frame per call made a send call for every frame it sent (more
# when the socket was full). The others batch: at MTU 1500 they made fewer calls than
# frames (at 65520 most frames are too large to share a call).
if "--daemon-arg=--one-frame-per-call" in args:
    check(d["tx_syscalls"] >= d["tx_frames"],
          f"--one-frame-per-call: a send call per frame ({d['tx_syscalls']} calls for {d['tx_frames']} frames)")
elif mtu == 1500:
    check(d["tx_syscalls"] < d["tx_frames"],
          f"batched sends ({d['tx_syscalls']} calls for {d['tx_frames']} frames)")
# TSO (HOST_TSO4 bit 11, HOST_TSO6 bit 12): the guest's driver takes it and, at MTU 1500,
# hands the daemon TCP segments larger than one frame, which the daemon cuts (every
# segment also counts in tx_csum_offload above).
check(acked & (3 << 11) == 3 << 11, f"HOST_TSO4 and HOST_TSO6 negotiated (features {acked:#x})")
if mtu <= 9000:
    check(d.get("tx_gso_chains", 0) > 0 and d.get("tx_gso_segments", 0) > d.get("tx_gso_chains", 0),
          f"the daemon cut the guest's TCP segments at MTU {mtu}: {d.get('tx_gso_chains')} chains into {d.get('tx_gso_segments')} segments of {d['tx_frames']} frames")
# Receive coalescing (GUEST_TSO4 bit 7, GUEST_TSO6 bit 8): the guest's driver takes GSO
# frames, and at MTU 1500 passt's segments of the reverse test were merged into them (at
# 65520 a segment fills a GSO frame alone: merging has nothing to do).
check(acked & (3 << 7) == 3 << 7, f"GUEST_TSO4 and GUEST_TSO6 negotiated (features {acked:#x})")
if mtu == 1500:
    check(d.get("rx_gso_frames", 0) > 0 and d.get("rx_coalesced_segments", 0) >= 2 * d.get("rx_gso_frames", 0),
          f"the daemon merged segments for the guest: {d.get('rx_coalesced_segments')} proxy frames into {d.get('rx_gso_frames')} GSO frames")
check(d["drops"]["total"] == 0, f"no frames dropped ({d['drops']})")
if "--mtu" in args and int(args[args.index("--mtu") + 1]) > 9000:
    check(d.get("rx_direct", 0) > 0, f"frames read straight into the guest at MTU {args[args.index('--mtu') + 1]}: rx_direct {d.get('rx_direct')}")
check(summary["retransmits"] is not None, f"retransmits reported ({summary['retransmits']})")
# A guest kernel that hangs on its way down after reporting is the guest's problem, not the
# device's (the runner stops QEMU after a grace period): shown, not failed.
shutdown = summary.get("guest_shutdown", "clean")
if "--guest-linger" in sys.argv[2:]:
    check(shutdown.startswith("hung"), f"a guest that does not power off is stopped and reported: {shutdown.splitlines()[0]!r}")
    check(summary["wall_s"] < 120, f"... without waiting out the run's budget (QEMU ran {summary['wall_s']:.0f} s)")
else:
    print(("ok   " if shutdown == "clean" else "WARN ") + "guest shutdown: " + shutdown.splitlines()[0])

if tracer == "bpftrace":
    counts = {}
    with open(summary["trace"]) as f:
        header = None
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            if header is None:
                if line.startswith("ts_ns,"):
                    header = line.strip().split(",")
                continue
            probe = line.split(",", 3)[2]
            counts[probe] = counts.get(probe, 0) + 1
    check(header is not None, "trace has the CSV header")
    check(counts.get("tx_frame", 0) > 0 and counts.get("rx_frame", 0) > 0,
          f"trace has tx_frame ({counts.get('tx_frame', 0)}) and rx_frame ({counts.get('rx_frame', 0)}) rows")
    check(counts.get("tx_frame") == d["tx_frames"], f"tx_frame rows {counts.get('tx_frame')} == daemon tx_frames {d['tx_frames']}")
    check(counts.get("rx_frame") == d["rx_frames"], f"rx_frame rows {counts.get('rx_frame')} == daemon rx_frames {d['rx_frames']}")
    check(counts.get("enobufs_begin", 0) == d["episodes"], f"enobufs_begin rows {counts.get('enobufs_begin', 0)} == daemon episodes {d['episodes']}")
    import subprocess
    analyze = os.environ["ANALYZE"]
    if os.path.exists(analyze):
        rep = subprocess.run([analyze, "report", summary["trace"]], capture_output=True, text=True)
        first = (rep.stdout.splitlines() or [""])[0]
        # A run may have no episode at all ("trace: 0 events"); the frame totals are always there.
        frames = f"Frames: tx {d['tx_frames']} ("
        check(rep.returncode == 0 and frames in rep.stdout, f"analyze reads the trace: {first!r}, {frames!r}...")

if tracer == "syscalls":
    import subprocess
    analyze = os.environ["ANALYZE"]
    # Bytes written but never read are what sat in the socket when the reader exited: under
    # TCG the guest drains slowly, and a run here left 5.9 MB from passt to the daemon when
    # iperf3's reverse test ended. A unix stream socket takes a write while the bytes queued
    # are below the sender's SO_SNDBUF (at most 2 x wmem_max), and one write may add up to
    # half of that: 3 x wmem_max bounds it.
    inflight = 3 * int(open("/proc/sys/net/core/wmem_max").read()) + 65536
    def capture_frames(c):
        csv = c["csv"]
        ok = os.path.exists(csv)
        text = open(csv).read() if ok else ""
        check(ok and "\nts_ns,tid,probe," in text, f"{c['name']} capture {csv} exists with the CSV header")
        check("# warning: the tracer lost" not in text, f"{c['name']} capture lost no records")
        rep = subprocess.run([analyze, "report", "--format", "json", csv], capture_output=True, text=True)
        j = json.loads(rep.stdout) if rep.returncode == 0 else {}
        bad = j.get("input", {}).get("bad_lines")
        check(rep.returncode == 0 and bad == 0, f"analyze reads the {c['name']} capture: exit {rep.returncode}, bad lines {bad} {rep.stderr.strip()[:200]}")
        check(c["report"].startswith(f"{c['name']}: ") and "Frames: tx" in c["report"], f"vnet-vm printed analyze report for {c['name']}: {c['report'].splitlines()[0]!r}")
        return j.get("frames", {}), j.get("total", 0)
    for prefix, peer in (("", "daemon"), ("baseline_", "qemu")):
        caps = {c["name"]: c for c in summary.get(prefix + "captures", [])}
        run_name = prefix.rstrip("_") or "vhost"
        check(sorted(caps) == sorted(["passt", peer]), f"{run_name} run: captures of passt and {peer} ({sorted(caps)})")
        if sorted(caps) != sorted(["passt", peer]):
            continue
        p, _ = capture_frames(caps["passt"])
        q, episodes = capture_frames(caps[peer])
        if not p or not q:
            continue
        # Both ends of one socket: what one side wrote the other read, but for bytes still
        # in the socket when a side exited.
        for a, b, what in ((p, q, f"passt -> {peer}"), (q, p, f"{peer} -> passt")):
            diff = a["tx_bytes"] - b["rx_bytes"]
            check(0 <= diff <= inflight, f"{run_name} run: {what}: written {a['tx_bytes']}, read {b['rx_bytes']} (in flight at the end: {diff} <= {inflight})")
        t = {x["name"]: x for x in summary[prefix + "tests"]}
        # (the receivers' counts, as above)
        sent, received = t["fwd"]["fwd"]["bytes_received"], t["rev"]["rev"]["bytes_received"]
        check(p["rx_bytes"] >= sent and p["tx_bytes"] >= received,
              f"{run_name} run: the guest's iperf3 payload crossed the traced socket (passt read {p['rx_bytes']} >= {sent} sent, wrote {p['tx_bytes']} >= {received} received)")
        if peer == "daemon":
            # The daemon's own counters are frames; on the stream each carries a 4-byte length.
            wire_tx = d["tx_bytes"] + 4 * d["tx_frames"]
            wire_rx = d["rx_bytes"] + 4 * d["rx_frames"]
            check(0 <= q["tx_bytes"] - wire_tx <= 65540, f"daemon's writes {q['tx_bytes']} = its tx_bytes + 4 x tx_frames {wire_tx} (but a frame cut off at the end)")
            check(0 <= q["rx_bytes"] - wire_rx <= inflight, f"daemon's reads {q['rx_bytes']} cover its rx_bytes + 4 x rx_frames {wire_rx}")
            print(f"info daemon episodes: its counter {d['episodes']}, the syscall capture {episodes}")

# Nothing left behind: every child of the run had $out (sockets, console, trace) or the
# iperf3 port in its command line.
marker = out_dir
port = f"-p {summary['iperf3_port']}"
left = []
me = {str(os.getpid()), str(os.getppid())}
for pid in filter(str.isdigit, os.listdir("/proc")):
    if pid in me:
        continue
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        continue
    if marker in cmd or ("iperf3" in cmd and port in cmd):
        left.append(f"{pid}: {cmd}")
check(not left, f"no leftover processes {left}")
if fail:
    sys.exit(1)
EOF
}

# newer_kernel: downloads Debian 13's current cloud kernel package from the mirror the
# machine's own apt entry names (checked against the suite's SHA256), into the image cache
# so local reruns reuse it; prints its path.
newer_kernel() {
  local cache=${CARGO_TARGET_DIR:-target}/vnet-vm/debs src=/etc/apt/sources.list.d/debian.sources mirror=""
  [ -f "$src" ] && mirror=$(awk '/^URIs:/ {print $2; exit}' "$src")
  [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  mkdir -p "$cache"
  python3 - "$mirror" "$cache" <<'PY'
import hashlib, lzma, os, re, sys, urllib.request
mirror, cache = sys.argv[1].rstrip("/"), sys.argv[2]
index = lzma.decompress(urllib.request.urlopen(f"{mirror}/dists/trixie/main/binary-amd64/Packages.xz", timeout=120).read()).decode()
best = None
for stanza in index.split("\n\n"):
    f = dict(re.findall(r"^([A-Za-z0-9-]+): (.*)$", stanza, re.M))
    if re.fullmatch(r"linux-image-[0-9.+a-z-]+-cloud-amd64", f.get("Package", "")) and "-unsigned" not in f["Package"]:
        key = [int(x) for x in re.findall(r"\d+", f["Version"])]
        if best is None or key > best[0]:
            best = (key, f)
if best is None:
    sys.exit("no linux-image-*-cloud-amd64 in trixie's Packages")
f = best[1]
path = os.path.join(cache, os.path.basename(f["Filename"]))
if not (os.path.exists(path) and hashlib.sha256(open(path, "rb").read()).hexdigest() == f["SHA256"]):
    data = urllib.request.urlopen(f"{mirror}/{f['Filename']}", timeout=300).read()
    if hashlib.sha256(data).hexdigest() != f["SHA256"]:
        sys.exit(f"{f['Filename']}: SHA256 differs from trixie's Packages")
    open(path + ".tmp", "wb").write(data)
    os.replace(path + ".tmp", path)
print(path)
PY
}

# A tracer without root or without bpftrace: one line naming the flag, exit 2, nothing booted.
bad_tracer_use() { # expected-message-part command...
  local want=$1 rc=0; shift
  "$@" > "$out/bad.out" 2> "$out/bad.err" || rc=$?
  if [ $rc = 2 ] && [ "$(wc -l < "$out/bad.err")" = 1 ] && grep -q -- "$want" "$out/bad.err"; then
    echo "ok   $(cat "$out/bad.err")"
  else
    echo "FAIL vnet-vm $want: exit $rc, stderr:"; cat "$out/bad.err"; exit 1
  fi
}
# Only without vnet-systrace in this checkout: built, it is enough for --tracer syscalls
# (vnet-vm finds it in target/release whatever PATH says).
if [ ! -x target/release/vnet-systrace ]; then
  bad_tracer_use "--tracer syscalls needs bpftrace" env PATH=/nonexistent "$bin/vnet-vm" --tracer syscalls
fi
cp "$bin/vnet-vm" "$out/vnet-vm" && chmod 755 "$out/vnet-vm"   # nobody may not reach target/
bad_tracer_use "--tracer syscalls needs root" setpriv --reuid=65534 --regid=65534 --clear-groups "$out/vnet-vm" --tracer syscalls
rm -f "$out/vnet-vm"

# q35 + virtio-net-pci under bpftrace, then -M microvm + virtio-net-device (virtio-mmio).
run pc --tests fwd,rev --seconds "$SECONDS_PER_TEST" "${tracer[@]}"
# QEMU itself and passt (baseline), the daemon and passt (vhost), each captured from outside
# by probes/syscalls.bt: the two ends of the passt socket must agree on the bytes.
if [ ${#tracer[@]} -gt 0 ]; then
  run syscalls --tracer syscalls --baseline --tests fwd,rev --seconds 2
fi
# --rounds: each round boots both devices into its own directory (the baseline first in
# even rounds), and one JSON object at the end carries every round and each figure's
# median and range over them.
rounds_dir="$out/rounds"; mkdir -p "$rounds_dir"
echo "vm.sh: rounds: vnet-vm --rounds 2 --baseline --tests fwd --seconds 1"
TMPDIR="$out/tmp" timeout --kill-after=10 240 "$bin/vnet-vm" --rounds 2 --baseline --tests fwd --seconds 1 \
  --json --out "$rounds_dir" >"$rounds_dir/stdout.json" 2>"$rounds_dir/runner.log" ||
  { echo "vm.sh: rounds: vnet-vm failed:"; cat "$rounds_dir/runner.log"; exit 1; }
python3 - "$rounds_dir" <<'EOF'
import json, os, sys
d = sys.argv[1]
fail = []
def check(cond, msg):
    print(("ok   " if cond else "FAIL ") + msg)
    if not cond:
        fail.append(msg)
s = json.load(open(os.path.join(d, "stdout.json")))
rounds = s.get("rounds", [])
check(len(rounds) == 2, f"rounds: two rounds in the JSON ({len(rounds)})")
for k, r in enumerate(rounds, 1):
    path = os.path.join(d, f"round-{k}", "summary.json")
    check(os.path.isfile(path) and json.load(open(path)) == r, f"rounds: {path} is round {k} of the JSON")
    check((r.get("ratio_fwd") or 0) > 0, f"rounds: round {k} has a forward ratio ({r.get('ratio_fwd')})")
ratios = sorted(r.get("ratio_fwd") or 0 for r in rounds)
over = s.get("over_rounds", {}).get("ratio_fwd", {})
check(over.get("rounds") == 2 and abs(over.get("median", -1) - sum(ratios) / 2) < 1e-9
      and over.get("min") == ratios[0] and over.get("max") == ratios[-1],
      f"rounds: the forward ratio's median and range over the rounds {over} from {ratios}")
log = open(os.path.join(d, "runner.log")).read().splitlines()
order = [l.split()[1] for l in log if l.startswith("vnet-vm: ") and " run (logs in " in l]
check(order == ["vhost", "baseline", "baseline", "vhost"], f"rounds: boot order alternates {order}")
if fail:
    sys.exit(1)
EOF
# A round that fails keeps the rounds before it: a daemon that works once and then dies at
# start makes round 2 fail; the run exits 1 and its JSON still carries round 1.
flaky_dir="$out/rounds-failing"; mkdir -p "$flaky_dir"
cat > "$flaky_dir/daemon" <<EOF2
#!/bin/sh
if [ -e "$flaky_dir/started" ]; then echo "stand-in daemon: dying" >&2; exit 1; fi
touch "$flaky_dir/started"
exec "$(realpath "$bin/vnet-vhost")" "\$@"
EOF2
chmod +x "$flaky_dir/daemon"
echo "vm.sh: rounds: round 2 of 2 fails"
rc=0
TMPDIR="$out/tmp" timeout --kill-after=10 120 "$bin/vnet-vm" --rounds 2 --daemon "$flaky_dir/daemon" --tests fwd \
  --seconds 1 --json --out "$flaky_dir/out" >"$flaky_dir/stdout.json" 2>"$flaky_dir/runner.log" || rc=$?
python3 - "$flaky_dir" "$rc" <<'EOF'
import json, os, sys
d, rc = sys.argv[1], int(sys.argv[2])
fail = []
def check(cond, msg):
    print(("ok   " if cond else "FAIL ") + msg)
    if not cond:
        fail.append(msg)
check(rc == 1, f"rounds: a failed round exits 1 ({rc})")
try:
    s = json.load(open(os.path.join(d, "stdout.json")))
except ValueError as e:
    s = {}
    check(False, f"rounds: the JSON of a failed run parses ({e})")
check(len(s.get("rounds", [])) == 1 and s.get("failed_round") == 2,
      f"rounds: round 1 kept, round 2 named as failed ({len(s.get('rounds', []))} rounds, failed_round {s.get('failed_round')})")
check("exited before it was ready" in s.get("error", "") and "stand-in daemon: dying" in s.get("error", ""),
      f"rounds: the error says the daemon died and shows its log ({s.get('error')!r})")
saved = json.load(open(os.path.join(d, "out", "summary.json")))
check(saved == s, "rounds: OUT/summary.json is the printed JSON")
log = open(os.path.join(d, "runner.log")).read()
check("round 2 of 2:" in log, "rounds: the error line names the round")
if fail:
    sys.exit(1)
EOF
# microvm, whose guest then lingers instead of powering off: the runner must stop it. Its
# daemon sends one frame per call (the other runs batch), which the check below counts.
run microvm --machine microvm --tests fwd,rev --seconds 2 --guest-linger 600 --daemon-arg=--one-frame-per-call
# Debian 13's kernel: the image builder must unpack its compressed modules.
deb=$(newer_kernel) || { echo "vm.sh: could not fetch Debian 13's cloud kernel"; exit 1; }
dpkg-deb -c "$deb" > "$out/trixie-files.txt"
grep -q '/virtio_net\.ko\.xz$' "$out/trixie-files.txt" ||
  { echo "vm.sh: $deb has no virtio_net.ko.xz: this run would not test compressed modules"; exit 1; }
# At MTU 65520 passt sends the guest frames of up to 64 KiB, read from the stream straight
# into the guest's buffers (rx_direct): this run checks that path against a real driver.
run trixie --kernel-deb "$deb" --tests fwd,rev --seconds 2 --mtu 65520
grep -q '"kernel": *"linux-image-[^"]*deb13' "$out/trixie/stdout.json" ||
  { echo "vm.sh: trixie run did not boot the Debian 13 kernel:"; grep '"kernel"' "$out/trixie/stdout.json"; exit 1; }
echo "ok   guest booted $(basename "$deb") with its .ko.xz modules"
# The script the README's real-VM wake-up counts come from: a run must show the worker
# waking QEMU (the guest's interrupts) and passt (the frames it sent), and its usage errors
# exit 2.
if command -v perf >/dev/null; then
  echo "vm.sh: worker-wakes.sh"
  rc=0; bash device/vm/benches/worker-wakes.sh --rounds 2 2> "$out/wakes.err" || rc=$?
  [ $rc -eq 2 ] && [ "$(wc -l < "$out/wakes.err")" -eq 1 ] ||
    { echo "vm.sh: worker-wakes.sh --rounds 2: exit $rc, stderr: $(cat "$out/wakes.err")"; exit 1; }
  TMPDIR="$out/tmp" VNET_VM="$bin/vnet-vm" WAKES_OUT="$out/wakes" timeout --kill-after=10 240 \
    bash device/vm/benches/worker-wakes.sh --tests fwd,rev --seconds 2 > "$out/wakes.txt" 2>&1 ||
    { echo "vm.sh: worker-wakes.sh failed:"; cat "$out/wakes.txt"; exit 1; }
  cat "$out/wakes.txt"
  python3 - "$out/wakes.txt" <<'EOF' || exit 1
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"wake-ups the worker gave per frame: (\d\.\d+): (.*)$", text, re.M)
per = dict((k, float(v)) for k, v in re.findall(r"([^,]+?) (\d\.\d+)(?:, |$)", m.group(2))) if m else {}
ok = bool(m) and any(k.startswith("qemu") for k in per) and any(k.startswith("passt") for k in per) \
    and abs(sum(per.values()) - float(m.group(1))) < 0.0001 * (len(per) + 1)
print(("ok   " if ok else "FAIL ") + f"worker-wakes.sh: the worker woke QEMU and passt, and the parts add up ({per})")
sys.exit(0 if ok else 1)
EOF
else
  echo "vm.sh: worker-wakes.sh skipped: perf is not installed"
fi
echo "vm.sh: ok"
