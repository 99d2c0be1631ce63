//! Property tests: random descriptor chains (good and bad, any split) and random proxy
//! behaviour (how much it reads per step, injected ENOBUFS, datagram or stream) never
//! panic the device and never lose, duplicate or reorder a frame.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{frame, tx_segs, DriverQueue, RxAssembler, Seg};
use proptest::prelude::*;
use vnet_device::backend::{
    Backend, BackendError, BackendOptions, BatchWrite, FaultConfig, FrameRef, Frames, ReadStatus,
    SyscallCounts, TxList, UnixGram, UnixStreamBackend, WriteStatus,
};
use vnet_device::device::{NetDevice, RxPass, TxPass};
use vnet_device::frame::MAX_IOV;
use vnet_device::metrics::Metrics;
use vnet_device::net::{DEVICE_FEATURES, FEATURE_EVENT_IDX, MAX_FRAME, NET_HDR_LEN};
use vnet_device::notify::Notifier;

#[derive(Debug, Clone)]
enum TxChain {
    Good { len: usize, cuts: Vec<usize> },
    TooShort(u32),
    OutOfBounds,
    WriteOnly,
}

fn tx_chain() -> impl Strategy<Value = TxChain> {
    prop_oneof![
        6 => (1usize..3000, prop::collection::vec(100usize..2000, 1..4)).prop_map(|(len, cuts)| TxChain::Good { len, cuts }),
        // Many small pieces: around the most one gathered send takes (then copied).
        2 => (1usize..400, prop::collection::vec(8usize..24, 1..4)).prop_map(|(len, cuts)| TxChain::Good { len, cuts }),
        1 => (0u32..=NET_HDR_LEN as u32).prop_map(TxChain::TooShort),
        1 => Just(TxChain::OutOfBounds),
        1 => Just(TxChain::WriteOnly),
    ]
}

#[derive(Debug, Clone)]
enum Proxy {
    Gram,
    Stream { sndbuf: usize },
}

fn proxy() -> impl Strategy<Value = Proxy> {
    prop_oneof![
        Just(Proxy::Gram),
        (4096usize..65536).prop_map(|sndbuf| Proxy::Stream { sndbuf })
    ]
}

enum Peer {
    Gram(UnixDatagram),
    Stream {
        sock: UnixStream,
        wire: Vec<u8>,
        rbuf: Vec<u8>,
        out: Vec<u8>,
    },
}

impl Peer {
    /// Reads up to `n` datagrams / `n * 1000` stream bytes; returns complete frames.
    fn read(&mut self, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        match self {
            Peer::Gram(s) => {
                let mut buf = vec![0u8; MAX_FRAME];
                for _ in 0..n {
                    match s.recv(&mut buf) {
                        Ok(k) => out.push(buf[..k].to_vec()),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            Peer::Stream {
                sock, wire, rbuf, ..
            } => {
                let want = n * 1000;
                if want > 0 {
                    rbuf.resize(want, 0);
                    match sock.read(rbuf) {
                        Ok(k) => wire.extend_from_slice(&rbuf[..k]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                while wire.len() >= 4 {
                    let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
                    if wire.len() < 4 + len {
                        break;
                    }
                    out.push(wire[4..4 + len].to_vec());
                    wire.drain(..4 + len);
                }
            }
        }
        out
    }

    /// Offers a frame; false when the proxy cannot take it now (try again later).
    fn send(&mut self, f: &[u8]) -> bool {
        match self {
            Peer::Gram(s) => match s.send(f) {
                Ok(_) => true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(e) => panic!("{e}"),
            },
            // Stream bytes queue up in `out` and go out as the socket takes them, in
            // whatever pieces it takes, so the device sees frames split anywhere.
            Peer::Stream { out, .. } => {
                if out.len() > 100_000 {
                    return false;
                }
                out.extend_from_slice(&(f.len() as u32).to_be_bytes());
                out.extend_from_slice(f);
                true
            }
        }
    }

    /// Pushes queued stream bytes, at most `max` per call, never blocking.
    fn flush(&mut self, max: usize) {
        if let Peer::Stream { sock, out, .. } = self {
            let n = max.min(out.len());
            if n == 0 {
                return;
            }
            match sock.write(&out[..n]) {
                Ok(k) => drop(out.drain(..k)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
}

fn connect(p: &Proxy) -> (Box<dyn Backend>, Peer) {
    match p {
        Proxy::Gram => {
            let (a, b) = common::gram_pair();
            b.set_nonblocking(true).unwrap();
            (
                Box::new(UnixGram::from_socket(a, &BackendOptions::default()).unwrap()),
                Peer::Gram(b),
            )
        }
        Proxy::Stream { sndbuf } => {
            let (a, b) = UnixStream::pair().unwrap();
            b.set_nonblocking(true).unwrap();
            let opts = BackendOptions {
                sndbuf: Some(*sndbuf),
                ..Default::default()
            };
            let peer = Peer::Stream {
                sock: b,
                wire: Vec::new(),
                rbuf: Vec::new(),
                out: Vec::new(),
            };
            (
                Box::new(UnixStreamBackend::from_socket(a, &opts).unwrap()),
                peer,
            )
        }
    }
}

fn segs_for(c: &TxChain, seq: u32) -> Vec<Seg> {
    match c {
        TxChain::Good { len, cuts } => tx_segs(&frame(seq, *len), cuts),
        TxChain::TooShort(n) => vec![Seg::read(&vec![0u8; *n as usize])],
        TxChain::OutOfBounds => {
            let mut s = tx_segs(&frame(seq, 100), &[NET_HDR_LEN]);
            s[1].addr = Some(common::MEM_END - 10);
            s
        }
        TxChain::WriteOnly => vec![Seg::read(&[0u8; NET_HDR_LEN]), Seg::write(100)],
    }
}

fn device(
    mem: &vm_memory::GuestMemoryMmap,
    rx: &DriverQueue,
    tx: &DriverQueue,
    be: Box<dyn Backend>,
    features: u64,
    faults: FaultConfig,
) -> (NetDevice, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let be = faults.wrap(be, metrics.clone());
    let dev = NetDevice::new(
        common::atomic(mem),
        rx.queue(),
        tx.queue(),
        Notifier::new().unwrap(),
        Notifier::new().unwrap(),
        features,
        be,
        metrics.clone(),
    );
    (dev, metrics)
}

/// What [`Stopper`] saw: every refusal (by itself or by the socket under it), as the
/// ordinal of the refused frame among the frames sent, and the calls that carried frames.
#[derive(Debug, Default)]
struct StopLog {
    refused: Vec<usize>,
    sent: usize,
    batches: Vec<usize>,
}

/// A real datagram backend whose batches stop where a script says: call i stops at frame
/// `script[i]` with EAGAIN (after sending the frames before it), as a socket filling up
/// mid-batch would; calls past the script, and stops past the batch's end, pass through.
struct Stopper {
    inner: UnixGram,
    script: Vec<Option<usize>>,
    calls: usize,
    log: Arc<Mutex<StopLog>>,
}

impl Backend for Stopper {
    fn raw_fd(&self) -> RawFd {
        self.inner.raw_fd()
    }
    fn kind(&self) -> &'static str {
        "stopper"
    }
    fn batch_limit(&self) -> usize {
        vnet_device::backend::MAX_BATCH_FRAMES
    }
    fn write_frame(&mut self, frame: FrameRef<'_>) -> Result<WriteStatus, BackendError> {
        let mut one = TxList::new();
        one.push_frame(frame);
        let out = self.write_frames(one.frames())?;
        Ok(out.stopped.unwrap_or(WriteStatus::Sent))
    }
    fn write_frames(&mut self, frames: Frames<'_>) -> Result<BatchWrite, BackendError> {
        let stop = self.script.get(self.calls).copied().flatten();
        self.calls += 1;
        let mut log = self.log.lock().unwrap();
        log.batches.push(frames.len());
        let upto = stop.map_or(frames.len(), |k| k.min(frames.len()));
        // The inner backend may take fewer per call (one, on macOS): offer it the rest.
        let mut out = BatchWrite {
            sent: 0,
            stopped: None,
        };
        while out.sent < upto && out.stopped.is_none() {
            let more = self.inner.write_frames(frames.range(out.sent..upto))?;
            out.sent += more.sent;
            out.stopped = more.stopped;
            if more.sent == 0 && more.stopped.is_none() {
                break;
            }
        }
        if out.sent == upto && upto < frames.len() {
            out.stopped = Some(WriteStatus::Blocked {
                errno: libc::EAGAIN,
                partial: false,
            });
        }
        log.sent += out.sent;
        if let Some(WriteStatus::Blocked { .. }) = out.stopped {
            let ordinal = log.sent;
            log.refused.push(ordinal);
        }
        Ok(out)
    }
    fn read_frame(&mut self, buf: &mut [u8]) -> Result<ReadStatus, BackendError> {
        self.inner.read_frame(buf)
    }
    fn syscalls(&self) -> SyscallCounts {
        self.inner.syscalls()
    }
}

fn stopper(script: Vec<Option<usize>>) -> (Box<dyn Backend>, UnixDatagram, Arc<Mutex<StopLog>>) {
    let (a, peer) = common::gram_pair();
    peer.set_nonblocking(true).unwrap();
    let log = Arc::new(Mutex::new(StopLog::default()));
    let be = Stopper {
        inner: UnixGram::from_socket(a, &BackendOptions::default()).unwrap(),
        script,
        calls: 0,
        log: log.clone(),
    };
    (Box::new(be), peer, log)
}

fn drain(peer: &UnixDatagram) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; MAX_FRAME];
    let mut out = Vec::new();
    loop {
        match peer.recv(&mut buf) {
            Ok(k) => out.push(buf[..k].to_vec()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return out,
            Err(e) => panic!("{e}"),
        }
    }
}

/// A batch of eight ready frames that stops at frame k, for every k: frames 0..k go out
/// and are used, frame k is the deferred frame with an episode of one failed send, the rest
/// stay in the ring; the retry sends frame k and the rest in order and resolves the
/// episode. Each batch is one system call.
#[test]
fn batch_stopping_at_every_position_defers_exactly_that_frame() {
    const N: usize = 8;
    for k in 0..N {
        let mem = common::memory();
        let (rx, mut tx) = (DriverQueue::new(0, 16), DriverQueue::new(1, 64));
        let (be, peer, log) = stopper(vec![Some(k)]);
        let (mut dev, metrics) =
            device(&mem, &rx, &tx, be, DEVICE_FEATURES, FaultConfig::default());
        let frames: Vec<Vec<u8>> = (0..N).map(|i| frame(i as u32, 100 + i)).collect();
        for f in &frames {
            tx.add(&mem, &tx_segs(f, &[NET_HDR_LEN, 40])).unwrap();
        }
        assert_eq!(dev.process_tx().unwrap(), TxPass::Blocked, "k={k}");
        assert_eq!(
            drain(&peer),
            frames[..k],
            "k={k}: the frames before the stop, only"
        );
        assert_eq!(tx.take_used(&mem).len(), k, "k={k}");
        assert!(dev.tx_deferred());
        let m = metrics.snapshot();
        assert_eq!(
            (m.tx_frames, m.episodes, m.retries, m.open_episode),
            (k as u64, 1, 1, true),
            "k={k}"
        );
        assert_eq!(
            log.lock().unwrap().refused,
            [k],
            "the refused frame is frame k"
        );

        assert_eq!(dev.process_tx().unwrap(), TxPass::Idle, "k={k}");
        assert_eq!(
            drain(&peer),
            frames[k..],
            "k={k}: frame k, then the rest, in order"
        );
        assert_eq!(tx.take_used(&mem).len(), N - k, "k={k}");
        let m = metrics.snapshot();
        assert_eq!(
            (
                m.tx_frames,
                m.episodes,
                m.retries,
                m.resolved,
                m.open_episode
            ),
            (N as u64, 1, 1, 1, false),
            "k={k}"
        );
        // The refusal was the script's, not a system call; on Linux each batch was one
        // call (sendmmsg), elsewhere one call per frame.
        #[cfg(target_os = "linux")]
        assert_eq!(m.tx_syscalls, u64::from(k > 0) + 1, "k={k}");
        #[cfg(not(target_os = "linux"))]
        assert_eq!(m.tx_syscalls, N as u64, "k={k}");
        assert_eq!(log.lock().unwrap().batches, [N, N - k], "k={k}");
    }
}

/// A stream backend whose socket a test can make take at most N more bytes (then refuse
/// once with EAGAIN), and its peer.
fn limited_stream() -> (Box<dyn Backend>, Peer, Arc<AtomicUsize>) {
    let (a, b) = UnixStream::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    let mut be = UnixStreamBackend::from_socket(a, &BackendOptions::default()).unwrap();
    let limit = be.send_limit();
    let peer = Peer::Stream {
        sock: b,
        wire: Vec::new(),
        rbuf: Vec::new(),
        out: Vec::new(),
    };
    (Box::new(be), peer, limit)
}

/// Every complete frame the peer can read now.
fn drain_peer(peer: &mut Peer) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let got = peer.read(64);
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

/// The stream's batches (several length-prefixed frames per send), stopped by the socket
/// at every byte of the wire: the frames wholly written are used, the frame the stop falls
/// in is the deferred frame (partly written when the stop is inside it) with an episode of
/// one failed send, the frames after it stay in the ring; the retry resumes exactly there
/// and sends the rest, each frame once and in order.
#[test]
fn stream_batch_stopping_at_every_byte_defers_exactly_that_frame() {
    let lens = [60usize, 100, 7, 300, 20];
    let frames: Vec<Vec<u8>> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| frame(i as u32, l))
        .collect();
    let ends: Vec<usize> = lens
        .iter()
        .scan(0, |pos, l| {
            *pos += 4 + l;
            Some(*pos)
        })
        .collect();
    let total = *ends.last().unwrap();
    for cut in 0..total {
        let mem = common::memory();
        let (rx, mut tx) = (DriverQueue::new(0, 16), DriverQueue::new(1, 64));
        let (be, mut peer, limit) = limited_stream();
        let (mut dev, metrics) =
            device(&mem, &rx, &tx, be, DEVICE_FEATURES, FaultConfig::default());
        for f in &frames {
            tx.add(&mem, &tx_segs(f, &[NET_HDR_LEN, 40, 3])).unwrap();
        }
        limit.store(cut, Ordering::Relaxed);
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        let start = if whole == 0 { 0 } else { ends[whole - 1] };
        assert_eq!(dev.process_tx().unwrap(), TxPass::Blocked, "cut {cut}");
        assert_eq!(drain_peer(&mut peer), frames[..whole], "cut {cut}");
        assert_eq!(tx.take_used(&mem).len(), whole, "cut {cut}");
        assert_eq!(dev.tx_deferred_len(), Some(lens[whole]), "cut {cut}");
        let m = metrics.snapshot();
        assert_eq!(
            (
                m.tx_frames,
                m.episodes,
                m.retries,
                m.open_episode,
                m.partial_writes
            ),
            (whole as u64, 1, 1, true, u64::from(cut > start)),
            "cut {cut}"
        );
        // All in one pass of sends: the batch's bytes in one call, the refusal in another.
        assert_eq!(m.tx_syscalls, if cut == 0 { 0 } else { 1 }, "cut {cut}");

        assert_eq!(dev.process_tx().unwrap(), TxPass::Idle, "cut {cut}");
        assert_eq!(drain_peer(&mut peer), frames[whole..], "cut {cut}");
        assert_eq!(tx.take_used(&mem).len(), lens.len() - whole, "cut {cut}");
        let m = metrics.snapshot();
        assert_eq!(
            (m.tx_frames, m.episodes, m.resolved, m.open_episode),
            (lens.len() as u64, 1, 1, false),
            "cut {cut}"
        );
        assert!(!dev.tx_deferred());
    }
}

/// A stream peer (the proxy's end) and a device reading from it, with `bufs` RX buffers
/// of `buf_len` bytes posted.
fn stream_rx(
    mem: &vm_memory::GuestMemoryMmap,
    rx: &mut DriverQueue,
    tx: &DriverQueue,
    bufs: usize,
    buf_len: u32,
) -> (NetDevice, Arc<Metrics>, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    let be = Box::new(UnixStreamBackend::from_socket(a, &BackendOptions::default()).unwrap());
    let (dev, metrics) = device(mem, rx, tx, be, DEVICE_FEATURES, FaultConfig::default());
    for _ in 0..bufs {
        assert!(rx.add(mem, &[Seg::write(buf_len)]).is_some());
    }
    (dev, metrics, b)
}

fn wire(frames: &[Vec<u8>]) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|f| (f.len() as u32).to_be_bytes().into_iter().chain(f.clone()))
        .collect()
}

/// Large frames whose payload arrives after their length prefix are read from the socket
/// straight into the guest's buffers, one read per piece that arrives, and arrive intact
/// and in order among small ones copied the usual way.
#[test]
fn stream_rx_large_frames_are_read_straight_into_guest_buffers() {
    let mem = common::memory();
    let (mut rx, tx) = (DriverQueue::new(0, 64), DriverQueue::new(1, 16));
    let (mut dev, metrics, mut peer) = stream_rx(&mem, &mut rx, &tx, 64, 4096);
    let frames: Vec<Vec<u8>> = [3000usize, 60, 9000, 2048, 2047, 20000]
        .iter()
        .enumerate()
        .map(|(i, &l)| frame(i as u32, l))
        .collect();
    let w = wire(&frames);
    let mut asm = RxAssembler::default();
    // Dribble the wire in pieces that split prefixes and payloads; read after each.
    let mut pos = 0;
    for (i, piece) in [4usize, 1, 100, 2900, 3, 600, 7000]
        .iter()
        .cycle()
        .enumerate()
    {
        if pos == w.len() {
            break;
        }
        assert!(i < 1000);
        let n = (*piece).min(w.len() - pos);
        peer.write_all(&w[pos..pos + n]).unwrap();
        pos += n;
        dev.process_rx().unwrap();
        for u in rx.take_used(&mem) {
            asm.push(&mem, &u);
        }
    }
    assert_eq!(asm.frames, frames);
    let m = metrics.snapshot();
    assert_eq!(m.rx_frames, frames.len() as u64);
    // 3000, 9000, 2048 and 20000 each arrive after their prefix; 2047 is under the limit.
    assert_eq!(m.rx_direct, 4, "{m:?}");
    assert_eq!(m.drops.total, 0);
}

/// The proxy closes its end right after a whole frame, and in the middle of one (small,
/// and large enough to be read straight into the guest): the frames before the close
/// arrive, the close is reported as the proxy gone (by the pass after the one whose read
/// emptied the socket, as the worker runs on the hang-up event, or by that pass), and
/// reading again reports it again at once instead of waiting for an event that never
/// comes or spinning.
#[test]
fn stream_peer_closing_is_reported_not_waited_or_spun_on() {
    for (case, tail) in [
        ("after a whole frame", 0usize),
        ("mid small frame", 500),
        ("mid large frame", 5000),
    ] {
        let mem = common::memory();
        let (mut rx, tx) = (DriverQueue::new(0, 16), DriverQueue::new(1, 16));
        let (mut dev, metrics, mut peer) = stream_rx(&mem, &mut rx, &tx, 16, 8192);
        let first = frame(0, 1000);
        let mut w = wire(std::slice::from_ref(&first));
        if tail > 0 {
            let next = frame(1, tail);
            w.extend_from_slice(&(tail as u32).to_be_bytes());
            w.extend_from_slice(&next[..tail / 2]);
        }
        peer.write_all(&w).unwrap();
        drop(peer);
        let e = match dev.process_rx() {
            Err(e) => e,
            Ok(pass) => {
                assert_eq!(pass, RxPass::Idle, "{case}");
                dev.process_rx().unwrap_err()
            }
        }
        .to_string();
        assert!(e.contains("proxy is gone"), "{case}: {e}");
        assert_eq!(e.contains("middle of a frame"), tail > 0, "{case}: {e}");
        let mut asm = RxAssembler::default();
        for u in rx.take_used(&mem) {
            asm.push(&mem, &u);
        }
        assert_eq!(asm.frames, std::slice::from_ref(&first), "{case}");
        let calls = metrics.snapshot().rx_syscalls;
        assert!(calls <= 3, "{case}: {calls} reads");
        let again = dev.process_rx().unwrap_err().to_string();
        assert!(again.contains("proxy is gone"), "{case}: {again}");
        assert_eq!(
            metrics.snapshot().rx_syscalls,
            calls,
            "{case}: reported without reading"
        );
    }
}

/// Smallest RX buffer the RX property posts. A 128-descriptor ring of the smallest shape
/// (one buffer of this size, or this size plus half of it over two descriptors) must hold
/// the largest generated frame (20000 bytes plus the header): with smaller buffers a frame
/// is undeliverable by construction and the device rightly drops it, which
/// `frame_larger_than_the_whole_ring_is_dropped_and_the_next_delivered` checks.
const MIN_RX_BUF: u32 = 256;

#[test]
fn frame_larger_than_the_whole_ring_is_dropped_and_the_next_delivered() {
    let mem = common::memory();
    let (mut rx, tx) = (DriverQueue::new(0, 8), DriverQueue::new(1, 16));
    let (be, mut peer) = connect(&Proxy::Gram);
    let (mut dev, metrics) = device(&mem, &rx, &tx, be, DEVICE_FEATURES, FaultConfig::default());
    // Eight 112-byte buffers fill the ring: 896 bytes, never enough for 2012.
    for _ in 0..8 {
        assert!(rx
            .add(&mem, &[Seg::write(NET_HDR_LEN as u32 + 100)])
            .is_some());
    }
    let (big, small) = (frame(0, 2000), frame(1, 50));
    assert!(peer.send(&big));
    assert!(peer.send(&small));
    dev.process_rx().unwrap();
    let mut asm = RxAssembler::default();
    for u in rx.take_used(&mem) {
        assert!(u.len > 0, "no buffer is handed back empty");
        asm.push(&mem, &u);
    }
    assert_eq!(asm.frames, vec![small], "the frame that fits arrives, once");
    let m = metrics.snapshot();
    assert_eq!(m.drops.rx_no_room, 1, "{m:?}");
    assert_eq!(m.drops.total, 1, "{m:?}");
    assert_eq!(m.rx_frames, 2, "both were read from the proxy: {m:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn tx_random_chains_and_proxy_never_lose_or_duplicate(
        chains in prop::collection::vec(tx_chain(), 1..40),
        proxy in proxy(),
        reads in prop::collection::vec(0usize..4, 1..8),
        every in 0u32..5,
        burst in 1u32..4,
        event_idx in any::<bool>(),
    ) {
        let mem = common::memory();
        let (rx, mut tx) = (DriverQueue::new(0, 16), DriverQueue::new(1, 64));
        let (be, mut peer) = connect(&proxy);
        let features = if event_idx { DEVICE_FEATURES } else { DEVICE_FEATURES & !FEATURE_EVENT_IDX };
        let (mut dev, metrics) = device(&mem, &rx, &tx, be, features, FaultConfig { enobufs_every: every, enobufs_burst: burst });
        let expected: Vec<Vec<u8>> = chains.iter().enumerate().filter_map(|(i, c)| match c {
            TxChain::Good { len, .. } => Some(frame(i as u32, *len)),
            _ => None,
        }).collect();
        let bad = chains.len() - expected.len();
        // Chains with more frame-carrying descriptors than one sendmsg gathers.
        let copied = chains.iter().enumerate().filter(|(i, c)| {
            matches!(c, TxChain::Good { .. })
                && segs_for(c, *i as u32).iter().scan(0usize, |pos, s| {
                    *pos += s.len as usize;
                    Some(*pos > NET_HDR_LEN)
                }).filter(|&carries| carries).count() > MAX_IOV
        }).count();
        let (mut next, mut used, mut got) = (0usize, 0usize, Vec::new());
        let mut step = 0usize;
        while got.len() < expected.len() || used < chains.len() {
            step += 1;
            prop_assert!(step < 100_000, "no progress: got {} of {}, used {} of {}", got.len(), expected.len(), used, chains.len());
            while next < chains.len() && tx.add(&mem, &segs_for(&chains[next], next as u32)).is_some() {
                next += 1;
            }
            dev.process_tx().unwrap();
            // Never stall forever: a proxy that read nothing for a while reads one.
            let n = reads[step % reads.len()].max(usize::from(step % 7 == 0));
            got.extend(peer.read(n));
            used += tx.take_used(&mem).len();
        }
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(used, chains.len());
        let m = metrics.snapshot();
        prop_assert_eq!(m.rejected_chains as usize, bad);
        prop_assert_eq!(m.tx_frames as usize, expected.len());
        prop_assert_eq!(m.tx_copied as usize, copied);
        prop_assert_eq!(m.resolved, m.episodes);
        prop_assert!(!m.open_episode);
        prop_assert!(m.retries >= m.injected_faults);
    }

    /// Batches stopped at random positions (by script, by a socket the proxy reads
    /// slowly, by injected ENOBUFS), with bad chains among good ones: every frame arrives
    /// once and in order, each refusal counts as one failed send of the frame it stopped
    /// at, and each frame refused at least once is one episode.
    #[test]
    fn tx_batches_stopping_anywhere_keep_order_and_episodes(
        chains in prop::collection::vec(tx_chain(), 1..60),
        script in prop::collection::vec(prop::option::weighted(0.7, 0usize..12), 0..30),
        reads in prop::collection::vec(0usize..6, 1..8),
        inject in any::<bool>(),
        event_idx in any::<bool>(),
    ) {
        let mem = common::memory();
        let (rx, mut tx) = (DriverQueue::new(0, 16), DriverQueue::new(1, 128));
        let (be, peer, log) = stopper(script);
        let features = if event_idx { DEVICE_FEATURES } else { DEVICE_FEATURES & !FEATURE_EVENT_IDX };
        let faults = FaultConfig { enobufs_every: if inject { 3 } else { 0 }, enobufs_burst: 2 };
        let (mut dev, metrics) = device(&mem, &rx, &tx, be, features, faults);
        let expected: Vec<Vec<u8>> = chains.iter().enumerate().filter_map(|(i, c)| match c {
            TxChain::Good { len, .. } => Some(frame(i as u32, *len)),
            _ => None,
        }).collect();
        let mut peer = Peer::Gram(peer);
        let (mut next, mut used, mut got, mut step) = (0usize, 0usize, Vec::new(), 0usize);
        while got.len() < expected.len() || used < chains.len() {
            step += 1;
            prop_assert!(step < 100_000, "no progress: got {} of {}", got.len(), expected.len());
            while next < chains.len() && tx.add(&mem, &segs_for(&chains[next], next as u32)).is_some() {
                next += 1;
            }
            dev.process_tx().unwrap();
            let n = reads[step % reads.len()].max(usize::from(step % 7 == 0));
            got.extend(peer.read(n));
            used += tx.take_used(&mem).len();
        }
        prop_assert_eq!(&got, &expected);
        let m = metrics.snapshot();
        let log = log.lock().unwrap();
        prop_assert_eq!(log.sent, expected.len());
        prop_assert_eq!(m.tx_frames as usize, expected.len());
        prop_assert_eq!(m.retries as usize, log.refused.len() + m.injected_faults as usize);
        prop_assert_eq!(m.resolved, m.episodes);
        prop_assert!(!m.open_episode);
        if !inject {
            let mut frames_refused = log.refused.clone();
            frames_refused.dedup();
            prop_assert_eq!(m.episodes as usize, frames_refused.len());
        }
    }

    /// The stream's batches stopped by the socket at random bytes, with bad chains among
    /// good ones and injected ENOBUFS: every frame arrives once and in order, every
    /// refusal is one failed send of the frame it stopped in, and every episode ends.
    #[test]
    fn tx_stream_batches_stopping_anywhere_keep_order_and_episodes(
        chains in prop::collection::vec(tx_chain(), 1..60),
        cuts in prop::collection::vec(prop::option::weighted(0.7, 0usize..6000), 1..30),
        reads in prop::collection::vec(0usize..6, 1..8),
        inject in any::<bool>(),
        event_idx in any::<bool>(),
    ) {
        let mem = common::memory();
        let (rx, mut tx) = (DriverQueue::new(0, 16), DriverQueue::new(1, 128));
        let (be, mut peer, limit) = limited_stream();
        let features = if event_idx { DEVICE_FEATURES } else { DEVICE_FEATURES & !FEATURE_EVENT_IDX };
        let faults = FaultConfig { enobufs_every: if inject { 3 } else { 0 }, enobufs_burst: 2 };
        let (mut dev, metrics) = device(&mem, &rx, &tx, be, features, faults);
        let expected: Vec<Vec<u8>> = chains.iter().enumerate().filter_map(|(i, c)| match c {
            TxChain::Good { len, .. } => Some(frame(i as u32, *len)),
            _ => None,
        }).collect();
        let (mut next, mut used, mut got, mut step) = (0usize, 0usize, Vec::new(), 0usize);
        let mut limited = 0u64;
        while got.len() < expected.len() || used < chains.len() {
            step += 1;
            prop_assert!(step < 100_000, "no progress: got {} of {}", got.len(), expected.len());
            while next < chains.len() && tx.add(&mem, &segs_for(&chains[next], next as u32)).is_some() {
                next += 1;
            }
            if let Some(cut) = cuts[step % cuts.len()] {
                if limit.load(Ordering::Relaxed) == usize::MAX {
                    limit.store(cut, Ordering::Relaxed);
                    limited += 1;
                }
            }
            dev.process_tx().unwrap();
            let n = reads[step % reads.len()].max(usize::from(step % 7 == 0));
            got.extend(peer.read(n));
            used += tx.take_used(&mem).len();
        }
        prop_assert_eq!(&got, &expected);
        let m = metrics.snapshot();
        prop_assert_eq!(m.tx_frames as usize, expected.len());
        prop_assert_eq!(m.resolved, m.episodes);
        prop_assert!(!m.open_episode);
        // Each refusal is a limit reached or an injected fault (the socket itself, 208 KiB
        // by default, never fills here).
        prop_assert!(m.retries <= limited + m.injected_faults);
        prop_assert!(m.retries >= m.injected_faults);
    }

    #[test]
    fn rx_random_buffers_and_frames_arrive_once_in_order(
        lens in prop::collection::vec(1usize..20000, 1..30),
        bufs in prop::collection::vec((MIN_RX_BUF..5000, 1usize..3, any::<bool>()), 1..10),
        stream in any::<bool>(),
        bad_every in 0usize..6,
    ) {
        let mem = common::memory();
        let (mut rx, tx) = (DriverQueue::new(0, 128), DriverQueue::new(1, 16));
        let p = if stream { Proxy::Stream { sndbuf: 65536 } } else { Proxy::Gram };
        let (be, mut peer) = connect(&p);
        let (mut dev, metrics) = device(&mem, &rx, &tx, be, DEVICE_FEATURES, FaultConfig::default());
        let frames: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &l)| frame(i as u32, l)).collect();
        let mut asm = RxAssembler::default();
        let (mut sent, mut posted, mut step) = (0usize, 0usize, 0usize);
        let mut bad_posted = 0;
        while asm.frames.len() < frames.len() {
            step += 1;
            prop_assert!(step < 100_000, "no progress: {} of {}", asm.frames.len(), frames.len());
            if sent < frames.len() && peer.send(&frames[sent]) {
                sent += 1;
            }
            peer.flush(1 + (step * 7919) % 30000);
            // Post a few buffers of random shapes; now and then a bad one.
            let (len, ndesc, skip) = bufs[step % bufs.len()];
            if !skip || step % 5 == 0 {
                let bad = bad_every > 0 && posted % (bad_every + 7) == bad_every;
                let segs: Vec<Seg> = if bad {
                    vec![Seg::read(&[0u8; 64])]
                } else {
                    (0..ndesc).map(|k| Seg::write(if k == 0 { len } else { 1 + len / 2 })).collect()
                };
                if rx.add(&mem, &segs).is_some() {
                    posted += 1;
                    bad_posted += usize::from(bad);
                }
            }
            dev.process_rx().unwrap();
            for u in rx.take_used(&mem) {
                if u.len > 0 {
                    asm.push(&mem, &u);
                }
            }
        }
        prop_assert_eq!(&asm.frames, &frames);
        let m = metrics.snapshot();
        prop_assert_eq!(m.rejected_chains as usize, bad_posted);
        prop_assert_eq!(m.drops.total, 0);
        prop_assert_eq!(m.rx_frames as usize, frames.len());
    }
}
