//! Receive coalescing (VIRTIO_NET_F_GUEST_TSO4/6): a proxy peer writes TCP segments, other
//! frames and hostile ones; the test reads what the device put in the guest's RX buffers,
//! cuts every GSO frame back into segments with its own reference (as a guest's
//! `tcp_gso_segment` would) and checks that the proxy's frames come out exactly once, in
//! order, byte for byte, and that merges happened where they must.
//!
//! The checksums here are the plain word-by-word sum, not the device's `Csum`.

mod common;

use std::io::Write;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::Arc;

use common::{reference_sum, DriverQueue, Seg};
use proptest::prelude::*;

use vnet_device::backend::{BackendOptions, UnixGram, UnixStreamBackend};
use vnet_device::device::{NetDevice, RxPass};
use vnet_device::metrics::Metrics;
use vnet_device::net::{
    DEVICE_FEATURES, FEATURE_GUEST_CSUM, FEATURE_GUEST_TSO4, FEATURE_GUEST_TSO6, FEATURE_MRG_RXBUF,
    HDR_F_DATA_VALID, HDR_F_NEEDS_CSUM, NET_HDR_LEN,
};

const QSIZE: u16 = 256;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const FIN: u8 = 0x01;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn is_v6(f: &[u8]) -> bool {
    f.len() >= 14 && f[12..14] == [0x86, 0xdd]
}

/// Where the TCP header would be, by the Ethernet type alone.
fn l4_of(f: &[u8]) -> usize {
    if is_v6(f) {
        54
    } else {
        34
    }
}

/// The pseudo-header of the frame's addresses (at their fixed places) for a TCP
/// segment of `tcp_len` bytes.
fn pseudo(f: &[u8], tcp_len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    if is_v6(f) {
        p.extend_from_slice(&f[22..54]);
        p.extend_from_slice(&(tcp_len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 6]);
    } else {
        p.extend_from_slice(&f[26..34]);
        p.extend_from_slice(&[0, 6]);
        p.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    }
    p
}

/// Sets the TCP checksum of `f` from its bytes as they are (positions by Ethernet type,
/// the length the frame's own): what a proxy that gets checksums right sends.
fn fix_tcp_csum(f: &mut [u8]) {
    let l4 = l4_of(f);
    if f.len() < l4 + 18 {
        return;
    }
    f[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let mut all = pseudo(f, f.len() - l4);
    all.extend_from_slice(&f[l4..]);
    let c = !reference_sum(&all);
    f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
}

fn fix_ip_csum(f: &mut [u8]) {
    if f.len() >= 34 && !is_v6(f) {
        f[24..26].copy_from_slice(&[0, 0]);
        let c = !reference_sum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }
}

/// One TCP connection's fixed header fields.
#[derive(Debug, Clone)]
struct Flow {
    v6: bool,
    sport: u16,
    ack: u32,
    opts: Vec<u8>,
    df: bool,
    /// IPv4 ids count up per frame (else all the same, as passt sends them).
    counting: bool,
    seq: u32,
    id: u16,
}

impl Flow {
    fn new(v6: bool, sport: u16) -> Flow {
        Flow {
            v6,
            sport,
            ack: 0x1000_0000 + u32::from(sport),
            opts: Vec::new(),
            df: true,
            counting: true,
            seq: u32::from(sport).wrapping_mul(0x9e37_79b9),
            id: sport,
        }
    }

    /// A segment at the flow's next sequence number; the flow moves past it.
    fn seg(&mut self, payload: usize, flags: u8) -> Vec<u8> {
        let f = self.frame_at(self.seq, payload, flags);
        self.seq = self.seq.wrapping_add(payload as u32);
        if self.counting {
            self.id = self.id.wrapping_add(1);
        }
        f
    }

    fn frame_at(&self, seq: u32, payload: usize, flags: u8) -> Vec<u8> {
        let tcp_len = 20 + self.opts.len() + payload;
        let mut f = vec![2, 0, 0, 0, 0, 0x15, 2, 0, 0, 0, 0, 2];
        if self.v6 {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0x00, 0x01, 0x23]);
            f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            f.extend_from_slice(&[6, 64]);
            f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x15]);
        } else {
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0x00]);
            f.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            f.extend_from_slice(&self.id.to_be_bytes());
            f.extend_from_slice(&[if self.df { 0x40 } else { 0 }, 0, 64, 6, 0, 0]);
            f.extend_from_slice(&[10, 0, 2, 2, 10, 0, 2, 15]);
        }
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&self.ack.to_be_bytes());
        f.push((((20 + self.opts.len()) / 4) as u8) << 4);
        f.push(flags);
        f.extend_from_slice(&[0x7f, 0xf0, 0, 0, 0, 0]);
        f.extend_from_slice(&self.opts);
        f.extend((0..payload).map(|i| (seq as usize).wrapping_add(i * 7) as u8));
        fix_ip_csum(&mut f);
        fix_tcp_csum(&mut f);
        f
    }
}

/// Timestamps option (NOP, NOP, kind 8) with `tsval`.
fn ts_opt(tsval: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&7u32.to_be_bytes());
    o
}

/// A UDP/IPv4 frame (never merged).
fn udp_frame(n: usize) -> Vec<u8> {
    let mut f = Flow::new(false, 53).frame_at(0, n, ACK);
    f[23] = 17;
    fix_ip_csum(&mut f);
    f
}

/// A frame as the guest found it: its virtio_net_hdr and bytes.
#[derive(Debug, Clone)]
struct Got {
    hdr: [u8; NET_HDR_LEN],
    frame: Vec<u8>,
}

/// The guest's side of RX: frames stitched from used buffers (num_buffers each).
#[derive(Default)]
struct Asm {
    cur: Option<([u8; NET_HDR_LEN], Vec<u8>, u16)>,
    got: Vec<Got>,
}

impl Asm {
    fn push(&mut self, mem: &vm_memory::GuestMemoryMmap, u: &common::Used) {
        let bytes = common::read_used(mem, u);
        let (hdr, frame, left) = match self.cur.take() {
            Some((hdr, mut frame, left)) => {
                frame.extend_from_slice(&bytes);
                (hdr, frame, left)
            }
            None => {
                assert!(bytes.len() >= NET_HDR_LEN, "first buffer lacks the header");
                let hdr: [u8; NET_HDR_LEN] = bytes[..NET_HDR_LEN].try_into().unwrap();
                let n = u16::from_le_bytes([hdr[10], hdr[11]]);
                assert!(n >= 1, "num_buffers 0");
                (hdr, bytes[NET_HDR_LEN..].to_vec(), n)
            }
        };
        if left == 1 {
            self.got.push(Got { hdr, frame });
        } else {
            self.cur = Some((hdr, frame, left - 1));
        }
    }

    /// Proxy frames in what the guest got so far (a GSO frame counts its segments).
    fn segments(&self) -> usize {
        self.got
            .iter()
            .map(|g| {
                if g.hdr[1] == 0 {
                    1
                } else {
                    resegment(g, true).len()
                }
            })
            .sum()
    }
}

/// What a guest makes of a GSO frame: the checks a careful driver would do, then the
/// segments cut every `gso_size` bytes of payload, each with its own lengths, IPv4 id
/// (counting up from the first, or all the first's), checksum and sequence number, PSH
/// on the last only.
fn resegment(g: &Got, counting: bool) -> Vec<Vec<u8>> {
    let h = &g.hdr;
    let f = &g.frame;
    let le = |at: usize| usize::from(u16::from_le_bytes([h[at], h[at + 1]]));
    let (gso_type, hdr_len, gso_size, start, off) = (h[1], le(2), le(4), le(6), le(8));
    assert_eq!(h[0], HDR_F_NEEDS_CSUM, "GSO frame flags");
    let v6 = match gso_type {
        1 => false,
        4 => true,
        t => panic!("gso_type {t}"),
    };
    assert_eq!(is_v6(f), v6, "gso_type matches the frame");
    let l4 = if v6 { 54 } else { 34 };
    assert_eq!((start, off), (l4, 16), "csum_start, csum_offset");
    assert_eq!(hdr_len, l4 + usize::from(f[l4 + 12] >> 4) * 4, "hdr_len");
    assert!(
        gso_size > 0 && f.len() > hdr_len + gso_size,
        "at least two segments"
    );
    if v6 {
        assert_eq!(
            usize::from(be16(f, 18)),
            f.len() - 54,
            "IPv6 payload length"
        );
    } else {
        assert_eq!(usize::from(be16(f, 16)), f.len() - 14, "IPv4 total length");
        assert_eq!(reference_sum(&f[14..34]), 0xffff, "IPv4 header checksum");
    }
    assert!(f.len() - 14 <= 65535, "IP length fits 16 bits");
    // The field holds the pseudo-header sum for the whole segment (not complemented);
    // completing the sum from csum_start, as the guest would to send it on, verifies.
    let tcp_len = f.len() - l4;
    assert_eq!(
        be16(f, l4 + 16),
        reference_sum(&pseudo(f, tcp_len)),
        "pseudo-header sum in the TCP checksum field"
    );
    let mut done = f.clone();
    let c = !reference_sum(&f[l4..]);
    done[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    let mut all = pseudo(f, tcp_len);
    all.extend_from_slice(&done[l4..]);
    assert_eq!(
        reference_sum(&all),
        0xffff,
        "completed TCP checksum verifies"
    );

    let seq0 = u32::from_be_bytes(f[l4 + 4..l4 + 8].try_into().unwrap());
    let id0 = be16(f, 18);
    let chunks: Vec<&[u8]> = f[hdr_len..].chunks(gso_size).collect();
    let n = chunks.len();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut s = f[..hdr_len].to_vec();
            s.extend_from_slice(chunk);
            let len = s.len();
            if v6 {
                s[18..20].copy_from_slice(&((len - 54) as u16).to_be_bytes());
            } else {
                s[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
                let id = if counting {
                    id0.wrapping_add(i as u16)
                } else {
                    id0
                };
                s[18..20].copy_from_slice(&id.to_be_bytes());
                fix_ip_csum(&mut s);
            }
            let seq = seq0.wrapping_add((i * gso_size) as u32);
            s[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            if i + 1 < n {
                s[l4 + 13] &= !(PSH | FIN);
            }
            fix_tcp_csum(&mut s);
            s
        })
        .collect()
}

/// Checks the guest's frames against what the proxy sent: every sent frame exactly once,
/// in order, byte for byte (GSO frames re-segmented); frames that went as they came have
/// a header saying DATA_VALID and nothing else. Returns how many sent frames each guest
/// frame stood for.
fn check_delivery(got: &[Got], sent: &[Vec<u8>]) -> Vec<usize> {
    let mut i = 0;
    let mut groups = Vec::new();
    for (k, g) in got.iter().enumerate() {
        if g.hdr[1] == 0 {
            assert_eq!(g.hdr[0], HDR_F_DATA_VALID, "frame {k}: flags");
            assert_eq!(g.hdr[1..10], [0; 9], "frame {k}: GSO fields set");
            assert!(i < sent.len(), "frame {k}: more frames than sent");
            assert_eq!(g.frame, sent[i], "guest frame {k} is not sent frame {i}");
            i += 1;
            groups.push(1);
            continue;
        }
        let fixed = resegment(g, false);
        let n = fixed.len();
        let want = &sent[i..(i + n).min(sent.len())];
        let ok = fixed == want || resegment(g, true) == want;
        assert!(
            ok,
            "guest frame {k} (GSO, {n} segments) is not sent frames {i}..{}",
            i + n
        );
        i += n;
        groups.push(n);
    }
    assert_eq!(i, sent.len(), "frames sent and never delivered");
    groups
}

enum Peer {
    Stream(UnixStream),
    Gram(UnixDatagram),
}

struct Rig {
    mem: vm_memory::GuestMemoryMmap,
    rx: DriverQueue,
    _tx: DriverQueue,
    dev: NetDevice,
    peer: Peer,
    metrics: Arc<Metrics>,
    asm: Asm,
}

fn rig(stream: bool, features: u64) -> Rig {
    rig_sized(stream, features, QSIZE)
}

fn rig_sized(stream: bool, features: u64, qsize: u16) -> Rig {
    let mem = common::memory();
    let (rx, tx) = (DriverQueue::new(0, qsize), DriverQueue::new(1, qsize));
    let metrics = Arc::new(Metrics::new());
    let (backend, peer): (Box<dyn vnet_device::backend::Backend>, Peer) = if stream {
        let (a, peer) = UnixStream::pair().unwrap();
        let be = UnixStreamBackend::from_socket(a, &BackendOptions::default()).unwrap();
        (Box::new(be), Peer::Stream(peer))
    } else {
        let (a, peer) = common::gram_pair();
        let be = UnixGram::from_socket(a, &BackendOptions::default()).unwrap();
        (Box::new(be), Peer::Gram(peer))
    };
    let dev = common::device_with_features(&mem, &rx, &tx, features, backend, metrics.clone());
    Rig {
        mem,
        rx,
        _tx: tx,
        dev,
        peer,
        metrics,
        asm: Asm::default(),
    }
}

impl Rig {
    fn send(&mut self, frames: &[Vec<u8>]) {
        match &mut self.peer {
            Peer::Stream(s) => {
                let mut wire = Vec::new();
                for f in frames {
                    wire.extend_from_slice(&(f.len() as u32).to_be_bytes());
                    wire.extend_from_slice(f);
                }
                s.write_all(&wire).unwrap();
            }
            Peer::Gram(g) => {
                for f in frames {
                    assert_eq!(g.send(f).unwrap(), f.len());
                }
            }
        }
    }

    /// Posts RX buffers of `size` bytes until `n` are outstanding.
    fn fill(&mut self, n: usize, size: u32) {
        while self.rx.outstanding() < n {
            self.rx.add(&self.mem, &[Seg::write(size)]).unwrap();
        }
    }

    /// Sent frames the guest got so far (GSO frames count their segments).
    fn segments(&self) -> usize {
        self.asm.segments()
    }

    /// Runs RX until it stops (nothing to read, or no buffers), collecting what the
    /// guest got.
    fn run(&mut self) -> RxPass {
        loop {
            let p = self.dev.process_rx().unwrap();
            for u in self.rx.take_used(&self.mem) {
                self.asm.push(&self.mem, &u);
            }
            if p != RxPass::More {
                return p;
            }
        }
    }
}

/// Sent frames and, for each, whether it must start a new guest frame.
#[derive(Default)]
struct Plan {
    frames: Vec<Vec<u8>>,
    starts: Vec<bool>,
}

impl Plan {
    fn push(&mut self, f: Vec<u8>, starts: bool) {
        self.frames.push(f);
        self.starts.push(starts);
    }

    fn groups(&self) -> Vec<usize> {
        let mut g: Vec<usize> = Vec::new();
        for &s in &self.starts {
            match g.last_mut() {
                Some(n) if !s => *n += 1,
                _ => g.push(1),
            }
        }
        g
    }
}

/// Hand-written: flows interleaved, sequence gaps, differing options, PSH and FIN in the
/// middle, IPv4 (ids counting and fixed, DF and not) and IPv6, non-TCP frames.
fn first_plan() -> Plan {
    let mut p = Plan::default();
    let mut a = Flow::new(false, 1001);
    let mut b = Flow::new(true, 1002);
    let mut c = Flow::new(false, 1003);
    c.counting = false;
    c.id = 0;
    let mut d = Flow::new(false, 1004);
    d.counting = false;
    d.df = false;
    d.id = 0;
    // Three of A merge.
    p.push(a.seg(1448, ACK), true);
    p.push(a.seg(1448, ACK), false);
    p.push(a.seg(1448, ACK), false);
    // Another flow between ends that merge; B merges with itself.
    p.push(b.seg(1200, ACK), true);
    p.push(b.seg(1200, ACK), false);
    // A again: alone, then a gap in its sequence, then two that merge.
    p.push(a.seg(1448, ACK), true);
    a.seq = a.seq.wrapping_add(1448);
    p.push(a.seg(1448, ACK), true);
    p.push(a.seg(1448, ACK), false);
    // C's options change (timestamp value): the changed one starts a new merge.
    c.opts = ts_opt(1);
    p.push(c.seg(1436, ACK), true);
    c.opts = ts_opt(2);
    p.push(c.seg(1436, ACK), true);
    p.push(c.seg(1436, ACK), false);
    // D: PSH ends a merge (it is in it); a FIN with data goes alone.
    p.push(d.seg(1000, ACK), true);
    p.push(d.seg(1000, ACK | PSH), false);
    p.push(d.seg(1000, ACK | FIN), true);
    // Not TCP.
    p.push(udp_frame(300), true);
    p.push(common::frame(7, 60), true);
    p
}

/// Hand-written: hostile frames between segments of a flow, empty segments, a short
/// segment ending a merge, a longer one that cannot join.
fn second_plan() -> Plan {
    let mut p = Plan::default();
    let mut h = Flow::new(false, 2001);
    let mut g = Flow::new(true, 2002);
    g.opts = ts_opt(9);
    let mut i = Flow::new(false, 2003);
    p.push(h.seg(1448, ACK), true);
    let mut bad_ihl = h.frame_at(h.seq, 1448, ACK);
    bad_ihl[14] = 0x46;
    fix_ip_csum(&mut bad_ihl);
    p.push(bad_ihl, true);
    p.push(h.seg(1448, ACK), true);
    p.push(h.seg(1448, ACK), false);
    // Hostile frames that look like H's next segment.
    let next = |h: &Flow| h.frame_at(h.seq, 1448, ACK);
    let mut truncated = next(&h);
    truncated.truncate(34 + 10);
    p.push(truncated, true);
    let mut long_ip = next(&h);
    let tot = be16(&long_ip, 16) + 1;
    long_ip[16..18].copy_from_slice(&tot.to_be_bytes());
    fix_ip_csum(&mut long_ip);
    p.push(long_ip, true);
    let mut doff15 = h.frame_at(h.seq, 20, ACK);
    doff15[46] = 15 << 4;
    p.push(doff15, true);
    let mut doff4 = next(&h);
    doff4[46] = 4 << 4;
    fix_tcp_csum(&mut doff4);
    p.push(doff4, true);
    let mut bad_csum = next(&h);
    bad_csum[24] ^= 0x40;
    p.push(bad_csum, true);
    let mut fragment = next(&h);
    fragment[20] |= 0x20;
    fix_ip_csum(&mut fragment);
    p.push(fragment, true);
    let mut vlan = next(&h);
    vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    p.push(vlan, true);
    // A pure ACK.
    p.push(h.seg(0, ACK), true);
    // G: a short segment is the last of a merge; the next starts anew.
    p.push(g.seg(1000, ACK), true);
    p.push(g.seg(1000, ACK), false);
    p.push(g.seg(500, ACK), false);
    p.push(g.seg(1000, ACK), true);
    // I: a longer second segment does not join the first.
    p.push(i.seg(1000, ACK), true);
    p.push(i.seg(1200, ACK), true);
    p
}

/// Each plan is one batch (fewer frames than the device reads at once, buffers for all):
/// over a stream (frames held in the backend's buffer) and over datagrams (frames
/// copied into bounce buffers), into buffers of Linux's mergeable size and larger, the
/// guest gets exactly the planned merges, and every sent frame back.
#[test]
fn planned_merges_over_both_backends() {
    for stream in [true, false] {
        for size in [1536u32, 4096] {
            let mut r = rig(stream, DEVICE_FEATURES);
            let plans = [first_plan(), second_plan()];
            let mut sent = Vec::new();
            let mut want = Vec::new();
            for p in &plans {
                assert!(p.frames.len() <= 32);
                r.fill(200, size);
                r.send(&p.frames);
                assert_eq!(r.run(), RxPass::Idle);
                sent.extend(p.frames.iter().cloned());
                want.extend(p.groups());
            }
            let groups = check_delivery(&r.asm.got, &sent);
            assert_eq!(groups, want, "stream {stream}, buffers {size}");
            let m = r.metrics.snapshot();
            let merged: Vec<usize> = want.iter().copied().filter(|&n| n > 1).collect();
            assert_eq!(m.rx_gso_frames, merged.len() as u64);
            assert_eq!(m.rx_coalesced_segments, merged.iter().sum::<usize>() as u64);
            let guest_bytes: usize = r.asm.got.iter().map(|g| g.frame.len()).sum();
            assert_eq!(m.rx_bytes - m.rx_coalesced_hdr_bytes, guest_bytes as u64);
            assert_eq!(m.rx_frames, sent.len() as u64);
            assert_eq!(m.drops.total, 0);
        }
    }
}

/// The guest runs out of buffers in the middle of a batch of one flow's segments: the
/// device merges what the posted buffers take, waits for a kick when not even the next
/// segment fits, and resumes exactly there: no segment lost or repeated.
#[test]
fn guest_out_of_buffers_mid_batch() {
    let mut r = rig(true, DEVICE_FEATURES);
    let mut a = Flow::new(false, 3001);
    let frames: Vec<Vec<u8>> = (0..20).map(|_| a.seg(1448, ACK)).collect();
    // 20 buffers of 1 KiB: one batch of 20 frames is read; 14 segments fit them merged
    // (66 + 14 x 1448 + 12 = 20350 bytes), the 15th waits.
    r.fill(20, 1024);
    r.send(&frames);
    assert_eq!(r.run(), RxPass::NoBuffers);
    assert!(r.dev.rx_waiting());
    assert_eq!(check_delivery(&r.asm.got, &frames[..14]), [14]);
    // 2 KiB more: room for one frame as it is, not two merged.
    r.fill(2, 1024);
    assert_eq!(r.run(), RxPass::NoBuffers);
    assert_eq!(check_delivery(&r.asm.got, &frames[..15]), [14, 1]);
    r.fill(40, 1024);
    assert_eq!(r.run(), RxPass::Idle);
    assert!(!r.dev.rx_waiting());
    assert_eq!(check_delivery(&r.asm.got, &frames), [14, 1, 5]);
    let m = r.metrics.snapshot();
    assert_eq!(m.rx_no_buffers, 2);
    assert_eq!((m.rx_gso_frames, m.rx_coalesced_segments), (2, 19));
    assert_eq!(m.drops.total, 0);
}

/// A ring too small for a batch merged (8 descriptors of 1 KiB): the first merged frame
/// is as large as the whole ring holds (5 segments), none is larger, and the rest follows
/// as the guest hands buffers back: every segment once.
#[test]
fn small_ring_caps_the_merge() {
    let mut r = rig_sized(true, DEVICE_FEATURES, 8);
    let mut a = Flow::new(true, 3002);
    let frames: Vec<Vec<u8>> = (0..30).map(|_| a.seg(1428, ACK)).collect();
    r.send(&frames);
    let mut rounds = 0;
    while r.segments() < frames.len() {
        r.fill(8, 1024);
        r.run();
        rounds += 1;
        assert!(rounds < 100, "never finished");
    }
    let groups = check_delivery(&r.asm.got, &frames);
    // 74 + 5 x 1428 + 12 = 7226 bytes fit 8 KiB; 6 segments do not.
    assert_eq!(groups[0], 5, "{groups:?}");
    assert!(groups.iter().all(|&n| n <= 5), "{groups:?}");
    assert_eq!(r.metrics.snapshot().drops.total, 0);
}

/// Without MRG_RXBUF a merged frame must fit one buffer: 4 KiB buffers take two
/// segments merged; Linux's small 1526-byte buffers take none, and every frame still
/// arrives as it came.
#[test]
fn without_mergeable_buffers_a_merge_fits_one_buffer() {
    for (size, want) in [(4096u32, 2usize), (1526, 1)] {
        let mut r = rig(true, DEVICE_FEATURES & !FEATURE_MRG_RXBUF);
        let mut a = Flow::new(false, 3003);
        let frames: Vec<Vec<u8>> = (0..20).map(|_| a.seg(1448, ACK)).collect();
        r.fill(30, size);
        r.send(&frames);
        assert_eq!(r.run(), RxPass::Idle);
        let groups = check_delivery(&r.asm.got, &frames);
        assert_eq!(groups, vec![want; 20 / want], "buffers of {size}");
        assert_eq!(r.metrics.snapshot().drops.total, 0);
    }
}

/// Jumbo segments: the merged IP length stays within 65535 (7 of 8948 bytes, not 8).
#[test]
fn merged_ip_length_stays_within_16_bits() {
    for v6 in [false, true] {
        let mut r = rig(false, DEVICE_FEATURES);
        let mut a = Flow::new(v6, 3004);
        let mss = if v6 { 8940 } else { 8948 };
        let frames: Vec<Vec<u8>> = (0..8).map(|_| a.seg(mss, ACK)).collect();
        r.fill(200, 4096);
        r.send(&frames);
        assert_eq!(r.run(), RxPass::Idle);
        assert_eq!(check_delivery(&r.asm.got, &frames), [7, 1], "v6 {v6}");
    }
}

/// Merging follows what was negotiated: nothing without GUEST_TSO4/6, only IPv4 with
/// GUEST_TSO4 alone, nothing without GUEST_CSUM (which GUEST_TSO requires; the headers
/// then say nothing at all).
#[test]
fn merging_follows_the_negotiated_features() {
    let tso = FEATURE_GUEST_TSO4 | FEATURE_GUEST_TSO6;
    for (features, v4_merges, v6_merges) in [
        (DEVICE_FEATURES, true, true),
        (DEVICE_FEATURES & !tso, false, false),
        (DEVICE_FEATURES & !FEATURE_GUEST_TSO6, true, false),
        (DEVICE_FEATURES & !FEATURE_GUEST_TSO4, false, true),
        (DEVICE_FEATURES & !FEATURE_GUEST_CSUM, false, false),
    ] {
        let mut r = rig(true, features);
        let mut a = Flow::new(false, 3005);
        let mut b = Flow::new(true, 3006);
        let mut frames: Vec<Vec<u8>> = (0..3).map(|_| a.seg(1448, ACK)).collect();
        frames.extend((0..3).map(|_| b.seg(1428, ACK)));
        r.fill(50, 4096);
        r.send(&frames);
        assert_eq!(r.run(), RxPass::Idle);
        if features & FEATURE_GUEST_CSUM == 0 {
            let plain: Vec<Vec<u8>> = r.asm.got.iter().map(|g| g.frame.clone()).collect();
            assert_eq!(plain, frames);
            assert!(r.asm.got.iter().all(|g| g.hdr[..10] == [0; 10]));
            continue;
        }
        let mut want = if v4_merges { vec![3] } else { vec![1; 3] };
        want.extend(if v6_merges { vec![3] } else { vec![1; 3] });
        assert_eq!(
            check_delivery(&r.asm.got, &frames),
            want,
            "features {features:#x}"
        );
    }
}

/// What the generator makes.
#[derive(Debug, Clone)]
enum Ev {
    /// A data segment of flow `flow`: `size` 0 = the flow's MSS, 1 = shorter, 2 = longer.
    Data {
        flow: usize,
        size: u8,
        short: usize,
        psh: bool,
        gap: bool,
    },
    Fin {
        flow: usize,
    },
    PureAck {
        flow: usize,
    },
    /// The flow's options change from here on.
    NewOpts {
        flow: usize,
    },
    /// The flow's ack number moves from here on.
    NewAck {
        flow: usize,
    },
    Udp,
    NotIp,
    /// A hostile frame shaped like the flow's next segment.
    Hostile {
        flow: usize,
        kind: u8,
        at: usize,
    },
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        8 => (0..3usize, 0..3u8, 1..1400usize, prop::bool::weighted(0.1), prop::bool::weighted(0.05))
            .prop_map(|(flow, size, short, psh, gap)| Ev::Data { flow, size, short, psh, gap }),
        1 => (0..3usize).prop_map(|flow| Ev::Fin { flow }),
        1 => (0..3usize).prop_map(|flow| Ev::PureAck { flow }),
        1 => (0..3usize).prop_map(|flow| Ev::NewOpts { flow }),
        1 => (0..3usize).prop_map(|flow| Ev::NewAck { flow }),
        1 => Just(Ev::Udp),
        1 => Just(Ev::NotIp),
        2 => (0..3usize, 0..8u8, 0..2000usize).prop_map(|(flow, kind, at)| Ev::Hostile { flow, kind, at }),
    ]
}

/// Builds the frames of `events` and, independently of the device, which of them must
/// start a new guest frame: a data segment joins the one before when both are ACK-only
/// (PSH allowed on the joining one) segments with data of the same flow, the one before
/// not PSH and as long as the merge's first, the new one no longer, its sequence number
/// next, options and ack unchanged.
fn build(events: &[Ev]) -> Plan {
    let mss = [1448usize, 1436, 1428];
    let mut flows = [
        Flow::new(false, 4001),
        Flow::new(false, 4002),
        Flow::new(true, 4003),
    ];
    flows[1].counting = false;
    flows[1].id = 0;
    flows[1].opts = ts_opt(1);
    let mut p = Plan::default();
    // The open merge: flow, first payload, last payload, last PSH, segments.
    let mut open: Option<(usize, usize, usize, bool, usize)> = None;
    let mut ts = 1;
    for e in events {
        match *e {
            Ev::Data {
                flow,
                size,
                short,
                psh,
                gap,
            } => {
                let fl = &mut flows[flow];
                if gap {
                    fl.seq = fl.seq.wrapping_add(1000);
                }
                let len = match size {
                    0 => mss[flow],
                    1 => short.min(mss[flow] - 1),
                    _ => mss[flow] + 1 + short % 12,
                };
                let f = fl.seg(len, if psh { ACK | PSH } else { ACK });
                let joins = match open {
                    Some((of, first, last, lpsh, n)) => {
                        of == flow && !gap && !lpsh && last == first && len <= first && n < 32
                    }
                    None => false,
                };
                open = match open {
                    Some((of, first, _, _, n)) if joins => Some((of, first, len, psh, n + 1)),
                    _ => Some((flow, len, len, psh, 1)),
                };
                p.push(f, !joins);
            }
            Ev::Fin { flow } => {
                p.push(flows[flow].seg(100, ACK | FIN), true);
                open = None;
            }
            Ev::PureAck { flow } => {
                p.push(flows[flow].seg(0, ACK), true);
                open = None;
            }
            Ev::NewOpts { flow } => {
                ts += 1;
                flows[flow].opts = ts_opt(ts);
                if open.is_some_and(|o| o.0 == flow) {
                    open = None;
                }
            }
            Ev::NewAck { flow } => {
                flows[flow].ack = flows[flow].ack.wrapping_add(4096);
                if open.is_some_and(|o| o.0 == flow) {
                    open = None;
                }
            }
            Ev::Udp => {
                p.push(udp_frame(200), true);
                open = None;
            }
            Ev::NotIp => {
                p.push(common::frame(ts, 100), true);
                open = None;
            }
            Ev::Hostile { flow, kind, at } => {
                let fl = &flows[flow];
                let mut f = fl.frame_at(fl.seq, mss[flow], ACK);
                let l4 = l4_of(&f);
                match kind {
                    0 => f.truncate(1 + at % (l4 + 20)),
                    1 => {
                        // The IP length disagrees with the frame (checksum right).
                        let pos = if fl.v6 { 18 } else { 16 };
                        let v = be16(&f, pos) ^ (1 + (at % 50) as u16);
                        f[pos..pos + 2].copy_from_slice(&v.to_be_bytes());
                        fix_ip_csum(&mut f);
                    }
                    2 => {
                        // Data offset out of range, or pointing past the frame.
                        let doff = [0u8, 1, 4, 15][at % 4];
                        f[l4 + 12] = doff << 4;
                        f.truncate(l4 + 20 + at % 40);
                        fix_tcp_csum(&mut f);
                    }
                    3 => {
                        // ihl other than 5 / IPv6 next header other than TCP.
                        if fl.v6 {
                            f[20] = 0;
                        } else {
                            f[14] = 0x40 | (6 + (at % 10) as u8);
                            fix_ip_csum(&mut f);
                        }
                    }
                    4 => f[l4 - 2] ^= 0x11, // IPv4: checksum wrong; IPv6: an address
                    5 => {
                        // A fragment (IPv4), a next header other than TCP (IPv6).
                        f[20] |= 0x20;
                        fix_ip_csum(&mut f);
                        fix_tcp_csum(&mut f);
                    }
                    6 => f[12..14].copy_from_slice(&[0x81, 0x00]),
                    _ => {
                        // A frame the length of a header and no more.
                        f.truncate(l4 + 20);
                        f[l4 + 13] = ACK;
                        if fl.v6 {
                            f[18..20].copy_from_slice(&20u16.to_be_bytes());
                        } else {
                            f[16..18].copy_from_slice(&40u16.to_be_bytes());
                            fix_ip_csum(&mut f);
                        }
                        fix_tcp_csum(&mut f);
                    }
                }
                p.push(f, true);
                open = None;
            }
        }
    }
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Random interleavings of three flows (IPv4 counting ids, IPv4 fixed ids with
    /// options, IPv6) with gaps, PSH, FIN, empty segments, option and ack changes, other
    /// frames and hostile ones, as one batch over either backend: the guest gets every
    /// frame back exactly once, in order, byte for byte, merged exactly where the
    /// independent model says.
    #[test]
    fn random_interleavings_come_back_exactly(
        events in prop::collection::vec(ev(), 1..40),
        stream in any::<bool>(),
        size in prop::sample::select(vec![1536u32, 2048, 4096]),
    ) {
        let p = build(&events);
        // One batch: at most 32 frames.
        let frames = &p.frames[..p.frames.len().min(32)];
        let plan = Plan { frames: frames.to_vec(), starts: p.starts[..frames.len()].to_vec() };
        let mut r = rig(stream, DEVICE_FEATURES);
        r.fill(200, size);
        r.send(frames);
        prop_assert_eq!(r.run(), RxPass::Idle);
        let groups = check_delivery(&r.asm.got, frames);
        prop_assert_eq!(groups, plan.groups());
        let m = r.metrics.snapshot();
        prop_assert_eq!(m.drops.total, 0);
        prop_assert_eq!(m.rx_frames, frames.len() as u64);
    }

    /// Segments of one flow with one header byte changed anywhere (TCP checksum made
    /// right again, the IPv4 header checksum sometimes): never a panic, and every frame
    /// comes back exactly once, in order, byte for byte, whether it merged or not.
    #[test]
    fn mutated_headers_never_lose_or_corrupt(
        n in 2..24usize,
        v6 in any::<bool>(),
        victim in any::<prop::sample::Index>(),
        at in 0..74usize,
        xor in 1..=255u8,
        fix_ip in any::<bool>(),
        stream in any::<bool>(),
    ) {
        let mut a = Flow::new(v6, 5001);
        let mut frames: Vec<Vec<u8>> = (0..n).map(|_| a.seg(1000, ACK)).collect();
        let k = victim.index(n);
        let f = &mut frames[k];
        let l4 = l4_of(f);
        if at != l4 + 16 && at != l4 + 17 && at < f.len() {
            f[at] ^= xor;
        }
        if fix_ip {
            fix_ip_csum(f);
        }
        fix_tcp_csum(f);
        let mut r = rig(stream, DEVICE_FEATURES);
        r.fill(100, 2048);
        r.send(&frames);
        prop_assert_eq!(r.run(), RxPass::Idle);
        check_delivery(&r.asm.got, &frames);
        prop_assert_eq!(r.metrics.snapshot().drops.total, 0);
    }
}

/// A guest polling its used ring while the worker fills it (as a vCPU does) never sees
/// part of a frame: every used index it reads ends at a frame's last buffer, so Linux's
/// `receive_mergeable` never finds `num_buffers` entries missing (it drops such a frame,
/// `rx_length_errors`, which the real VM showed before the device published a frame's
/// buffers together). Merged frames over 1 KiB buffers span up to 46 of them.
#[test]
fn a_frames_buffers_become_visible_together() {
    use vnet_device::worker::WorkerOptions;
    let (a, mut peer) = UnixStream::pair().unwrap();
    let be = UnixStreamBackend::from_socket(a, &BackendOptions::default()).unwrap();
    let (mut g, h) = common::start(Box::new(be), DEVICE_FEATURES, WorkerOptions::default(), 256);
    let mut flow = Flow::new(false, 6001);
    let frames: Vec<Vec<u8>> = (0..640).map(|_| flow.seg(1448, ACK)).collect();
    let mut wire = Vec::new();
    for f in &frames {
        wire.extend_from_slice(&(f.len() as u32).to_be_bytes());
        wire.extend_from_slice(f);
    }
    let writer = std::thread::spawn(move || {
        peer.write_all(&wire).unwrap();
        peer
    });
    let mut asm = Asm::default();
    let mut looks = 0u64;
    let d = common::Deadline::new();
    loop {
        if g.rx.free_descs() > 0 {
            while g.rx.free_descs() > 0 {
                g.rx.add(&g.mem, &[Seg::write(1024)]).unwrap();
            }
            g.rx_kick.notify().unwrap();
        }
        // One read of the used index per call: what a driver's poll sees at once.
        let used = g.rx.take_used(&g.mem);
        looks += 1;
        for u in &used {
            asm.push(&g.mem, u);
        }
        assert!(
            asm.cur.is_none(),
            "the used index showed part of a frame (look {looks})"
        );
        if asm.segments() == frames.len() {
            break;
        }
        d.check("all frames");
    }
    let _peer = writer.join().unwrap();
    h.stop();
    h.join().unwrap();
    check_delivery(&asm.got, &frames);
    assert!(g.metrics.snapshot().rx_gso_frames > 0);
}
