//! TX segmentation offload (HOST_TSO4/6): a chain whose header says TCPV4/TCPV6 is cut by
//! the device into segments of `gso_size` payload bytes, each with its own headers and
//! checksums, read back here at the peer socket and checked field by field against the
//! original frame with a reference sum written in this file (word by word, not the
//! device's). Stalls inside a chain at every position resume there (nothing sent twice,
//! skipped or reordered, the chain used only after its last segment), and headers the
//! device cannot cut are malformed chains while the next valid chain passes.

mod common;

use std::sync::Arc;

use common::{DriverQueue, Seg};
use proptest::prelude::*;
use vm_memory::GuestMemoryMmap;

use vnet_device::backend::{BackendOptions, UnixGram};
use vnet_device::device::{NetDevice, TxPass};
use vnet_device::metrics::Metrics;
use vnet_device::net::{
    TxHeader, DEVICE_FEATURES, GSO_TCPV4, GSO_TCPV6, HDR_F_NEEDS_CSUM, NET_HDR_LEN,
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

/// TX chain bytes: `hdr` then `frame`, cut at `cuts` (cycled; the last piece takes the
/// rest).
fn chain(hdr: &TxHeader, frame: &[u8], cuts: &[usize]) -> Vec<Seg> {
    let mut all = hdr.to_bytes().to_vec();
    all.extend_from_slice(frame);
    let mut segs = Vec::new();
    let mut pos = 0;
    let mut k = 0;
    while pos < all.len() {
        let c = if cuts.is_empty() {
            all.len()
        } else {
            cuts[k % cuts.len()].max(1)
        };
        let end = (pos + c).min(all.len());
        segs.push(Seg::read(&all[pos..end]));
        pos = end;
        k += 1;
    }
    segs
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
                r.tx.add(&r.mem, &chain(&tso_header(s, mss as u16), &orig, cuts))
                    .unwrap();
                let (used, got) = run_gram(&mut r, &peer);
                assert_eq!(lens(&used), [0], "{s:?} mss {mss} payload {plen}");
                if let Err(e) = check_segments(s, mss, &orig, &got) {
                    panic!("{s:?} mss {mss} payload {plen}: {e}");
                }
                chains += 1;
                segments += got.len() as u64;
            }
        }
    }
    let m = r.metrics.snapshot();
    assert_eq!((m.tx_gso_chains, m.tx_gso_segments), (chains, segments));
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
        let segs = chain(&tso_header(s, mss as u16), &orig, &cuts);
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
        r.tx.add(&r.mem, &chain(&tso_header(V4, mss), &orig, &[100]))
            .unwrap();
        let (used, got) = run_gram(&mut r, &peer);
        assert_eq!(lens(&used), [0]);
        check_segments(V4, usize::from(mss), &orig, &got).unwrap();
        assert_eq!(r.metrics.snapshot().tx_copied, copied, "mss {mss}");
    }
}
