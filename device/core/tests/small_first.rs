//! `--retry-policy small-first`: while a frame is deferred, frames of other flows go ahead
//! of it; within a flow, and for frames whose flow is unknown, the order never changes.
//! A scripted datagram backend ([`Gate`]) refuses every frame larger than its "room", as
//! macOS refuses a datagram that does not fit the receiver's free space.

mod common;

use std::os::fd::RawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{tx_segs, DriverQueue};
use proptest::prelude::*;
use vnet_device::backend::{
    Backend, BackendError, BackendOptions, BatchWrite, FrameRef, Frames, ReadStatus, UnixGram,
    WriteStatus,
};
use vnet_device::device::{NetDevice, TxPass};
use vnet_device::metrics::{Metrics, MetricsSnapshot};
use vnet_device::net::NET_HDR_LEN;

/// Sends through a real datagram socket every frame no larger than `room`; refuses larger
/// ones with ENOBUFS (nothing sent), stopping the batch there.
struct Gate {
    inner: UnixGram,
    room: Arc<AtomicUsize>,
    whole: bool,
}

impl Backend for Gate {
    fn raw_fd(&self) -> RawFd {
        self.inner.raw_fd()
    }
    fn kind(&self) -> &'static str {
        "gate"
    }
    fn whole_frames(&self) -> bool {
        self.whole
    }
    fn batch_limit(&self) -> usize {
        vnet_device::backend::MAX_BATCH_FRAMES
    }
    fn write_frame(&mut self, frame: FrameRef<'_>) -> Result<WriteStatus, BackendError> {
        if frame.len() > self.room.load(Ordering::Relaxed) {
            return Ok(WriteStatus::Blocked {
                errno: libc::ENOBUFS,
                partial: false,
            });
        }
        self.inner.write_frame(frame)
    }
    fn write_frames(&mut self, frames: Frames<'_>) -> Result<BatchWrite, BackendError> {
        let mut sent = 0;
        for f in frames.iter() {
            match self.write_frame(f)? {
                WriteStatus::Sent => sent += 1,
                other => {
                    return Ok(BatchWrite {
                        sent,
                        stopped: Some(other),
                    })
                }
            }
        }
        Ok(BatchWrite {
            sent,
            stopped: None,
        })
    }
    fn read_frame(&mut self, buf: &mut [u8]) -> Result<ReadStatus, BackendError> {
        self.inner.read_frame(buf)
    }
}

const OPEN: usize = usize::MAX;

struct Rig {
    mem: vm_memory::GuestMemoryMmap,
    tx: DriverQueue,
    dev: NetDevice,
    peer: UnixDatagram,
    room: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

fn rig(small_first: bool, whole: bool, qsize: u16) -> Rig {
    let mem = common::memory();
    let (rx, tx) = (DriverQueue::new(0, 16), DriverQueue::new(1, qsize));
    let (a, peer) = common::gram_pair();
    peer.set_nonblocking(true).unwrap();
    let room = Arc::new(AtomicUsize::new(OPEN));
    let gate = Gate {
        inner: UnixGram::from_socket(a, &BackendOptions::default()).unwrap(),
        room: room.clone(),
        whole,
    };
    let metrics = Arc::new(Metrics::new());
    let mut dev = common::device(&mem, &rx, &tx, Box::new(gate), metrics.clone());
    dev.set_look_ahead(small_first);
    Rig {
        mem,
        tx,
        dev,
        peer,
        room,
        metrics,
    }
}

/// What a frame is: its flow (a UDP source port; `None` = a frame with no flow, an
/// unknown ethertype) and its number in ring order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tag {
    flow: Option<u16>,
    n: u32,
}

/// Ethernet + IPv4 + UDP from port `flow` (or, without a flow, ethertype 0x88b5), padded
/// to `len`; the frame's number follows the 42 header bytes.
fn frame(tag: Tag, len: usize) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    match tag.flow {
        Some(port) => {
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
            f.extend_from_slice(&((len - 14) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 2, 15, 10, 0, 2, 2]);
            f.extend_from_slice(&port.to_be_bytes());
            f.extend_from_slice(&[0x88, 0xb5]);
            f.extend_from_slice(&((len - 34) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        }
        None => {
            f.extend_from_slice(&[0x88, 0xb5]);
            f.resize(42, 0);
        }
    }
    f.extend_from_slice(&tag.n.to_be_bytes());
    f.resize(len.max(46), 0xa5);
    f
}

fn tag_of(f: &[u8]) -> Tag {
    let n = u32::from_be_bytes(f[42..46].try_into().unwrap());
    let flow = (f[12..14] == [0x08, 0x00]).then(|| u16::from_be_bytes([f[34], f[35]]));
    Tag { flow, n }
}

impl Rig {
    /// Opens the gate: the device sends everything it held back and goes idle.
    fn open_and_send(&mut self) {
        self.room.store(OPEN, Ordering::Relaxed);
        assert_eq!(self.dev.process_tx().unwrap(), TxPass::Idle);
    }

    /// Posts frames in order; returns their tags.
    fn post(&mut self, frames: &[(Option<u16>, usize)], first: u32) -> Vec<Tag> {
        frames
            .iter()
            .enumerate()
            .map(|(i, &(flow, len))| {
                let tag = Tag {
                    flow,
                    n: first + i as u32,
                };
                let f = frame(tag, len);
                self.tx
                    .add(&self.mem, &tx_segs(&f, &[NET_HDR_LEN, 20, 1 << 20]))
                    .expect("ring has room");
                tag
            })
            .collect()
    }

    fn received(&self) -> Vec<Tag> {
        let mut buf = vec![0u8; 70_000];
        let mut out = Vec::new();
        while let Ok(k) = self.peer.recv(&mut buf) {
            out.push(tag_of(&buf[..k]));
        }
        out
    }

    fn m(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }
}

const BIG: usize = 9000;
const SMALL: usize = 100;

#[test]
fn other_flows_go_ahead_and_each_flow_keeps_its_order() {
    let mut r = rig(true, true, 64);
    assert!(r.dev.tx_looks_ahead());
    r.room.store(1000, Ordering::Relaxed);
    let t = r.post(
        &[
            (Some(1), BIG),
            (Some(1), SMALL),
            (Some(2), SMALL),
            (Some(3), SMALL),
            (Some(2), SMALL),
        ],
        0,
    );
    assert_eq!(r.dev.process_tx().unwrap(), TxPass::Blocked);
    // Flow 1's small frame waits behind its big one; flows 2 and 3 go, in their order.
    assert_eq!(r.received(), [t[2], t[3], t[4]]);
    let used: Vec<u16> = r.tx.take_used(&r.mem).iter().map(|u| u.head).collect();
    assert_eq!(used.len(), 3, "the frames sent ahead are used at once");
    let m = r.m();
    assert_eq!(
        (m.tx_sent_ahead, m.tx_ahead_refused, m.episodes, m.retries),
        (3, 0, 1, 1)
    );
    // A kick-driven retry while still blocked sends nothing twice.
    let more = r.post(&[(Some(4), SMALL), (Some(1), SMALL)], 5);
    assert_eq!(r.dev.process_tx().unwrap(), TxPass::Blocked);
    assert_eq!(r.received(), [more[0]]);
    assert_eq!(r.tx.take_used(&r.mem).len(), 1);
    let m = r.m();
    assert_eq!((m.tx_sent_ahead, m.episodes, m.retries), (4, 1, 2));

    r.open_and_send();
    assert_eq!(r.received(), [t[0], t[1], more[1]]);
    assert_eq!(r.tx.take_used(&r.mem).len(), 3);
    let m = r.m();
    assert_eq!(
        (
            m.tx_frames,
            m.tx_sent_ahead,
            m.episodes,
            m.retries,
            m.resolved
        ),
        (7, 4, 1, 2, 1),
        "retries count the deferred frame's sends only"
    );
    assert!(!r.dev.tx_deferred());
}

/// Posts `frames` with room for none of them: nothing goes ahead of the first, and all
/// leave in ring order once the gate opens.
fn assert_none_goes_ahead(r: &mut Rig, frames: &[(Option<u16>, usize)]) {
    r.room.store(1000, Ordering::Relaxed);
    let t = r.post(frames, 0);
    assert_eq!(r.dev.process_tx().unwrap(), TxPass::Blocked);
    assert_eq!(r.received(), []);
    r.open_and_send();
    assert_eq!(r.received(), t);
    assert_eq!(r.m().tx_sent_ahead, 0);
}

#[test]
fn timer_and_stream_like_backends_never_reorder() {
    for (small_first, whole) in [(false, true), (true, false)] {
        let mut r = rig(small_first, whole, 64);
        assert!(!r.dev.tx_looks_ahead());
        assert_none_goes_ahead(
            &mut r,
            &[(Some(1), BIG), (Some(2), SMALL), (Some(3), SMALL)],
        );
    }
}

#[test]
fn frames_without_a_flow_are_never_passed_and_never_pass() {
    // A flowless frame behind the deferred one: what follows it stays behind it too; what
    // comes before it may still go.
    let mut r = rig(true, true, 64);
    r.room.store(1000, Ordering::Relaxed);
    let t = r.post(
        &[
            (Some(1), BIG),
            (Some(2), SMALL),
            (None, SMALL),
            (Some(3), SMALL),
        ],
        0,
    );
    assert_eq!(r.dev.process_tx().unwrap(), TxPass::Blocked);
    assert_eq!(r.received(), [t[1]]);
    r.open_and_send();
    assert_eq!(r.received(), [t[0], t[2], t[3]]);

    // A deferred frame with no flow: nothing passes it.
    let mut r = rig(true, true, 64);
    assert_none_goes_ahead(&mut r, &[(None, BIG), (Some(2), SMALL), (Some(3), SMALL)]);
}

#[test]
fn a_refused_frame_holds_its_flow_but_not_smaller_frames_of_others() {
    let mut r = rig(true, true, 64);
    r.room.store(1000, Ordering::Relaxed);
    let t = r.post(
        &[
            (Some(1), BIG),
            (Some(2), 5000),
            (Some(3), SMALL),
            (Some(2), SMALL),
            (Some(4), 6000),
        ],
        0,
    );
    assert_eq!(r.dev.process_tx().unwrap(), TxPass::Blocked);
    // Flow 2's big frame is refused (and so its small one waits); flow 4's frame, no
    // smaller than a refused one, is not even tried.
    assert_eq!(r.received(), [t[2]]);
    let m = r.m();
    assert_eq!((m.tx_sent_ahead, m.tx_ahead_refused, m.retries), (1, 1, 1));
    // More room: flow 2's frames go ahead (in order), flow 4's too; flow 1 still waits.
    r.room.store(8000, Ordering::Relaxed);
    assert_eq!(r.dev.process_tx().unwrap(), TxPass::Blocked);
    assert_eq!(r.received(), [t[1], t[3], t[4]]);
    r.open_and_send();
    assert_eq!(r.received(), [t[0]]);
    let m = r.m();
    assert_eq!(
        (m.tx_frames, m.tx_sent_ahead, m.resolved, m.retries),
        (5, 4, 1, 2)
    );
}

#[test]
fn only_frames_smaller_than_the_deferred_one_are_tried() {
    let mut r = rig(true, true, 64);
    r.room.store(1000, Ordering::Relaxed);
    let t = r.post(&[(Some(1), BIG), (Some(2), BIG), (Some(3), SMALL)], 0);
    assert_eq!(r.dev.process_tx().unwrap(), TxPass::Blocked);
    assert_eq!(r.received(), [t[2]]);
    assert_eq!(
        r.m().tx_ahead_refused,
        0,
        "flow 2's frame is not even tried"
    );
    r.open_and_send();
    assert_eq!(r.received(), [t[0], t[1]]);
}

#[test]
fn the_look_ahead_is_bounded() {
    // 70 frames of the deferred frame's own flow behind it on a 256-entry ring: 64 are
    // popped to wait behind it, the rest (and flow 2's frame after them) stay in the ring.
    let mut r = rig(true, true, 256);
    r.room.store(1000, Ordering::Relaxed);
    let mut frames = vec![(Some(1), BIG)];
    frames.extend(std::iter::repeat_n((Some(1), SMALL), 70));
    frames.push((Some(2), SMALL));
    let t = r.post(&frames, 0);
    assert_eq!(r.dev.process_tx().unwrap(), TxPass::Blocked);
    assert_eq!(r.received(), [], "flow 2's frame is past the look-ahead");
    r.room.store(OPEN, Ordering::Relaxed);
    let mut got = Vec::new();
    while r.dev.process_tx().unwrap() != TxPass::Idle {
        got.extend(r.received());
    }
    got.extend(r.received());
    assert_eq!(got, t);
}

/// Every frame leaves exactly once; frames of one flow leave in ring order; a frame with
/// no flow is neither passed nor passes; all chains come back used.
fn check_order(posted: &[Tag], got: &[Tag]) -> Result<(), TestCaseError> {
    let mut seen = got.iter().map(|t| t.n).collect::<Vec<_>>();
    seen.sort_unstable();
    prop_assert_eq!(seen, posted.iter().map(|t| t.n).collect::<Vec<_>>());
    let pos = |n: u32| got.iter().position(|t| t.n == n).unwrap();
    for (i, a) in posted.iter().enumerate() {
        for b in &posted[i + 1..] {
            let ordered = a.flow.is_none() || b.flow.is_none() || a.flow == b.flow;
            if ordered {
                prop_assert!(
                    pos(a.n) < pos(b.n),
                    "{:?} was passed by {:?} ({:?})",
                    a,
                    b,
                    got
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_flows_sizes_and_refusals_keep_every_frame_and_each_flow_in_order(
        frames in prop::collection::vec(
            (prop::option::weighted(0.85, 1u16..5), prop::sample::select(vec![60usize, 100, 1500, 9000, 65000])),
            1..120,
        ),
        rooms in prop::collection::vec(prop::sample::select(vec![0usize, 80, 1000, 2000, 10000, OPEN]), 1..40),
        chunk in 1usize..40,
    ) {
        let mut r = rig(true, true, 64);
        let mut posted = Vec::new();
        let mut got = Vec::new();
        let mut used = 0;
        let mut next = 0;
        let mut step = 0;
        while next < frames.len() || r.dev.tx_deferred() || used < posted.len() {
            let room = if step < rooms.len() { rooms[step] } else { OPEN };
            step += 1;
            prop_assert!(step < 10_000, "no progress");
            r.room.store(room, Ordering::Relaxed);
            let k = chunk.min(frames.len() - next).min(r.tx.free_descs() / 3);
            posted.extend(r.post(&frames[next..next + k], next as u32));
            next += k;
            r.dev.process_tx().unwrap();
            got.extend(r.received());
            used += r.tx.take_used(&r.mem).len();
        }
        check_order(&posted, &got)?;
        prop_assert_eq!(used, frames.len());
        let m = r.m();
        prop_assert_eq!(m.tx_frames, frames.len() as u64);
        prop_assert_eq!(m.episodes, m.resolved);
        prop_assert!(m.tx_sent_ahead <= m.tx_frames);
    }
}
