//! Checksum offload: with VIRTIO_NET_F_CSUM negotiated the device completes the TCP/UDP
//! checksum of every TX frame whose header says NEEDS_CSUM (the sum from `csum_start` to
//! the end, stored at `csum_start + csum_offset`, virtio spec 5.1.6.2) and sends it from
//! its own 2 bytes, never writing the guest's buffer; headers it cannot honour are
//! malformed chains. With GUEST_CSUM, RX headers say DATA_VALID.
//!
//! The reference checksum here is the plain word-by-word sum over the whole frame, not the
//! device's piecewise one.

mod common;

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::{cut_chain, reference_sum, DriverQueue, RxAssembler, Seg};
use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use vnet_device::backend::{BackendOptions, UnixStreamBackend};
use vnet_device::device::{NetDevice, RxPass, TxPass};
use vnet_device::metrics::Metrics;
use vnet_device::net::{
    TxHeader, DEVICE_FEATURES, FEATURE_CSUM, FEATURE_GUEST_CSUM, HDR_F_DATA_VALID,
    HDR_F_NEEDS_CSUM, NET_HDR_LEN,
};
use vnet_device::notify::Notifier;

const QSIZE: u16 = 256;

/// What the device must send for `frame` with a NEEDS_CSUM header (`start`, `field`): the
/// frame with the complement of the sum from `start` at `field` (0 sent as 0xffff).
fn expected(frame: &[u8], start: usize, field: usize) -> Vec<u8> {
    let c = match !reference_sum(&frame[start..]) {
        0 => 0xffff,
        c => c,
    };
    let mut out = frame.to_vec();
    out[field..field + 2].copy_from_slice(&c.to_be_bytes());
    out
}

fn needs(start: usize, offset: usize) -> TxHeader {
    TxHeader {
        flags: HDR_F_NEEDS_CSUM,
        gso_type: 0,
        csum_start: start as u16,
        csum_offset: offset as u16,
        ..TxHeader::default()
    }
}

struct Gram {
    mem: GuestMemoryMmap,
    rx: DriverQueue,
    tx: DriverQueue,
    dev: NetDevice,
    peer: std::os::unix::net::UnixDatagram,
    metrics: Arc<Metrics>,
}

fn gram(features: u64) -> Gram {
    let mem = common::memory();
    let (rx, tx) = (DriverQueue::new(0, QSIZE), DriverQueue::new(1, QSIZE));
    let (dev, peer, metrics) = common::gram_device(
        &mem,
        rx.queue(),
        tx.queue(),
        Notifier::new().unwrap(),
        features,
    );
    Gram {
        mem,
        rx,
        tx,
        dev,
        peer,
        metrics,
    }
}

impl Gram {
    /// Makes the chain available, runs TX until idle; returns the chain's used length
    /// and what the peer got.
    fn send(&mut self, segs: &[Seg]) -> (Vec<common::Used>, Vec<Vec<u8>>) {
        self.tx.add(&self.mem, segs).expect("room on the ring");
        while self.dev.process_tx().unwrap() != TxPass::Idle {}
        (self.tx.take_used(&self.mem), common::recv_all(&self.peer))
    }

    /// The chain's bytes in guest memory now (header included).
    fn guest_bytes(&self, u: &common::Used) -> Vec<u8> {
        let mut out = Vec::new();
        for &(addr, len) in &u.segs {
            let mut b = vec![0u8; len as usize];
            self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            out.extend(b);
        }
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random frames with a random checksum field, cut at random boundaries (header
    /// included; more than 32 pieces take the copy path): the device sends exactly the
    /// frame with the reference checksum in the field, the guest's buffer is unchanged,
    /// and when the field is at an even offset from `csum_start` (as TCP's and UDP's are)
    /// the sent range verifies (sums to 0xffff).
    #[test]
    fn tx_checksum_matches_the_reference_at_any_cuts(
        frame in prop::collection::vec(any::<u8>(), 2..4000),
        start in any::<prop::sample::Index>(),
        offset in any::<prop::sample::Index>(),
        cuts in prop::collection::vec(16usize..1500, 0..6),
        even in any::<bool>(),
    ) {
        let mut g = gram(DEVICE_FEATURES);
        let start = start.index(frame.len() - 1);
        let mut offset = offset.index(frame.len() - 1 - start);
        if even {
            offset &= !1;
        }
        let field = start + offset;
        let segs = cut_chain(&needs(start, offset), &frame, &cuts);
        let before: Vec<u8> = segs.iter().flat_map(|s| s.data.clone()).collect();
        let (used, sent) = g.send(&segs);
        prop_assert_eq!(used.len(), 1);
        prop_assert_eq!(sent.len(), 1);
        prop_assert_eq!(&sent[0], &expected(&frame, start, field));
        if offset % 2 == 0 {
            // The guest's value in the field stands for the pseudo-header sum, which a
            // receiver adds to the segment's: together they sum to 0xffff.
            let pseudo = u64::from(u16::from_be_bytes([frame[field], frame[field + 1]]));
            let mut s = u64::from(reference_sum(&sent[0][start..])) + pseudo;
            while s > 0xffff {
                s = (s & 0xffff) + (s >> 16);
            }
            prop_assert_eq!(s, 0xffff);
        }
        prop_assert_eq!(g.guest_bytes(&used[0]), before, "the guest's buffer was written");
        let m = g.metrics.snapshot();
        prop_assert_eq!((m.tx_frames, m.tx_csum_offload, m.rejected_chains), (1, 1, 0));
    }
}

/// A UDP/IPv4 frame as Linux hands it over with NEEDS_CSUM: the UDP checksum field holds
/// the pseudo-header sum (not complemented); the device's result makes it verify.
#[test]
fn udp_frame_with_pseudo_header_sum_verifies() {
    let mut g = gram(DEVICE_FEATURES);
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    let udp_len = 8 + payload.len();
    let mut f = vec![0u8; 14 + 20];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let (src, dst) = ([10, 0, 2, 15], [10, 0, 2, 2]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&dst);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&5201u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&reference_sum(&pseudo).to_be_bytes());
    f.extend_from_slice(&payload);
    // Header apart, then the linear part and a page fragment, as Linux lays it out.
    let (_, sent) = g.send(&cut_chain(&needs(34, 6), &f, &[NET_HDR_LEN, 42, 4096]));
    let got = &sent[0];
    assert_ne!(got[40..42], f[40..42], "checksum completed");
    let mut whole = pseudo.clone();
    whole.extend_from_slice(&got[34..]);
    assert_eq!(reference_sum(&whole), 0xffff, "UDP checksum verifies");
    assert_eq!(got[..40], f[..40]);
    assert_eq!(got[42..], f[42..]);
}

/// Headers the device cannot honour are malformed chains: returned unused (length 0),
/// counted as rejected chains and `tx_bad_chain` drops, never forwarded, and the valid
/// chains around them keep flowing in order.
#[test]
fn bad_offload_headers_are_rejected_and_counted() {
    let mut g = gram(DEVICE_FEATURES);
    let f = common::frame(1, 100);
    let gso = TxHeader {
        gso_type: 1, // VIRTIO_NET_HDR_GSO_TCPV4
        ..needs(34, 16)
    };
    let gso_plain = TxHeader { flags: 0, ..gso };
    let bad = [
        needs(99, 0),        // field's second byte past the end
        needs(0, 99),        // the same through the offset
        needs(100, 0),       // start at the end
        needs(65535, 65535), // far outside, no wrap-around
        gso,                 // segmentation, never offered
        gso_plain,           // ... even without NEEDS_CSUM
    ];
    let mut sent_all = Vec::new();
    let mut want = Vec::new();
    for (i, h) in bad.iter().enumerate() {
        let good = common::frame(10 + i as u32, 100);
        let (used, sent) = g.send(&cut_chain(h, &f, &[NET_HDR_LEN, 30]));
        assert_eq!(used.iter().map(|u| u.len).collect::<Vec<_>>(), [0], "{h:?}");
        assert!(sent.is_empty(), "{h:?} was forwarded");
        let (used, sent) = g.send(&cut_chain(&needs(98, 0), &good, &[7]));
        assert_eq!(used.len(), 1);
        sent_all.extend(sent);
        want.push(expected(&good, 98, 98));
    }
    assert_eq!(sent_all, want, "valid chains keep flowing, in order");
    let m = g.metrics.snapshot();
    assert_eq!(m.rejected_chains, bad.len() as u64);
    assert_eq!(m.drops.tx_bad_chain, bad.len() as u64);
    assert_eq!(m.drops.guest_driver_error, 0);
    assert_eq!((m.tx_frames, m.tx_csum_offload), (6, 6));
}

/// Without CSUM negotiated the header is not read: a frame marked NEEDS_CSUM goes out
/// unchanged, and a GSO type is not refused (as before offloads were offered).
#[test]
fn without_csum_negotiated_the_header_is_ignored() {
    let mut g = gram(DEVICE_FEATURES & !FEATURE_CSUM);
    let f = common::frame(3, 200);
    let (_, sent) = g.send(&cut_chain(&needs(20, 4), &f, &[5, 100]));
    assert_eq!(sent, std::slice::from_ref(&f));
    let gso = TxHeader {
        gso_type: 1,
        ..needs(65535, 65535)
    };
    let (used, sent) = g.send(&cut_chain(&gso, &f, &[]));
    assert_eq!((used.len(), sent), (1, vec![f]));
    let m = g.metrics.snapshot();
    assert_eq!((m.tx_csum_offload, m.rejected_chains), (0, 0));
}

/// A stream socket that takes a NEEDS_CSUM frame a few bytes at a time (stopping inside
/// and around the checksum field) resumes it exactly: the device's 2 bytes go out once,
/// in place.
#[test]
fn stream_partial_writes_around_the_checksum_field() {
    for stop in [1usize, 30, 40, 41, 42, 43, 44, 45, 46, 47, 600] {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let mut be = UnixStreamBackend::from_socket(a, &BackendOptions::default()).unwrap();
        let limit = be.send_limit();
        let mem = common::memory();
        let (rx, mut tx) = (DriverQueue::new(0, QSIZE), DriverQueue::new(1, QSIZE));
        let metrics = Arc::new(Metrics::new());
        let mut dev = common::device_with_features(
            &mem,
            &rx,
            &tx,
            DEVICE_FEATURES,
            Box::new(be),
            metrics.clone(),
        );
        let frames: Vec<Vec<u8>> = (0..3).map(|i| common::frame(i, 1000)).collect();
        for f in &frames {
            // The field at frame offset 40..42, so at stream offset 44..46 of the first
            // frame (after its 4-byte length).
            tx.add(&mem, &cut_chain(&needs(34, 6), f, &[NET_HDR_LEN, 41, 300]))
                .unwrap();
        }
        limit.store(stop, Ordering::SeqCst);
        let mut passes = 0;
        loop {
            match dev.process_tx().unwrap() {
                TxPass::Idle => break,
                TxPass::Blocked => assert!(dev.tx_deferred()),
                TxPass::More => {}
            }
            passes += 1;
            assert!(passes < 100, "TX never settles");
        }
        peer.set_nonblocking(true).unwrap();
        let mut wire = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match peer.read(&mut buf) {
                Ok(n) => wire.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let got = common::split_stream(&wire);
        let want: Vec<Vec<u8>> = frames.iter().map(|f| expected(f, 34, 40)).collect();
        assert_eq!(got, want, "stop at {stop}");
        let m = metrics.snapshot();
        assert!(m.partial_writes >= 1, "stop at {stop}: no partial write");
        assert_eq!(m.tx_csum_offload, 3, "stop at {stop}");
    }
}

/// RX: the header says DATA_VALID exactly when GUEST_CSUM was negotiated, for frames
/// copied out of a datagram and for frames read straight into the guest from a stream.
#[test]
fn rx_header_says_data_valid_only_under_guest_csum() {
    for (features, flags) in [
        (DEVICE_FEATURES, HDR_F_DATA_VALID),
        (DEVICE_FEATURES & !FEATURE_GUEST_CSUM, 0),
    ] {
        // Datagram: copied from the device's buffer.
        let mut g = gram(features);
        for _ in 0..2 {
            g.rx.add(&g.mem, &[Seg::write(2048)]).unwrap();
        }
        g.peer.send(&common::frame(5, 1514)).unwrap();
        assert_eq!(g.dev.process_rx().unwrap(), RxPass::Idle);
        let used = g.rx.take_used(&g.mem);
        assert_eq!(used.len(), 1);
        let got = common::read_used(&g.mem, &used[0]);
        let mut want = vnet_device::net::rx_header(1, flags).to_vec();
        want.extend(common::frame(5, 1514));
        assert_eq!(got, want, "features {features:#x}");

        // Stream, a frame large enough to be read straight into the guest's buffers.
        let (a, mut peer) = UnixStream::pair().unwrap();
        let be = UnixStreamBackend::from_socket(a, &BackendOptions::default()).unwrap();
        let mem = common::memory();
        let (mut rx, tx) = (DriverQueue::new(0, QSIZE), DriverQueue::new(1, QSIZE));
        let metrics = Arc::new(Metrics::new());
        let mut dev =
            common::device_with_features(&mem, &rx, &tx, features, Box::new(be), metrics.clone());
        for _ in 0..20 {
            rx.add(&mem, &[Seg::write(4096)]).unwrap();
        }
        let f = common::frame(6, 60000);
        let mut wire = (f.len() as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&f);
        // The frame's start alone first: the device learns its length before its bytes
        // are there, so it reads the rest straight into the guest's buffers.
        std::io::Write::write_all(&mut peer, &wire[..1000]).unwrap();
        assert_eq!(dev.process_rx().unwrap(), RxPass::Idle);
        std::io::Write::write_all(&mut peer, &wire[1000..]).unwrap();
        let mut asm = RxAssembler::default();
        for _ in 0..100 {
            let p = dev.process_rx().unwrap();
            for u in rx.take_used(&mem) {
                asm.push(&mem, &u);
            }
            if p == RxPass::Idle && !asm.frames.is_empty() {
                break;
            }
        }
        assert_eq!(asm.frames, [f]);
        assert_eq!(asm.flags, [flags], "features {features:#x}");
        assert_eq!(
            metrics.snapshot().rx_direct,
            1,
            "read straight into the guest"
        );
    }
}
