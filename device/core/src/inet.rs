//! The Ethernet, IP and TCP header fields that flow classification (`crate::flow`), TX
//! segmentation (`crate::gso`) and receive coalescing (`crate::gro`) read; the last two
//! also turn one TCP segment's headers into another's, with new lengths, a new IPv4
//! header checksum and a new pseudo-header sum.

use crate::csum::Csum;

/// Ethernet header length (no VLAN tag).
pub const ETH_HLEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// An IPv6 header without extension headers.
pub const IPV6_HLEN: usize = 40;
pub const IPPROTO_TCP: u8 = 6;
/// TCP flags byte (offset 13 of the TCP header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_CWR: u8 = 0x80;
/// Where the TCP checksum lies in the TCP header.
pub const TCP_CSUM_OFFSET: u16 = 16;

/// The big-endian u16 at `at` of `b`.
pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The big-endian u16 at `at` of `b`, `None` where `b` ends first: for bytes whose
/// length nothing has checked yet.
pub fn get_be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// The big-endian u32 at `at` of `b`.
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Makes the IP header `ip` (IPv4 with any options, or IPv6 without extension headers)
/// the header of a TCP segment of `tcp_len` bytes (TCP header and payload): the IPv4
/// total length and header checksum (its other fields, the id included, as they are), or
/// the IPv6 payload length. Returns the segment's TCP pseudo-header sum.
pub fn set_tcp_segment_len(ip: &mut [u8], v6: bool, tcp_len: usize) -> Csum {
    let mut pseudo = Csum::new();
    if v6 {
        ip[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        pseudo.add(&ip[8..40]);
    } else {
        let total = ip.len() + tcp_len;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[10..12].fill(0);
        let mut c = Csum::new();
        c.add(ip);
        ip[10..12].copy_from_slice(&(!c.folded()).to_be_bytes());
        pseudo.add(&ip[12..20]);
    }
    // Protocol and TCP length: as 32 bits (IPv6) or 16 + 16 (IPv4), they sum alike.
    pseudo.add(&[0, IPPROTO_TCP]);
    pseudo.add(&(tcp_len as u32).to_be_bytes());
    pseudo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_be16_reads_inside_the_bytes_and_refuses_past_their_end() {
        let b = [0x12, 0x34, 0x56];
        assert_eq!(get_be16(&b, 0), Some(0x1234));
        assert_eq!(get_be16(&b, 1), Some(0x3456));
        assert_eq!(get_be16(&b, 2), None);
        assert_eq!(get_be16(&b, 3), None);
        assert_eq!(get_be16(&b, usize::MAX), None);
        assert_eq!(get_be16(&[], 0), None);
    }
}
