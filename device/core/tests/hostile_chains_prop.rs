//! Fuzzing the guest side: random raw descriptor tables (loops, `next` past the table,
//! heads past the ring, lengths near u32::MAX, indirect and nested indirect tables,
//! write-only TX and read-only RX buffers) interleaved with good chains, written straight
//! into guest memory and handed to `NetDevice`. The device must never fail a pass or
//! panic, every good chain's frame must arrive exactly once and in order, every chain
//! whose head is a real descriptor must come back on the used ring exactly once, and the
//! reject counter must equal the number of bad chains.
//!
//! Bounded: 512 cases of at most 40 chains each per direction, well under a second in a
//! release build. The regression file beside this one keeps inputs that caught bugs.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use common::{frame, DriverQueue};
use proptest::prelude::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use vnet_device::device::{NetDevice, RxPass, TxPass};
use vnet_device::metrics::{Metrics, MetricsSnapshot};
use vnet_device::net::{DEVICE_FEATURES, FEATURE_MRG_RXBUF, NET_HDR_LEN};
use vnet_device::notify::Notifier;

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
const QSIZE: u16 = 16;
/// Largest RX frame sent; good RX buffers hold it with its header.
const RX_FRAME_MAX: usize = 1500;

/// One chain a (possibly broken) driver makes available.
#[derive(Debug, Clone)]
enum Chain {
    /// A well-formed chain: TX carries a `len`-byte frame cut into pieces of `cuts` bytes
    /// (header included); RX offers `cuts` writable buffers whose sum fits a frame.
    Good { len: usize, cuts: Vec<usize> },
    /// Head index `QSIZE + k`: names no descriptor.
    HeadPastRing(u16),
    /// `n` descriptors whose last points back at descriptor `back` of the chain.
    Loop { n: u16, back: u16 },
    /// `n` descriptors whose last has NEXT set with `next` past the table.
    NextPastTable { n: u16, next: u16 },
    /// A descriptor pointing at an indirect table (whose entry is indirect again when
    /// `nested`).
    Indirect { nested: bool },
    /// One descriptor `u32::MAX - k` bytes long.
    HugeLen(u32),
    /// A descriptor of the wrong direction (write-only in TX, read-only in RX).
    WrongDirection,
}

impl Chain {
    fn good(&self) -> bool {
        matches!(self, Chain::Good { .. })
    }

    /// The structure is broken (counted as guest_driver_error), not just the contents.
    fn driver_error(&self) -> bool {
        matches!(
            self,
            Chain::HeadPastRing(_)
                | Chain::Loop { .. }
                | Chain::NextPastTable { .. }
                | Chain::Indirect { .. }
        )
    }

    /// Descriptors of the table it occupies.
    fn descs(&self) -> u16 {
        match self {
            Chain::Good { cuts, .. } => cuts.len() as u16,
            Chain::HeadPastRing(_) => 0,
            Chain::Loop { n, .. } | Chain::NextPastTable { n, .. } => *n,
            Chain::Indirect { .. } | Chain::HugeLen(_) => 1,
            Chain::WrongDirection => 2,
        }
    }
}

fn bad_chain() -> impl Strategy<Value = Chain> {
    prop_oneof![
        (0u16..=u16::MAX - QSIZE).prop_map(Chain::HeadPastRing),
        (1u16..=4)
            .prop_flat_map(|n| (Just(n), 0..n))
            .prop_map(|(n, back)| Chain::Loop { n, back }),
        (1u16..=3, QSIZE..=u16::MAX).prop_map(|(n, next)| Chain::NextPastTable { n, next }),
        any::<bool>().prop_map(|nested| Chain::Indirect { nested }),
        (0u32..70_000).prop_map(Chain::HugeLen),
        Just(Chain::WrongDirection),
    ]
}

fn tx_chain() -> impl Strategy<Value = Chain> {
    prop_oneof![
        2 => (1usize..3000, prop::collection::vec(1usize..1200, 1..=4))
            .prop_map(|(len, cuts)| Chain::Good { len, cuts }),
        3 => bad_chain(),
    ]
}

fn rx_chain() -> impl Strategy<Value = Chain> {
    prop_oneof![
        // Buffers that together hold the largest frame and its header.
        2 => (1usize..=RX_FRAME_MAX, 1usize..=3).prop_map(|(len, n)| {
            let each = (NET_HDR_LEN + RX_FRAME_MAX).div_ceil(n);
            Chain::Good { len, cuts: vec![each; n] }
        }),
        3 => bad_chain(),
    ]
}

/// Splits chains into rounds that fit the table and the avail ring; RX rounds end on a
/// good chain (chains after the last frame of a round are only looked at when the next
/// frame arrives).
fn rounds(chains: &[Chain], end_on_good: bool) -> Vec<Vec<Chain>> {
    let mut out: Vec<Vec<Chain>> = Vec::new();
    let mut cur: Vec<Chain> = Vec::new();
    let mut descs = 0;
    for c in chains {
        if !cur.is_empty() && (descs + c.descs() > QSIZE || cur.len() as u16 == QSIZE) {
            out.push(std::mem::take(&mut cur));
            descs = 0;
        }
        descs += c.descs();
        cur.push(c.clone());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    if end_on_good {
        for r in &mut out {
            while r.last().is_some_and(|c| !c.good()) {
                r.pop();
            }
        }
        out.retain(|r| !r.is_empty());
    }
    out
}

struct Rig {
    mem: GuestMemoryMmap,
    q: DriverQueue,
    dev: NetDevice,
    peer: UnixDatagram,
    metrics: Arc<Metrics>,
}

fn rig(tx_side: bool, features: u64) -> Rig {
    let mem = common::memory();
    let (rx, tx) = (DriverQueue::new(0, QSIZE), DriverQueue::new(1, QSIZE));
    let (dev, peer, metrics) = common::gram_device(
        &mem,
        rx.queue(),
        tx.queue(),
        Notifier::new().unwrap(),
        features,
    );
    Rig {
        mem,
        q: if tx_side { tx } else { rx },
        dev,
        peer,
        metrics,
    }
}

impl Rig {
    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.q
            .put_raw_desc(&self.mem, i, Descriptor::new(addr, len, flags, next));
    }

    /// Writes `c` into the table from descriptor `first` on and makes it available.
    /// Returns its head if that names a descriptor. `dir` is WRITE for RX, 0 for TX;
    /// `bytes` fills a good TX chain.
    fn lay_out(&mut self, c: &Chain, first: u16, dir: u16, bytes: &[u8]) -> Option<u16> {
        let slot = |i: u16| self.q.slot_addr(i);
        match c {
            Chain::Good { cuts, .. } => {
                let mut pos = 0;
                for (k, &cut) in cuts.iter().enumerate() {
                    let i = first + k as u16;
                    let last = k + 1 == cuts.len();
                    let len = if dir == 0 {
                        // TX: the last piece takes the rest, whatever the cuts say.
                        let end = if last {
                            bytes.len()
                        } else {
                            (pos + cut).min(bytes.len())
                        };
                        let piece = &bytes[pos..end];
                        self.mem.write_slice(piece, GuestAddress(slot(i))).unwrap();
                        pos = end;
                        piece.len() as u32
                    } else {
                        cut as u32
                    };
                    let flags = dir | if last { 0 } else { NEXT };
                    self.desc(i, slot(i), len, flags, i + 1);
                }
            }
            Chain::HeadPastRing(k) => {
                self.q.publish_raw(&self.mem, QSIZE + k);
                return None;
            }
            Chain::Loop { n, back } => {
                for k in 0..*n {
                    let i = first + k;
                    let next = if k + 1 == *n { first + back } else { i + 1 };
                    self.desc(i, slot(i), 64, dir | NEXT, next);
                }
            }
            Chain::NextPastTable { n, next } => {
                for k in 0..*n {
                    let i = first + k;
                    let next = if k + 1 == *n { *next } else { i + 1 };
                    self.desc(i, slot(i), 64, dir | NEXT, next);
                }
            }
            Chain::Indirect { nested } => {
                let table = self.q.indirect_addr(first);
                let inner = Descriptor::new(slot(first), 2048, dir, 0);
                let entry = if *nested {
                    let deeper = self.q.indirect_addr(first) + 0x400;
                    self.mem.write_obj(inner, GuestAddress(deeper)).unwrap();
                    Descriptor::new(deeper, 16, INDIRECT, 0)
                } else {
                    inner
                };
                self.mem.write_obj(entry, GuestAddress(table)).unwrap();
                self.desc(first, table, 16, INDIRECT, 0);
            }
            Chain::HugeLen(k) => self.desc(first, slot(first), u32::MAX - k, dir, 0),
            Chain::WrongDirection => {
                // TX: header then a write-only buffer; RX: a read-only buffer first.
                let wrong = WRITE ^ dir;
                self.desc(
                    first,
                    slot(first),
                    NET_HDR_LEN as u32,
                    dir | NEXT,
                    first + 1,
                );
                self.desc(first + 1, slot(first + 1), 1514, wrong, 0);
            }
        }
        self.q.publish_raw(&self.mem, first);
        Some(first)
    }

    fn sent(&self) -> Vec<Vec<u8>> {
        common::recv_all(&self.peer)
    }

    fn m(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }
}

fn tx_bytes(seq: u32, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; NET_HDR_LEN];
    b.extend_from_slice(&frame(seq, len));
    b
}

fn check_counts(m: &MetricsSnapshot, chains: &[Chain]) -> Result<(), TestCaseError> {
    let bad = chains.iter().filter(|c| !c.good()).count() as u64;
    let driver = chains.iter().filter(|c| c.driver_error()).count() as u64;
    prop_assert_eq!(m.rejected_chains, bad, "{:?}", m);
    prop_assert_eq!(m.drops.guest_driver_error, driver, "{:?}", m);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn tx_bad_chains_are_rejected_and_good_ones_go_out_once_in_order(
        chains in prop::collection::vec(tx_chain(), 1..40),
    ) {
        let mut r = rig(true, DEVICE_FEATURES);
        let (mut want, mut got) = (Vec::new(), Vec::new());
        let mut seq = 0u32;
        let mut all = Vec::new();
        for round in rounds(&chains, false) {
            let mut heads = Vec::new();
            let mut first = 0u16;
            for c in &round {
                let bytes = match c {
                    Chain::Good { len, .. } => {
                        seq += 1;
                        want.push(frame(seq, *len));
                        tx_bytes(seq, *len)
                    }
                    _ => Vec::new(),
                };
                heads.extend(r.lay_out(c, first, 0, &bytes));
                first += c.descs();
            }
            let mut passes = 0;
            loop {
                let pass = r.dev.process_tx();
                prop_assert!(pass.is_ok(), "TX pass failed: {:?}", pass.err());
                got.extend(r.sent());
                if pass.unwrap() == TxPass::Idle {
                    break;
                }
                passes += 1;
                prop_assert!(passes < 1000, "TX never went idle");
            }
            let used = r.q.take_used_raw(&r.mem);
            let want_used: Vec<(u32, u32)> = heads.iter().map(|&h| (u32::from(h), 0)).collect();
            prop_assert_eq!(used, want_used, "every real head returned once, in order");
            all.extend(round);
        }
        prop_assert_eq!(got.len(), want.len());
        prop_assert!(got == want, "frames lost, duplicated, reordered or altered");
        let m = r.m();
        prop_assert_eq!(m.tx_frames as usize, want.len());
        check_counts(&m, &all)?;
    }

    #[test]
    fn rx_bad_chains_are_rejected_and_frames_fill_good_ones_once_in_order(
        chains in prop::collection::vec(rx_chain(), 1..40),
        mergeable in any::<bool>(),
    ) {
        let features = if mergeable { DEVICE_FEATURES } else { DEVICE_FEATURES & !FEATURE_MRG_RXBUF };
        let mut r = rig(false, features);
        let mut seq = 0u32;
        let mut all = Vec::new();
        let mut delivered = 0u64;
        for round in rounds(&chains, true) {
            let mut first = 0u16;
            // (head, the frame it must hold; None = rejected, length 0)
            let mut want = Vec::new();
            for c in &round {
                let head = r.lay_out(c, first, WRITE, &[]);
                if let (Some(h), Chain::Good { len, .. }) = (head, c) {
                    seq += 1;
                    let f = frame(seq, *len);
                    r.peer.send(&f).unwrap();
                    want.push((h, Some(f)));
                } else if let Some(h) = head {
                    want.push((h, None));
                }
                first += c.descs();
            }
            let mut passes = 0;
            loop {
                let pass = r.dev.process_rx();
                prop_assert!(pass.is_ok(), "RX pass failed: {:?}", pass.err());
                match pass.unwrap() {
                    RxPass::Idle => break,
                    RxPass::NoBuffers => prop_assert!(false, "a frame found no buffer"),
                    RxPass::More => {}
                }
                passes += 1;
                prop_assert!(passes < 1000, "RX never went idle");
            }
            let used = r.q.take_used_raw(&r.mem);
            prop_assert_eq!(used.len(), want.len(), "used {:?}", used);
            for ((id, len), (head, f)) in used.iter().zip(&want) {
                prop_assert_eq!(*id, u32::from(*head));
                match f {
                    None => prop_assert_eq!(*len, 0),
                    Some(f) => {
                        prop_assert_eq!(*len as usize, NET_HDR_LEN + f.len());
                        // Good buffers are contiguous slots of `each` bytes: read them back.
                        let mut bytes = Vec::new();
                        let mut left = *len as usize;
                        let mut i = *head;
                        while left > 0 {
                            let d: Descriptor = r.mem.read_obj(GuestAddress(
                                r.q.queue_desc_addr() + u64::from(i) * 16,
                            )).unwrap();
                            let n = left.min(d.len() as usize);
                            let mut b = vec![0u8; n];
                            r.mem.read_slice(&mut b, d.addr()).unwrap();
                            bytes.extend(b);
                            left -= n;
                            i = d.next();
                        }
                        prop_assert_eq!(u16::from_le_bytes([bytes[10], bytes[11]]), 1);
                        prop_assert!(bytes[NET_HDR_LEN..] == f[..], "frame {} altered", head);
                        delivered += 1;
                    }
                }
            }
            all.extend(round);
        }
        let m = r.m();
        prop_assert_eq!(m.rx_frames, delivered);
        prop_assert_eq!(m.drops.total - m.drops.guest_driver_error, 0, "{:?}", m);
        check_counts(&m, &all)?;
    }
}
