//! Receive coalescing (VIRTIO_NET_F_GUEST_TSO4/6): consecutive frames of one RX batch that
//! are segments of one TCP stream go to the guest as one GSO frame, as Linux GRO
//! (`tcp_gro_receive`) and a tap device with a vnet header hand them to a guest. The guest
//! then walks its network stack once per merged frame instead of once per segment, which
//! under an emulated CPU is what limits receive throughput at MTU 1500.
//!
//! Everything here reads bytes the proxy wrote and never trusts them: a frame whose headers
//! are truncated, out of range or disagree with its length simply does not merge and is
//! delivered as it came. No allocation: the merged headers go into the caller's buffer.
//!
//! What merges (stricter than Linux in places, so that the guest can get back exactly the
//! proxy's segments by cutting the merged frame every `gso_size` bytes, as Linux's own
//! `tcp_gso_segment` would):
//! - Ethernet type 0x0800 with an IPv4 header of 20 bytes (ihl 5) whose checksum verifies,
//!   not a fragment, protocol TCP; or 0x86DD with next header TCP (no extension headers);
//!   the IP length exactly the frame's length less the Ethernet header;
//! - the same Ethernet header, addresses, TOS/traffic class, flow label, TTL/hop limit,
//!   DF, ports, ack number, data offset, window, urgent pointer and TCP options, byte for
//!   byte; IPv4 ids all the same (passt sends 0) or counting up by one per segment;
//! - TCP flags ACK, or ACK|PSH on the last merged segment; any other flag (SYN, FIN, RST,
//!   URG, CWR, ECE, the reserved bits) or an empty payload keeps a segment out;
//! - each segment's sequence number is the previous one's plus its payload; every segment
//!   but the last carries the first one's payload length, the last no more than that;
//! - the merged IP length at most 65535 bytes, the frame within a cap the caller gives
//!   (what the guest's buffers can take).

use crate::csum::Csum;
use crate::inet::{
    be16, be32, set_tcp_segment_len, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HLEN, IPPROTO_TCP,
    IPV6_HLEN, TCP_ACK, TCP_CSUM_OFFSET, TCP_PSH,
};
use crate::net::{RxGso, GSO_TCPV4, GSO_TCPV6};

/// Longest header a merged frame carries: Ethernet, IPv6 (40 bytes) and TCP with 40
/// bytes of options.
pub const MAX_HDR: usize = ETH_HLEN + IPV6_HLEN + 60;
/// Most bytes after the Ethernet header (IPv4 total length, IPv6 header plus payload
/// length, both 16-bit fields; the guest's GRO never builds more either).
pub const MAX_L3: usize = 65535;

/// The GUEST_TSO features the guest negotiated (with GUEST_CSUM, which the spec requires
/// for them): which IP versions may be merged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allow {
    pub v4: bool,
    pub v6: bool,
}

impl Allow {
    pub fn any(&self) -> bool {
        self.v4 || self.v6
    }
}

/// The headers of one frame that parsed as a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub v6: bool,
    /// Offset of the TCP header in the frame.
    pub l4: usize,
    /// Offset of the payload: the length of every header together.
    pub hdr_len: usize,
    /// Payload bytes.
    pub payload: usize,
    pub seq: u32,
    /// The TCP flags byte.
    pub flags: u8,
}

impl Segment {
    /// May be part of a merged frame: flags ACK (PSH allowed, it ends the merge), no
    /// reserved bits, some payload.
    fn mergeable(&self, frame: &[u8]) -> bool {
        self.flags & !TCP_PSH == TCP_ACK && frame[self.l4 + 12] & 0x0f == 0 && self.payload > 0
    }
}

/// The frame's headers if it is a TCP segment over IPv4 (ihl 5, not a fragment, checksum
/// good) or IPv6 (next header TCP) whose IP length matches the frame exactly and whose
/// TCP header lies within it; `None` for anything else, however malformed.
pub fn parse(f: &[u8]) -> Option<Segment> {
    if f.len() < ETH_HLEN {
        return None;
    }
    let (v6, l4) = match be16(f, 12) {
        ETHERTYPE_IPV4 => {
            if f.len() < ETH_HLEN + 20
                || f[14] != 0x45
                || usize::from(be16(f, 16)) != f.len() - ETH_HLEN
                // Reserved bit, MF and fragment offset clear (DF may be set).
                || be16(f, 20) & 0xbfff != 0
                || f[23] != IPPROTO_TCP
            {
                return None;
            }
            let mut c = Csum::new();
            c.add(&f[14..34]);
            if c.folded() != 0xffff {
                return None;
            }
            (false, ETH_HLEN + 20)
        }
        ETHERTYPE_IPV6 => {
            if f.len() < ETH_HLEN + IPV6_HLEN
                || f[14] >> 4 != 6
                || usize::from(be16(f, 18)) != f.len() - ETH_HLEN - IPV6_HLEN
                || f[20] != IPPROTO_TCP
            {
                return None;
            }
            (true, ETH_HLEN + IPV6_HLEN)
        }
        _ => return None,
    };
    if f.len() < l4 + 20 {
        return None;
    }
    let doff = usize::from(f[l4 + 12] >> 4) * 4;
    if doff < 20 || f.len() < l4 + doff {
        return None;
    }
    Some(Segment {
        v6,
        l4,
        hdr_len: l4 + doff,
        payload: f.len() - l4 - doff,
        seq: be32(f, l4 + 4),
        flags: f[l4 + 13],
    })
}

/// `b` belongs to the same stream as the merge's first segment `a` and carries the same
/// headers but for the fields a merged frame rebuilds (lengths, IP checksum and id,
/// sequence number, TCP checksum, PSH).
fn same_flow(fa: &[u8], a: &Segment, fb: &[u8], b: &Segment) -> bool {
    if a.v6 != b.v6 || a.hdr_len != b.hdr_len || fa[..ETH_HLEN] != fb[..ETH_HLEN] {
        return false;
    }
    let ip_same = if a.v6 {
        // Version, traffic class, flow label; next header, hop limit; addresses.
        fa[14..18] == fb[14..18] && fa[20..54] == fb[20..54]
    } else {
        // TOS; DF, TTL, protocol; addresses.
        fa[15] == fb[15] && fa[20..24] == fb[20..24] && fa[26..34] == fb[26..34]
    };
    let l4 = a.l4;
    ip_same
        // Ports.
        && fa[l4..l4 + 4] == fb[l4..l4 + 4]
        // Ack number and data offset.
        && fa[l4 + 8..l4 + 13] == fb[l4 + 8..l4 + 13]
        // Window.
        && fa[l4 + 14..l4 + 16] == fb[l4 + 14..l4 + 16]
        // Urgent pointer and options.
        && fa[l4 + 18..a.hdr_len] == fb[l4 + 18..a.hdr_len]
}

/// How IPv4 ids go along a merge, learned from its second segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ids {
    Fixed,
    Counting,
}

/// What [`plan`] found: the first `count` frames go out as one frame of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merge {
    pub first: Segment,
    pub count: usize,
    pub len: usize,
    /// The last merged segment had PSH (the merged frame carries it).
    pub psh: bool,
}

/// How many of `frames` (in order; `None` for an entry that is not a frame, which ends
/// the merge) merge with the first into one frame of at most `cap` bytes and `max_count`
/// segments. `None`: the first is not a segment that may start a merge (it goes out as
/// it is); otherwise `count` is at least 1.
pub fn plan<'a>(
    mut frames: impl Iterator<Item = Option<&'a [u8]>>,
    allow: Allow,
    cap: usize,
    max_count: usize,
) -> Option<Merge> {
    let f0 = frames.next()??;
    let s0 = parse(f0)?;
    if !(if s0.v6 { allow.v6 } else { allow.v4 }) || !s0.mergeable(f0) {
        return None;
    }
    let mut m = Merge {
        first: s0,
        count: 1,
        len: f0.len(),
        psh: s0.flags & TCP_PSH != 0,
    };
    let mut ids = None;
    let mut next_seq = s0.seq.wrapping_add(s0.payload as u32);
    let mut last = s0.payload;
    while !m.psh && last == s0.payload && m.count < max_count {
        let Some(Some(f)) = frames.next() else {
            break;
        };
        let Some(s) = parse(f) else {
            break;
        };
        if !s.mergeable(f) || s.seq != next_seq || s.payload > s0.payload {
            break;
        }
        if !same_flow(f0, &s0, f, &s) {
            break;
        }
        if !s0.v6 {
            let (id0, id) = (be16(f0, 18), be16(f, 18));
            let counted = id0.wrapping_add(m.count as u16);
            ids = match ids {
                None if id == id0 => Some(Ids::Fixed),
                None if id == counted => Some(Ids::Counting),
                Some(Ids::Fixed) if id == id0 => ids,
                Some(Ids::Counting) if id == counted => ids,
                _ => break,
            };
        }
        let len = m.len + s.payload;
        if len > cap || len - ETH_HLEN > MAX_L3 {
            break;
        }
        m.len = len;
        m.count += 1;
        m.psh = s.flags & TCP_PSH != 0;
        next_seq = next_seq.wrapping_add(s.payload as u32);
        last = s.payload;
    }
    Some(m)
}

/// Writes the merged frame's headers into `out` (the first segment's, `first`, with the
/// lengths, the IPv4 checksum, PSH and the TCP checksum field set for the whole frame)
/// and returns their length and the virtio_net_hdr GSO fields. The TCP checksum field
/// holds the pseudo-header sum for the merged length, not complemented: the guest gets
/// the frame as CHECKSUM_PARTIAL (NEEDS_CSUM), as Linux's GRO (`tcp_gro_complete`) and a
/// tap device leave it, and completes the sum itself only if it ever sends it on.
pub fn merged_header(first: &[u8], m: &Merge, out: &mut [u8; MAX_HDR]) -> (usize, RxGso) {
    let s = &m.first;
    let (l4, hl) = (s.l4, s.hdr_len);
    out[..hl].copy_from_slice(&first[..hl]);
    out[l4 + 13] = TCP_ACK | if m.psh { TCP_PSH } else { 0 };
    let pseudo = set_tcp_segment_len(&mut out[ETH_HLEN..l4], s.v6, m.len - l4);
    let field = l4 + usize::from(TCP_CSUM_OFFSET);
    out[field..field + 2].copy_from_slice(&pseudo.folded().to_be_bytes());
    let gso = RxGso {
        gso_type: if s.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
        hdr_len: hl as u16,
        gso_size: s.payload as u16,
        csum_start: l4 as u16,
        csum_offset: TCP_CSUM_OFFSET,
    };
    (hl, gso)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP/IPv4 segment with a correct IP header checksum.
    fn v4(seq: u32, payload: usize, flags: u8, id: u16) -> Vec<u8> {
        let mut f = vec![0u8; 54 + payload];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
        f[18..20].copy_from_slice(&id.to_be_bytes());
        f[20] = 0x40;
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 2, 2]);
        f[30..34].copy_from_slice(&[10, 0, 2, 15]);
        let mut c = Csum::new();
        c.add(&f[14..34]);
        f[24..26].copy_from_slice(&(!c.folded()).to_be_bytes());
        f[34..36].copy_from_slice(&80u16.to_be_bytes());
        f[36..38].copy_from_slice(&40000u16.to_be_bytes());
        f[38..42].copy_from_slice(&seq.to_be_bytes());
        f[42..46].copy_from_slice(&7u32.to_be_bytes());
        f[46] = 5 << 4;
        f[47] = flags;
        f[48..50].copy_from_slice(&512u16.to_be_bytes());
        for (i, b) in f[54..].iter_mut().enumerate() {
            *b = (seq as usize + i) as u8;
        }
        f
    }

    fn plan_of(frames: &[Vec<u8>], cap: usize) -> Option<Merge> {
        let all = Allow { v4: true, v6: true };
        plan(frames.iter().map(|f| Some(&f[..])), all, cap, 32)
    }

    #[test]
    fn a_run_merges_until_psh() {
        let fs = [
            v4(100, 1000, TCP_ACK, 0),
            v4(1100, 1000, TCP_ACK, 0),
            v4(2100, 1000, TCP_ACK | TCP_PSH, 0),
            v4(3100, 1000, TCP_ACK, 0),
        ];
        let m = plan_of(&fs, usize::MAX).unwrap();
        assert_eq!((m.count, m.len, m.psh), (3, 54 + 3000, true));
        // The cap stops it earlier.
        let m = plan_of(&fs, 54 + 2000).unwrap();
        assert_eq!(m.count, 2);
        let m = plan_of(&fs, 54 + 1999).unwrap();
        assert_eq!(m.count, 1);
    }

    #[test]
    fn what_ends_a_merge() {
        let base = v4(100, 1000, TCP_ACK, 5);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("seq gap", v4(1101, 1000, TCP_ACK, 5)),
            ("longer", v4(1100, 1001, TCP_ACK, 5)),
            ("FIN", v4(1100, 1000, TCP_ACK | 0x01, 5)),
            ("no payload", v4(1100, 0, TCP_ACK, 5)),
            ("id jump", v4(1100, 1000, TCP_ACK, 7)),
            ("other ack", {
                let mut f = v4(1100, 1000, TCP_ACK, 5);
                f[45] = 8;
                f
            }),
            ("bad IP checksum", {
                let mut f = v4(1100, 1000, TCP_ACK, 5);
                f[24] ^= 1;
                f
            }),
            ("IP length off", {
                let mut f = v4(1100, 1000, TCP_ACK, 5);
                f.push(0);
                f
            }),
        ];
        for (what, f) in cases {
            let m = plan_of(&[base.clone(), f], usize::MAX).unwrap();
            assert_eq!(m.count, 1, "{what}");
        }
        // Fixed and counting ids both merge; a mix does not.
        for ids in [[5, 5, 5], [5, 6, 7], [u16::MAX, 0, 1]] {
            let fs: Vec<_> = (0..3)
                .map(|i| v4(100 + 1000 * i, 1000, TCP_ACK, ids[i as usize]))
                .collect();
            assert_eq!(plan_of(&fs, usize::MAX).unwrap().count, 3, "{ids:?}");
        }
        let fs: Vec<_> = [5, 6, 6]
            .iter()
            .enumerate()
            .map(|(i, &id)| v4(100 + 1000 * i as u32, 1000, TCP_ACK, id))
            .collect();
        assert_eq!(plan_of(&fs, usize::MAX).unwrap().count, 2);
    }

    #[test]
    fn merged_header_fields() {
        let fs = [v4(100, 1000, TCP_ACK, 0), v4(1100, 600, TCP_ACK, 0)];
        let m = plan_of(&fs, usize::MAX).unwrap();
        assert_eq!(m.count, 2);
        let mut out = [0u8; MAX_HDR];
        let (hl, gso) = merged_header(&fs[0], &m, &mut out);
        assert_eq!(hl, 54);
        assert_eq!(
            (
                gso.gso_type,
                gso.hdr_len,
                gso.gso_size,
                gso.csum_start,
                gso.csum_offset
            ),
            (GSO_TCPV4, 54, 1000, 34, 16)
        );
        assert_eq!(be16(&out, 16), 40 + 1600);
        let mut c = Csum::new();
        c.add(&out[14..34]);
        assert_eq!(c.folded(), 0xffff, "IP header checksum");
        // 10.0.2.2 + 10.0.2.15 + 6 + 1620, folded.
        let want = 0x0a00 + 0x0202 + 0x0a00 + 0x020f + 6 + 1620;
        assert_eq!(be16(&out, 50), want);
    }

    #[test]
    fn hostile_headers_never_panic() {
        let good = v4(100, 100, TCP_ACK, 0);
        for cut in 0..good.len() {
            let _ = parse(&good[..cut]);
        }
        let mut f = good.clone();
        for doff in 0..16u8 {
            f[46] = doff << 4;
            let _ = parse(&f);
        }
        let mut f = good.clone();
        for len in [0u16, 1, 19, 20, 39, 40, 41, 0xffff] {
            f[16..18].copy_from_slice(&len.to_be_bytes());
            assert!(parse(&f).is_none(), "IP length {len}");
        }
    }
}
