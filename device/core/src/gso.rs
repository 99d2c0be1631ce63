//! TX segmentation offload (VIRTIO_NET_F_HOST_TSO4 / HOST_TSO6): a guest that negotiated
//! them hands over TCP segments of up to 64 KiB with `gso_type` TCPV4 or TCPV6 and
//! `gso_size` (the MSS) in the virtio_net_hdr; the device cuts each into frames of at most
//! `gso_size` payload bytes, as Linux's GSO (`tcp_gso_segment`, `inet_gso_segment`) does
//! for a NIC without TSO: every segment carries a copy of the Ethernet, IP and TCP headers
//! with, per segment, the IPv4 total length, an IPv4 id one higher than the segment before
//! and the header checksum (or the IPv6 payload length), the TCP sequence number advanced
//! by the payload before it, FIN and PSH only on the last segment, CWR only on the first,
//! and the TCP checksum over the pseudo-header, the TCP header and that segment's payload.
//!
//! The headers are parsed here from the frame's own bytes (`hdr_len` in the virtio header
//! is a hint the device does not need and does not trust). Anything the device cannot
//! cut exactly is refused with a [`GsoFault`], which makes the chain malformed
//! (`crate::net::ChainError::BadGso`). `crate::net::TxChain` keeps a parsed [`Gso`] and
//! builds segment headers from it into storage of its own; the payloads go out straight
//! from guest memory.

use std::ops::Range;

use crate::inet::{
    be16, be32, set_tcp_segment_len, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HLEN, IPPROTO_TCP,
    IPV6_HLEN, TCP_CSUM_OFFSET, TCP_CWR, TCP_FIN, TCP_PSH,
};
use crate::net::{TxHeader, HDR_F_NEEDS_CSUM};

/// Longest header block a segment carries: Ethernet (14), IPv4 with options (60), TCP with
/// options (60). IPv6 (40 bytes, no extension headers) fits in less.
pub const GSO_HDR_MAX: usize = 14 + 60 + 60;

/// Why a GSO request cannot be honoured (the frame is then a malformed chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GsoFault {
    #[error("gso_size is 0")]
    ZeroSize,
    #[error("NEEDS_CSUM is not set (segments need their TCP checksums computed)")]
    NoNeedsCsum,
    #[error("headers need {need} bytes and the frame has {len}")]
    Truncated { need: usize, len: usize },
    #[error("EtherType {0:#06x} is neither IPv4 nor IPv6 (VLAN tags are not cut)")]
    EtherType(u16),
    #[error("gso_type is for IPv{want} but the frame is IPv{got}")]
    Family { want: u8, got: u8 },
    #[error("IP version field is {0}")]
    IpVersion(u8),
    #[error("IPv4 header length is {0} words (at least 5)")]
    Ihl(u8),
    #[error("the IPv4 packet is a fragment")]
    Fragment,
    #[error(
        "IP protocol (IPv6: next header) {0} is not TCP (6); IPv6 extension headers are not cut"
    )]
    NotTcp(u8),
    #[error("TCP data offset is {0} words (at least 5)")]
    Doff(u8),
    #[error("csum_start {start} is not the TCP header's offset {tcp}")]
    CsumStart { start: u16, tcp: usize },
    #[error("csum_offset {0} is not TCP's checksum field (16)")]
    CsumOffset(u16),
    #[error("a segment's IPv4 packet would be {0} bytes, over IPv4's 65535")]
    TooLong(usize),
}

/// A TCP segment to cut, its headers parsed and copied out of the frame.
#[derive(Debug, Clone, Copy)]
pub struct Gso {
    /// The frame's header block (Ethernet + IP + TCP), as the guest wrote it.
    hdr: [u8; GSO_HDR_MAX],
    /// Offset of the TCP header (the IP header is at 14).
    l4: usize,
    /// Length of the header block (TCP header included).
    hlen: usize,
    v6: bool,
    /// Payload bytes per segment (`gso_size`, at least 1).
    mss: usize,
    /// Payload bytes of the whole frame (after the header block).
    plen: usize,
}

impl Gso {
    /// Parses the headers of a frame of `len` bytes whose first bytes are `prefix` (at
    /// least `min(len, GSO_HDR_MAX)` of them), for a header `h` asking for TCPv4 (`v6`
    /// false) or TCPv6 segmentation.
    pub fn parse(h: &TxHeader, prefix: &[u8], len: usize, v6: bool) -> Result<Gso, GsoFault> {
        if h.gso_size == 0 {
            return Err(GsoFault::ZeroSize);
        }
        if h.flags & HDR_F_NEEDS_CSUM == 0 {
            return Err(GsoFault::NoNeedsCsum);
        }
        let have = prefix.len().min(len);
        let need = |n: usize| {
            if n > have {
                Err(GsoFault::Truncated { need: n, len })
            } else {
                Ok(())
            }
        };
        need(ETH_HLEN)?;
        let want = if v6 { 6 } else { 4 };
        let got = match be16(prefix, 12) {
            ETHERTYPE_IPV4 => 4,
            ETHERTYPE_IPV6 => 6,
            t => return Err(GsoFault::EtherType(t)),
        };
        if got != want {
            return Err(GsoFault::Family { want, got });
        }
        let l3 = ETH_HLEN;
        let l4 = if v6 {
            need(l3 + IPV6_HLEN)?;
            let version = prefix[l3] >> 4;
            if version != 6 {
                return Err(GsoFault::IpVersion(version));
            }
            let next = prefix[l3 + 6];
            if next != IPPROTO_TCP {
                return Err(GsoFault::NotTcp(next));
            }
            l3 + IPV6_HLEN
        } else {
            need(l3 + 20)?;
            let version = prefix[l3] >> 4;
            if version != 4 {
                return Err(GsoFault::IpVersion(version));
            }
            let ihl = prefix[l3] & 0x0f;
            if ihl < 5 {
                return Err(GsoFault::Ihl(ihl));
            }
            // More-fragments flag or a fragment offset.
            if be16(prefix, l3 + 6) & 0x3fff != 0 {
                return Err(GsoFault::Fragment);
            }
            let proto = prefix[l3 + 9];
            if proto != IPPROTO_TCP {
                return Err(GsoFault::NotTcp(proto));
            }
            let l4 = l3 + 4 * usize::from(ihl);
            need(l4)?;
            l4
        };
        need(l4 + 20)?;
        let doff = prefix[l4 + 12] >> 4;
        if doff < 5 {
            return Err(GsoFault::Doff(doff));
        }
        let hlen = l4 + 4 * usize::from(doff);
        need(hlen)?;
        if usize::from(h.csum_start) != l4 {
            return Err(GsoFault::CsumStart {
                start: h.csum_start,
                tcp: l4,
            });
        }
        if h.csum_offset != TCP_CSUM_OFFSET {
            return Err(GsoFault::CsumOffset(h.csum_offset));
        }
        let mss = usize::from(h.gso_size);
        let plen = len - hlen;
        // The largest segment's IPv4 total length must fit its 16 bits (a 65550-byte
        // frame unsegmented would not; IPv6's payload length always does here).
        let ip_len = hlen - l3 + mss.min(plen);
        if !v6 && ip_len > usize::from(u16::MAX) {
            return Err(GsoFault::TooLong(ip_len));
        }
        let mut hdr = [0u8; GSO_HDR_MAX];
        hdr[..hlen].copy_from_slice(&prefix[..hlen]);
        Ok(Gso {
            hdr,
            l4,
            hlen,
            v6,
            mss,
            plen,
        })
    }

    /// Length of the header block every segment starts with.
    pub fn header_len(&self) -> usize {
        self.hlen
    }

    /// Segments the frame is cut into: one per `gso_size` payload bytes, at least one (a
    /// frame whose payload fits one segment goes out as it is, its checksum completed).
    /// At most 65550 (a 64 KiB frame cut into 1-byte segments): bounded by the chain.
    pub fn segments(&self) -> usize {
        self.plen.div_ceil(self.mss).max(1)
    }

    /// Where segment `i`'s payload lies in the frame.
    pub fn payload(&self, i: usize) -> Range<usize> {
        let start = (i * self.mss).min(self.plen);
        let end = (start + self.mss).min(self.plen);
        self.hlen + start..self.hlen + end
    }

    /// Length of segment `i` as sent: the header block and its payload.
    pub fn segment_len(&self, i: usize) -> usize {
        self.hlen + self.payload(i).len()
    }

    /// Writes segment `i`'s header block into `out` (exactly [`Gso::header_len`] bytes),
    /// given the folded ones'-complement sum of its payload (`Csum::folded` over the
    /// payload's bytes, which start at an even offset of the TCP segment).
    pub fn write_header(&self, i: usize, payload_sum: u16, out: &mut [u8]) {
        let (l3, l4, hlen) = (ETH_HLEN, self.l4, self.hlen);
        out.copy_from_slice(&self.hdr[..hlen]);
        let n = self.payload(i).len();
        let last = i + 1 >= self.segments();
        let tcp_len = hlen - l4 + n;
        if !self.v6 {
            // Linux's GSO numbers the segments' ids up from the first one's.
            let id = be16(&self.hdr, l3 + 4).wrapping_add(i as u16);
            out[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
        }
        let pseudo = set_tcp_segment_len(&mut out[l3..l4], self.v6, tcp_len);
        let seq = be32(&self.hdr, l4 + 4).wrapping_add((i * self.mss) as u32);
        out[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = out[l4 + 13];
        if !last {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        out[l4 + 13] = flags;
        let field = l4 + usize::from(TCP_CSUM_OFFSET);
        out[field..field + 2].fill(0);
        let mut c = pseudo;
        c.add(&out[l4..hlen]);
        // The TCP header is a whole number of 32-bit words, so the payload's words line
        // up with the sum's.
        c.add(&payload_sum.to_be_bytes());
        out[field..field + 2].copy_from_slice(&(!c.folded()).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tso(gso_type: u8, gso_size: u16, csum_start: u16) -> TxHeader {
        TxHeader {
            flags: HDR_F_NEEDS_CSUM,
            gso_type,
            hdr_len: 0,
            gso_size,
            csum_start,
            csum_offset: TCP_CSUM_OFFSET,
        }
    }

    /// Ethernet + IPv4 (ihl 5) + TCP (doff 5) headers before `payload` bytes.
    fn v4_frame(payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 54 + payload];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[23] = IPPROTO_TCP;
        f[14 + 20 + 12] = 0x50;
        f
    }

    #[test]
    fn segment_arithmetic() {
        let f = v4_frame(10);
        let g = Gso::parse(&tso(1, 4, 34), &f, f.len(), false).unwrap();
        assert_eq!(g.segments(), 3);
        assert_eq!(
            (0..3).map(|i| g.payload(i)).collect::<Vec<_>>(),
            [54..58, 58..62, 62..64]
        );
        assert_eq!(g.segment_len(2), 56);
        // No payload at all: one segment of headers.
        let f = v4_frame(0);
        let g = Gso::parse(&tso(1, 4, 34), &f, f.len(), false).unwrap();
        assert_eq!((g.segments(), g.payload(0)), (1, 54..54));
    }

    #[test]
    fn refusals_name_the_fault() {
        let f = v4_frame(100);
        let p = |h: &TxHeader, f: &[u8], v6| Gso::parse(h, f, f.len(), v6).unwrap_err();
        assert_eq!(p(&tso(1, 0, 34), &f, false), GsoFault::ZeroSize);
        let plain = TxHeader {
            flags: 0,
            ..tso(1, 1448, 34)
        };
        assert_eq!(p(&plain, &f, false), GsoFault::NoNeedsCsum);
        assert_eq!(
            p(&tso(1, 1448, 34), &f, true),
            GsoFault::Family { want: 6, got: 4 }
        );
        assert_eq!(
            p(&tso(1, 1448, 20), &f, false),
            GsoFault::CsumStart { start: 20, tcp: 34 }
        );
        let off = TxHeader {
            csum_offset: 6,
            ..tso(1, 1448, 34)
        };
        assert_eq!(p(&off, &f, false), GsoFault::CsumOffset(6));
        let mut bad = f.clone();
        bad[14] = 0x44;
        assert_eq!(p(&tso(1, 1448, 34), &bad, false), GsoFault::Ihl(4));
        let mut bad = f.clone();
        bad[14] = 0x4f; // 60-byte IPv4 header: the TCP header would need 94 + 20 bytes
        assert_eq!(
            p(&tso(1, 1448, 74), &bad[..90], false),
            GsoFault::Truncated { need: 94, len: 90 }
        );
        let mut bad = f.clone();
        bad[23] = 17;
        assert_eq!(p(&tso(1, 1448, 34), &bad, false), GsoFault::NotTcp(17));
        let mut bad = f.clone();
        bad[20] = 0x20; // more fragments
        assert_eq!(p(&tso(1, 1448, 34), &bad, false), GsoFault::Fragment);
        let mut bad = f.clone();
        bad[46] = 0x40;
        assert_eq!(p(&tso(1, 1448, 34), &bad, false), GsoFault::Doff(4));
        let mut bad = f.clone();
        bad[12] = 0x81;
        bad[13] = 0x00;
        assert_eq!(
            p(&tso(1, 1448, 34), &bad, false),
            GsoFault::EtherType(0x8100)
        );
        assert_eq!(
            p(&tso(1, 1448, 34), &f[..40], false),
            GsoFault::Truncated { need: 54, len: 40 }
        );
    }

    proptest! {
        /// Any payload length and MSS: the segments' payloads tile the frame's payload
        /// exactly once, in order, none longer than the MSS and none empty (but a lone
        /// segment of an empty payload), and the count is what division says.
        #[test]
        fn segments_tile_the_payload(plen in 0usize..65496, mss in 1u16..=u16::MAX) {
            let f = v4_frame(plen);
            let g = Gso::parse(&tso(1, mss, 34), &f, f.len(), false).unwrap();
            let n = g.segments();
            prop_assert_eq!(n, plen.div_ceil(usize::from(mss)).max(1));
            let mut pos = 54;
            for i in 0..n {
                let r = g.payload(i);
                prop_assert_eq!(r.start, pos);
                prop_assert!(r.len() <= usize::from(mss));
                prop_assert!(!r.is_empty() || plen == 0);
                pos = r.end;
            }
            prop_assert_eq!(pos, f.len());
        }
    }
}
