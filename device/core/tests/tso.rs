//! TX segmentation offload (HOST_TSO4/6): a chain whose header says TCPV4/TCPV6 is cut by
//! the device into segments of `gso_size` payload bytes, each with its own headers and
//! checksums, read back here at the peer socket and checked field by field against the
//! original frame with a reference sum written in this file (word by word, not the
//! device's). Stalls inside a chain at every position resume there (nothing sent twice,
//! skipped or reordered, the chain used only after its last segment), and headers the
//! device cannot cut are malformed chains while the next valid chain passes.

mod common;

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::{cut_chain, DriverQueue, Seg};
use proptest::prelude::*;
use vm_memory::GuestMemoryMmap;

use vnet_device::backend::{BackendOptions, FaultConfig, Faulty, UnixGram, UnixStreamBackend};
use vnet_device::device::{NetDevice, TxPass};
use vnet_device::metrics::Metrics;
use vnet_device::net::{
    TxHeader, DEVICE_FEATURES, FEATURE_HOST_TSO4, FEATURE_HOST_TSO6, GSO_TCPV4, GSO_TCPV6,
    HDR_F_NEEDS_CSUM, NET_HDR_LEN,
};

const QSIZE: u16 = 256;
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const CWR: u8 = 0x80;

/// Word-by-word ones'-complement sum (big-endian words, a last odd byte padded).
fn reference_sum(b: &[u8]) -> u64 {
    b.chunks(2)
        .map(|w| (u64::from(w[0]) << 8) | u64::from(*w.get(1).unwrap_or(&0)))
        .sum()
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The shape of a TCP frame to build.
#[derive(Debug, Clone, Copy)]
struct Shape {
    v6: bool,
    /// IPv4 option bytes (a multiple of 4, at most 40).
    ip_opts: usize,
    /// TCP option bytes (a multiple of 4, at most 40).
    tcp_opts: usize,
    flags: u8,
}

impl Shape {
    fn l4(&self) -> usize {
        14 + if self.v6 { 40 } else { 20 + self.ip_opts }
    }

    fn hlen(&self) -> usize {
        self.l4() + 20 + self.tcp_opts
    }
}

/// An Ethernet + IP + TCP frame carrying `payload`, as a Linux guest hands a TSO segment
/// over: the TCP checksum field holds something the device must replace, IPv4's total
/// length and checksum are whatever the guest left.
fn tcp_frame(s: Shape, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; s.hlen()];
    f[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    let l4 = s.l4();
    if s.v6 {
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        f[14..18].copy_from_slice(&[0x60, 0x01, 0x23, 0x45]);
        f[18..20].copy_from_slice(&0xffffu16.to_be_bytes());
        f[20] = 6;
        f[21] = 64;
        for i in 0..32 {
            f[22 + i] = 0xfd ^ (i as u8 * 7);
        }
    } else {
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x40 | (5 + s.ip_opts / 4) as u8;
        f[15] = 0x10;
        f[16..18].copy_from_slice(&0xbeefu16.to_be_bytes());
        f[18..20].copy_from_slice(&0xfff0u16.to_be_bytes()); // id: wraps within a chain
        f[20] = 0x40; // DF
        f[22] = 64;
        f[23] = 6;
        f[24..26].copy_from_slice(&0x1234u16.to_be_bytes());
        f[26..30].copy_from_slice(&[10, 0, 2, 15]);
        f[30..34].copy_from_slice(&[10, 0, 2, 2]);
        for i in 0..s.ip_opts {
            f[34 + i] = if i % 4 == 3 { 0 } else { 1 }; // NOPs, an EOL per word
        }
    }
    f[l4..l4 + 2].copy_from_slice(&40000u16.to_be_bytes());
    f[l4 + 2..l4 + 4].copy_from_slice(&5201u16.to_be_bytes());
    f[l4 + 4..l4 + 8].copy_from_slice(&0xffff_f000u32.to_be_bytes()); // seq wraps too
    f[l4 + 8..l4 + 12].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    f[l4 + 12] = ((5 + s.tcp_opts / 4) as u8) << 4;
    f[l4 + 13] = s.flags;
    f[l4 + 14..l4 + 16].copy_from_slice(&501u16.to_be_bytes());
    f[l4 + 16..l4 + 18].copy_from_slice(&0x5a5au16.to_be_bytes());
    for i in 0..s.tcp_opts {
        f[l4 + 20 + i] = (i as u8).wrapping_mul(13) | 1;
    }
    f.extend_from_slice(payload);
    f
}

fn payload(len: usize, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as u8 ^ (i >> 8) as u8)
        .collect()
}

fn tso_header(s: Shape, mss: u16) -> TxHeader {
    TxHeader {
        flags: HDR_F_NEEDS_CSUM,
        gso_type: if s.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
        hdr_len: s.hlen() as u16,
        gso_size: mss,
        csum_start: s.l4() as u16,
        csum_offset: 16,
    }
}

/// Checks that `got` are exactly the segments the device owes for `orig` (shape `s`,
/// `mss`): every header field, both checksums against the reference sum, and the
/// payloads concatenating to the original's exactly once, in order.
fn check_segments(s: Shape, mss: usize, orig: &[u8], got: &[Vec<u8>]) -> Result<(), String> {
    let (l4, hlen) = (s.l4(), s.hlen());
    let plen = orig.len() - hlen;
    let n = plen.div_ceil(mss).max(1);
    if got.len() != n {
        return Err(format!("{} segments, want {n}", got.len()));
    }
    let mut joined = Vec::with_capacity(plen);
    for (i, seg) in got.iter().enumerate() {
        let e = |what: &str| format!("segment {i} of {n}: {what}");
        if seg.len() < hlen {
            return Err(e("shorter than the headers"));
        }
        let body = &seg[hlen..];
        let want_len = if i + 1 < n { mss } else { plen - mss * (n - 1) };
        if body.len() != want_len {
            return Err(e(&format!("payload {} bytes, want {want_len}", body.len())));
        }
        joined.extend_from_slice(body);
        if seg[..14] != orig[..14] {
            return Err(e("Ethernet header changed"));
        }
        let tcp_len = seg.len() - l4;
        let pseudo = if s.v6 {
            if seg[14..18] != orig[14..18] || seg[20..54] != orig[20..54] {
                return Err(e("IPv6 header changed beyond its payload length"));
            }
            if usize::from(be16(seg, 18)) != seg.len() - 54 {
                return Err(e("IPv6 payload length"));
            }
            reference_sum(&seg[22..54]) + tcp_len as u64 + 6
        } else {
            let ihl = 20 + s.ip_opts;
            if usize::from(be16(seg, 16)) != seg.len() - 14 {
                return Err(e("IPv4 total length"));
            }
            if be16(seg, 18) != be16(orig, 18).wrapping_add(i as u16) {
                return Err(e("IPv4 id not the first's plus the segment's index"));
            }
            if seg[14..16] != orig[14..16]
                || seg[20..24] != orig[20..24]
                || seg[26..14 + ihl] != orig[26..14 + ihl]
            {
                return Err(e("IPv4 header changed beyond length, id and checksum"));
            }
            if fold(reference_sum(&seg[14..14 + ihl])) != 0xffff {
                return Err(e("IPv4 header checksum does not verify"));
            }
            reference_sum(&seg[26..34]) + tcp_len as u64 + 6
        };
        if seg[l4..l4 + 4] != orig[l4..l4 + 4] || seg[l4 + 8..l4 + 13] != orig[l4 + 8..l4 + 13] {
            return Err(e("TCP ports, ack or data offset changed"));
        }
        if seg[l4 + 14..l4 + 16] != orig[l4 + 14..l4 + 16]
            || seg[l4 + 18..hlen] != orig[l4 + 18..hlen]
        {
            return Err(e("TCP window, urgent pointer or options changed"));
        }
        if be32(seg, l4 + 4) != be32(orig, l4 + 4).wrapping_add((i * mss) as u32) {
            return Err(e("TCP sequence number"));
        }
        let mut want_flags = orig[l4 + 13];
        if i + 1 < n {
            want_flags &= !(FIN | PSH);
        }
        if i > 0 {
            want_flags &= !CWR;
        }
        if seg[l4 + 13] != want_flags {
            return Err(e(&format!(
                "TCP flags {:#04x}, want {want_flags:#04x}",
                seg[l4 + 13]
            )));
        }
        if fold(pseudo + reference_sum(&seg[l4..])) != 0xffff {
            return Err(e("TCP checksum does not verify"));
        }
    }
    if joined != orig[hlen..] {
        return Err("payloads do not concatenate to the original's".into());
    }
    Ok(())
}

struct Rig {
    mem: GuestMemoryMmap,
    tx: DriverQueue,
    dev: NetDevice,
    metrics: Arc<Metrics>,
}

fn rig(
    backend: Box<dyn vnet_device::backend::Backend>,
    metrics: Arc<Metrics>,
    features: u64,
) -> Rig {
    let mem = common::memory();
    let (rx, tx) = (DriverQueue::new(0, QSIZE), DriverQueue::new(1, QSIZE));
    let dev = common::device_with_features(&mem, &rx, &tx, features, backend, metrics.clone());
    Rig {
        mem,
        tx,
        dev,
        metrics,
    }
}

/// A datagram rig: the device's socket and the peer's, non-blocking.
fn gram(features: u64) -> (Rig, std::os::unix::net::UnixDatagram) {
    let (a, peer) = common::gram_pair();
    peer.set_nonblocking(true).unwrap();
    let be = UnixGram::from_socket(a, &BackendOptions::default()).unwrap();
    let metrics = Arc::new(Metrics::new());
    (rig(Box::new(be), metrics.clone(), features), peer)
}

/// Runs TX until idle, draining the datagram peer between passes (a chain of many small
/// segments can fill the socket); returns the used entries and what the peer got.
fn run_gram(
    r: &mut Rig,
    peer: &std::os::unix::net::UnixDatagram,
) -> (Vec<common::Used>, Vec<Vec<u8>>) {
    let mut got = Vec::new();
    let mut passes = 0;
    loop {
        let p = r.dev.process_tx().unwrap();
        got.extend(common::recv_all(peer));
        if p == TxPass::Idle {
            break;
        }
        passes += 1;
        assert!(passes < 100_000, "TX never settles");
    }
    (r.tx.take_used(&r.mem), got)
}

fn lens(used: &[common::Used]) -> Vec<u32> {
    used.iter().map(|u| u.len).collect()
}

/// Every byte of a used chain's buffers as they are in guest memory now.
fn guest_bytes(mem: &GuestMemoryMmap, u: &common::Used) -> Vec<u8> {
    let mut out = Vec::new();
    for &(addr, len) in &u.segs {
        let mut b = vec![0u8; len as usize];
        vm_memory::Bytes::read_slice(mem, &mut b, vm_memory::GuestAddress(addr)).unwrap();
        out.extend(b);
    }
    out
}

const V4: Shape = Shape {
    v6: false,
    ip_opts: 0,
    tcp_opts: 12,
    flags: ACK | PSH | FIN | CWR,
};
const V6: Shape = Shape {
    v6: true,
    ip_opts: 0,
    tcp_opts: 12,
    flags: ACK | PSH | FIN | CWR,
};

/// Shapes and lengths met in practice and at the edges: MSS 1448 and 1440 (MTU 1500 with
/// timestamps), 536, 1, the largest; payloads of 0, 1, one MSS, one more, many; IPv4 with
/// and without options, IPv6; the headers apart from the payload or cut anywhere. Each
/// chain's segments arrive exactly as owed, and the counters say so.
#[test]
fn segments_are_exact_over_shapes_and_lengths() {
    let (mut r, peer) = gram(DEVICE_FEATURES);
    let mut chains = 0u64;
    let mut segments = 0u64;
    let mut handed_over = 0u64;
    let shapes = [
        V4,
        V6,
        Shape {
            ip_opts: 40,
            tcp_opts: 40,
            ..V4
        },
        Shape {
            ip_opts: 8,
            tcp_opts: 0,
            flags: ACK,
            ..V4
        },
        Shape {
            tcp_opts: 40,
            flags: ACK | FIN,
            ..V6
        },
    ];
    for (k, &s) in shapes.iter().enumerate() {
        // The largest frame, or for IPv4 the largest whose packet length fits 16 bits.
        let max_payload = if s.v6 { 65550 } else { 65535 + 14 } - s.hlen();
        for mss in [1448usize, 1440, 536, 1, 9000, 65535] {
            for plen in [0, 1, mss - 1, mss, mss + 1, 3 * mss + 17, max_payload] {
                let plen = plen.min(max_payload);
                // A one-byte MSS over a 64 KiB payload is 65 000 segments: bounded, but
                // slow enough to leave to the proptest's smaller sizes.
                if mss == 1 && plen > 3000 {
                    continue;
                }
                let orig = tcp_frame(s, &payload(plen, k as u32));
                let hlen = s.hlen();
                let cuts: &[usize] = match plen % 3 {
                    0 => &[NET_HDR_LEN, hlen, 4096],
                    1 => &[NET_HDR_LEN + 7, 19, 1000],
                    _ => &[],
                };
                r.tx.add(&r.mem, &cut_chain(&tso_header(s, mss as u16), &orig, cuts))
                    .unwrap();
                let (used, got) = run_gram(&mut r, &peer);
                assert_eq!(lens(&used), [0], "{s:?} mss {mss} payload {plen}");
                if let Err(e) = check_segments(s, mss, &orig, &got) {
                    panic!("{s:?} mss {mss} payload {plen}: {e}");
                }
                chains += 1;
                segments += got.len() as u64;
                handed_over += orig.len() as u64;
            }
        }
    }
    let m = r.metrics.snapshot();
    assert_eq!((m.tx_gso_chains, m.tx_gso_segments), (chains, segments));
    // What the guest's NIC would count: the chains, their bytes.
    assert_eq!(m.tx_frames - m.tx_gso_segments + m.tx_gso_chains, chains);
    assert_eq!(m.tx_bytes - m.tx_gso_header_bytes, handed_over);
    assert_eq!((m.tx_frames, m.tx_csum_offload), (segments, segments));
    assert_eq!(m.rejected_chains, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random shapes, MSS, payloads and descriptor cuts (more than 32 pieces take the
    /// copying path): exact segments, the guest's buffers unchanged.
    #[test]
    fn random_chains_segment_exactly(
        v6 in any::<bool>(),
        ip_words in 0usize..=10,
        tcp_words in 0usize..=10,
        flags in any::<u8>(),
        mss in 1usize..6000,
        plen in 0usize..20000,
        cuts in prop::collection::vec(100usize..2000, 0..6),
        seed in any::<u32>(),
    ) {
        let s = Shape { v6, ip_opts: if v6 { 0 } else { 4 * ip_words }, tcp_opts: 4 * tcp_words, flags };
        // At most a few thousand segments per case.
        let plen = plen.min(mss * 2000);
        let (mut r, peer) = gram(DEVICE_FEATURES);
        let orig = tcp_frame(s, &payload(plen, seed));
        let segs = cut_chain(&tso_header(s, mss as u16), &orig, &cuts);
        let before: Vec<u8> = segs.iter().flat_map(|s| s.data.clone()).collect();
        r.tx.add(&r.mem, &segs).unwrap();
        let (used, got) = run_gram(&mut r, &peer);
        prop_assert_eq!(lens(&used), vec![0]);
        if let Err(e) = check_segments(s, mss, &orig, &got) {
            return Err(TestCaseError::fail(e));
        }
        prop_assert_eq!(guest_bytes(&r.mem, &used[0]), before, "the guest's buffer was written");
        let m = r.metrics.snapshot();
        prop_assert_eq!(m.tx_gso_segments, got.len() as u64);
        prop_assert_eq!(m.tx_gso_chains, 1);
        // A segment is its header block and the pieces of guest memory its payload
        // spans; one over 32 in all sends the chain from a copy (once).
        let mut ends = Vec::new();
        let mut pos = 0usize;
        for sg in &segs {
            pos += sg.data.len();
            ends.push(pos - NET_HDR_LEN.min(pos));
        }
        let pieces = |a: usize, b: usize| {
            let mut start = 0;
            let mut n = 0;
            for &e in &ends {
                if e > a && start < b {
                    n += 1;
                }
                start = e;
            }
            n
        };
        let hlen = s.hlen();
        let too_many = (0..got.len()).any(|i| {
            let a = hlen + i * mss;
            let b = (a + mss).min(orig.len());
            a < b && 1 + pieces(a, b) > 32
        });
        prop_assert_eq!(m.tx_copied, u64::from(too_many));
    }
}

/// A segment spanning more pieces of guest memory than one send gathers: the chain is
/// copied once and every segment, the ones before that one too, comes out exact.
#[test]
fn a_chain_of_many_small_pieces_goes_from_a_copy() {
    let (mut r, peer) = gram(DEVICE_FEATURES);
    let orig = tcp_frame(V4, &payload(20000, 9));
    // The first segment (1440 bytes) fits in 16 pieces of 100 bytes; MSS 9000 would not.
    for (mss, copied) in [(1440u16, 0u64), (9000, 1)] {
        r.tx.add(&r.mem, &cut_chain(&tso_header(V4, mss), &orig, &[100]))
            .unwrap();
        let (used, got) = run_gram(&mut r, &peer);
        assert_eq!(lens(&used), [0]);
        check_segments(V4, usize::from(mss), &orig, &got).unwrap();
        assert_eq!(r.metrics.snapshot().tx_copied, copied, "mss {mss}");
    }
}

/// The chains of the stall tests: plain frames around GSO chains of both families, the
/// frames they owe, and how many of those frames each chain owes.
struct Batch {
    chains: Vec<Vec<Seg>>,
    /// Every frame the chains owe, in order (checked against the reference once).
    frames: Vec<Vec<u8>>,
    per_chain: Vec<usize>,
}

fn stall_batch() -> Batch {
    let plain = |seq: u32, len: usize| {
        let f = common::frame(seq, len);
        (common::tx_segs(&f, &[NET_HDR_LEN, 20]), vec![f])
    };
    let gso = |s: Shape, mss: usize, plen: usize, seed: u32| {
        let orig = tcp_frame(s, &payload(plen, seed));
        let segs = cut_chain(
            &tso_header(s, mss as u16),
            &orig,
            &[NET_HDR_LEN, s.hlen(), 77],
        );
        // The frames owed, built and checked through a device of their own.
        let (mut r, peer) = gram(DEVICE_FEATURES);
        r.tx.add(&r.mem, &segs).unwrap();
        let (_, got) = run_gram(&mut r, &peer);
        check_segments(s, mss, &orig, &got).unwrap();
        (segs, got)
    };
    let parts = [
        plain(1, 60),
        gso(V4, 100, 450, 1),
        gso(V6, 64, 130, 2),
        plain(2, 70),
        gso(Shape { ip_opts: 12, ..V4 }, 50, 101, 3),
    ];
    Batch {
        chains: parts.iter().map(|p| p.0.clone()).collect(),
        frames: parts.iter().flat_map(|p| p.1.clone()).collect(),
        per_chain: parts.iter().map(|p| p.1.len()).collect(),
    }
}

/// A stream socket that takes any number of bytes of the batch and then refuses (a
/// stalled peer), at every byte of the wire: the chains wholly on the wire are used and
/// no other (a GSO chain only after its last segment), and once the socket drains the
/// rest follows from exactly where it stopped: every frame once, in order, byte-exact.
#[test]
fn stream_stalls_inside_gso_chains_at_every_byte() {
    let b = stall_batch();
    let wire_len: usize = b.frames.iter().map(|f| 4 + f.len()).sum();
    // Wire offset at which each chain's last frame ends.
    let mut chain_ends = Vec::new();
    let mut pos = 0;
    let mut k = 0;
    for &n in &b.per_chain {
        for f in &b.frames[k..k + n] {
            pos += 4 + f.len();
        }
        k += n;
        chain_ends.push(pos);
    }
    for stop in 0..=wire_len {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let mut be = UnixStreamBackend::from_socket(a, &BackendOptions::default()).unwrap();
        let limit = be.send_limit();
        let metrics = Arc::new(Metrics::new());
        let mut r = rig(Box::new(be), metrics.clone(), DEVICE_FEATURES);
        for c in &b.chains {
            r.tx.add(&r.mem, c).unwrap();
        }
        limit.store(stop, Ordering::SeqCst);
        let first = r.dev.process_tx().unwrap();
        let whole = chain_ends.iter().filter(|&&e| e <= stop).count();
        assert_eq!(r.tx.take_used(&r.mem).len(), whole, "stop {stop}");
        if whole < b.chains.len() {
            assert_eq!(first, TxPass::Blocked, "stop {stop}");
            assert!(r.dev.tx_deferred());
        }
        let mut passes = 0;
        while r.dev.process_tx().unwrap() != TxPass::Idle {
            passes += 1;
            assert!(passes < 1000, "stop {stop}: TX never settles");
        }
        assert_eq!(r.tx.take_used(&r.mem).len(), b.chains.len() - whole);
        let got = common::split_stream(&read_stream(&mut peer));
        assert!(got == b.frames, "stop {stop}: frames differ");
        let m = metrics.snapshot();
        assert_eq!(m.tx_frames, b.frames.len() as u64, "stop {stop}");
        assert_eq!(
            (m.tx_gso_chains, m.tx_gso_segments),
            (3, b.frames.len() as u64 - 2),
            "stop {stop}"
        );
        assert_eq!(m.episodes, u64::from(stop < wire_len), "stop {stop}");
        assert_eq!(m.resolved, m.episodes, "stop {stop}");
    }
}

/// Datagram sends refused every `every`-th frame, `burst` times in a row, so a batch stops
/// at every position of every chain (and again on retries): the deferred frame is the
/// segment refused, each episode resolves, and the peer gets every frame once, in order;
/// also under `small-first`, which must not look past a partly sent GSO chain.
#[test]
fn datagram_refusals_at_every_position_keep_every_frame_once_in_order() {
    let b = stall_batch();
    for look_ahead in [false, true] {
        for every in 1..=b.frames.len() as u32 {
            for burst in 1..=3u32 {
                let (a, peer) = common::gram_pair();
                peer.set_nonblocking(true).unwrap();
                let metrics = Arc::new(Metrics::new());
                let be = Faulty::new(
                    UnixGram::from_socket(a, &BackendOptions::default()).unwrap(),
                    FaultConfig {
                        enobufs_every: every,
                        enobufs_burst: burst,
                    },
                    metrics.clone(),
                );
                let mut r = rig(Box::new(be), metrics.clone(), DEVICE_FEATURES);
                r.dev.set_look_ahead(look_ahead);
                assert_eq!(r.dev.tx_looks_ahead(), look_ahead);
                for c in &b.chains {
                    r.tx.add(&r.mem, c).unwrap();
                }
                let (used, got) = run_gram(&mut r, &peer);
                let case = format!("every {every} burst {burst} look_ahead {look_ahead}");
                assert_eq!(used.len(), b.chains.len(), "{case}");
                assert!(got == b.frames, "{case}: frames differ");
                let m = metrics.snapshot();
                assert!(m.injected_faults > 0, "{case}");
                assert_eq!(m.episodes, m.resolved, "{case}");
                assert_eq!(m.retries, m.injected_faults, "{case}");
                assert_eq!(
                    (m.tx_gso_chains, m.tx_gso_segments),
                    (3, b.frames.len() as u64 - 2),
                    "{case}"
                );
            }
        }
    }
}

/// A real datagram socket that fills (the peer reads only when the device is blocked)
/// under 64 KiB chains of 45 segments: stops land wherever the socket's room ends, and
/// every chain still arrives whole, once, in order.
#[test]
fn a_filling_datagram_socket_stops_and_resumes_inside_chains() {
    let (a, peer) = common::gram_pair();
    peer.set_nonblocking(true).unwrap();
    let opts = BackendOptions {
        sndbuf: Some(vnet_device::net::MAX_FRAME),
        ..Default::default()
    };
    let metrics = Arc::new(Metrics::new());
    let be = UnixGram::from_socket(a, &opts).unwrap();
    let mut r = rig(Box::new(be), metrics.clone(), DEVICE_FEATURES);
    let origs: Vec<Vec<u8>> = (0..4)
        .map(|i| tcp_frame(if i % 2 == 0 { V4 } else { V6 }, &payload(64000, i)))
        .collect();
    for (i, o) in origs.iter().enumerate() {
        let s = if i % 2 == 0 { V4 } else { V6 };
        r.tx.add(
            &r.mem,
            &cut_chain(&tso_header(s, 1448), o, &[NET_HDR_LEN, s.hlen(), 4096]),
        )
        .unwrap();
    }
    let mut got = Vec::new();
    let mut passes = 0;
    loop {
        match r.dev.process_tx().unwrap() {
            TxPass::Idle => break,
            TxPass::Blocked => got.extend(common::recv_all(&peer)),
            TxPass::More => {}
        }
        passes += 1;
        assert!(passes < 10_000, "TX never settles");
    }
    got.extend(common::recv_all(&peer));
    let mut at = 0;
    for (i, o) in origs.iter().enumerate() {
        let s = if i % 2 == 0 { V4 } else { V6 };
        let n = 64000usize.div_ceil(1448);
        check_segments(s, 1448, o, &got[at..(at + n).min(got.len())])
            .unwrap_or_else(|e| panic!("chain {i}: {e}"));
        at += n;
    }
    assert_eq!(at, got.len());
    let m = metrics.snapshot();
    assert!(m.episodes >= 1, "the socket never filled");
    assert_eq!(m.episodes, m.resolved);
    assert_eq!(lens(&r.tx.take_used(&r.mem)), [0; 4]);
}

/// Reads everything waiting on a stream peer.
fn read_stream(peer: &mut UnixStream) -> Vec<u8> {
    peer.set_nonblocking(true).unwrap();
    let mut wire = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => wire.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    wire
}

/// Headers the device cannot cut are malformed chains: returned unused, counted as
/// rejected chains and `tx_bad_chain` drops, nothing of them forwarded, and a valid GSO
/// chain right after each still goes out exact.
#[test]
fn hostile_gso_headers_are_rejected_and_the_next_chain_passes() {
    let (mut r, peer) = gram(DEVICE_FEATURES);
    let good = tcp_frame(V4, &payload(5000, 4));
    let v4 = tcp_frame(V4, &payload(3000, 5));
    let v6 = tcp_frame(V6, &payload(3000, 6));
    let h4 = tso_header(V4, 1448);
    let h6 = tso_header(V6, 1448);
    let with = |f: &[u8], at: usize, b: u8| {
        let mut f = f.to_vec();
        f[at] = b;
        f
    };
    let l4 = V4.l4();
    let bad: Vec<(&str, TxHeader, Vec<u8>)> = vec![
        ("gso_size 0", TxHeader { gso_size: 0, ..h4 }, v4.clone()),
        (
            "ECN bit",
            TxHeader {
                gso_type: GSO_TCPV4 | 0x80,
                ..h4
            },
            v4.clone(),
        ),
        ("UDP gso type", TxHeader { gso_type: 3, ..h4 }, v4.clone()),
        (
            "unknown gso type",
            TxHeader { gso_type: 2, ..h4 },
            v4.clone(),
        ),
        ("no NEEDS_CSUM", TxHeader { flags: 0, ..h4 }, v4.clone()),
        (
            "csum_start at IP",
            TxHeader {
                csum_start: 14,
                ..h4
            },
            v4.clone(),
        ),
        (
            "csum_start past TCP",
            TxHeader {
                csum_start: l4 as u16 + 4,
                ..h4
            },
            v4.clone(),
        ),
        (
            "csum_offset not 16",
            TxHeader {
                csum_offset: 6,
                ..h4
            },
            v4.clone(),
        ),
        ("UDP protocol", h4, with(&v4, 23, 17)),
        ("ICMP protocol", h4, with(&v4, 23, 1)),
        ("ihl 4", h4, with(&v4, 14, 0x44)),
        ("ihl 0", h4, with(&v4, 14, 0x40)),
        ("IP version 6 in an IPv4 frame", h4, with(&v4, 14, 0x65)),
        ("fragment", h4, with(&v4, 20, 0x20)),
        ("doff 4", h4, with(&v4, l4 + 12, 0x40)),
        ("doff 0", h4, with(&v4, l4 + 12, 0x00)),
        (
            "ihl 15 past a short frame",
            TxHeader {
                csum_start: 74,
                ..h4
            },
            with(&v4[..90], 14, 0x4f),
        ),
        (
            "doff 15 past a short frame",
            h4,
            with(&v4[..80], l4 + 12, 0xf0),
        ),
        ("truncated Ethernet", h4, v4[..10].to_vec()),
        ("truncated IPv4", h4, v4[..30].to_vec()),
        ("truncated TCP", h4, v4[..50].to_vec()),
        ("VLAN tag", h4, with(&with(&v4, 12, 0x81), 13, 0x00)),
        ("ARP", h4, with(&with(&v4, 12, 0x08), 13, 0x06)),
        ("TCPV4 on IPv6", h4, v6.clone()),
        ("TCPV6 on IPv4", h6, v4.clone()),
        ("IPv6 extension header", h6, with(&v6, 20, 0)),
        ("IPv6 next header UDP", h6, with(&v6, 20, 17)),
        ("truncated IPv6", h6, v6[..40].to_vec()),
        (
            "IPv4 segment over 65535 bytes",
            TxHeader {
                gso_size: 65535,
                ..h4
            },
            tcp_frame(V4, &payload(65550 - V4.hlen(), 7)),
        ),
    ];
    for (name, h, f) in &bad {
        let (used, got) = {
            r.tx.add(&r.mem, &cut_chain(h, f, &[NET_HDR_LEN, 30, 8192]))
                .unwrap();
            run_gram(&mut r, &peer)
        };
        assert_eq!(lens(&used), [0], "{name}");
        assert!(got.is_empty(), "{name}: forwarded");
        r.tx.add(&r.mem, &cut_chain(&h4, &good, &[NET_HDR_LEN + 5, 1000]))
            .unwrap();
        let (used, got) = run_gram(&mut r, &peer);
        assert_eq!(lens(&used), [0], "{name}");
        check_segments(V4, 1448, &good, &got).unwrap_or_else(|e| panic!("after {name}: {e}"));
    }
    let m = r.metrics.snapshot();
    assert_eq!(m.rejected_chains, bad.len() as u64);
    assert_eq!(m.drops.tx_bad_chain, bad.len() as u64);
    assert_eq!(m.drops.guest_driver_error, 0);
    assert_eq!(m.tx_gso_chains, bad.len() as u64);
}

/// Without HOST_TSO4 (or TSO6) negotiated a chain asking for it is refused like any
/// offload not offered, and without CSUM TSO is not honoured at all (the header is not
/// read: the frame goes out as it is, as before offloads were offered).
#[test]
fn tso_only_where_negotiated() {
    let v4 = tcp_frame(V4, &payload(3000, 1));
    let v6 = tcp_frame(V6, &payload(3000, 2));
    for (features, v6_ok, v4_ok) in [
        (DEVICE_FEATURES & !FEATURE_HOST_TSO4, true, false),
        (DEVICE_FEATURES & !FEATURE_HOST_TSO6, false, true),
    ] {
        let (mut r, peer) = gram(features);
        for (f, h, ok, s) in [
            (&v4, tso_header(V4, 1000), v4_ok, V4),
            (&v6, tso_header(V6, 1000), v6_ok, V6),
        ] {
            r.tx.add(&r.mem, &cut_chain(&h, f, &[])).unwrap();
            let (used, got) = run_gram(&mut r, &peer);
            assert_eq!(lens(&used), [0]);
            if ok {
                check_segments(s, 1000, f, &got).unwrap();
            } else {
                assert!(got.is_empty());
            }
        }
        assert_eq!(r.metrics.snapshot().rejected_chains, 1);
    }
    let (mut r, peer) = gram(DEVICE_FEATURES & !vnet_device::net::FEATURE_CSUM);
    r.tx.add(&r.mem, &cut_chain(&tso_header(V4, 1000), &v4, &[]))
        .unwrap();
    let (_, got) = run_gram(&mut r, &peer);
    assert_eq!(got, [v4]);
    let m = r.metrics.snapshot();
    assert_eq!((m.rejected_chains, m.tx_gso_segments), (0, 0));
}
