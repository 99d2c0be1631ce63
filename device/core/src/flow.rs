//! Which flow a TX frame belongs to, from its Ethernet / IP / TCP-UDP headers: what the
//! `small-first` retry policy (`crate::retry_policy`) needs to let frames of *other* flows
//! go ahead of a deferred frame while keeping the order within each flow.
//!
//! The answer is deliberately cautious. A frame gets a [`FlowKey`] only when every header
//! up to the ports is present and plain: Ethernet with at most two VLAN tags, then IPv4
//! (not a fragment) or IPv6 (no extension headers: they are not parsed), then TCP or UDP.
//! Anything else (truncated headers, fragments, ARP, unknown ethertypes, other transport
//! protocols) is `None`, "no flow", and the device never reorders such a frame relative to
//! anything: two frames whose flow is unknown may well be the same flow.

use crate::inet::{be16, get_be16, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_HLEN, IPPROTO_TCP};

/// Bytes of a frame's start that [`classify`] may look at: Ethernet + 2 VLAN tags (22),
/// the longest IPv4 header (60) and a TCP header without options (20) take 102.
pub const HEADER_PREFIX: usize = 128;

/// 802.1Q customer tag and 802.1ad service tag.
const ETHERTYPE_VLAN: [u16; 2] = [0x8100, 0x88a8];
const MAX_VLAN_TAGS: usize = 2;
const IPPROTO_UDP: u8 = 17;

/// One transport flow as the frame's headers name it: VLAN tags, IP version, addresses,
/// protocol and ports. Opaque: only compared for equality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// VLAN ids (12 bits) of up to two tags, 0xffff where there is no tag.
    vlans: [u16; MAX_VLAN_TAGS],
    /// 4 or 6.
    version: u8,
    proto: u8,
    /// IPv4 addresses in the first 4 bytes, the rest zero.
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
}

/// The flow of a frame whose first bytes are `head` (at most its whole length) and whose
/// length is `frame_len`; `None` when the headers are not a plain TCP/UDP packet over
/// IPv4 or IPv6 (see the module documentation). Never panics, whatever the bytes.
pub fn classify(head: &[u8], frame_len: usize) -> Option<FlowKey> {
    let head = &head[..head.len().min(frame_len)];
    let mut at = ETH_HLEN - 2;
    let mut vlans = [0xffff; MAX_VLAN_TAGS];
    let mut ethertype = get_be16(head, at)?;
    at += 2;
    let mut tags = 0;
    while ETHERTYPE_VLAN.contains(&ethertype) {
        if tags == MAX_VLAN_TAGS {
            return None;
        }
        vlans[tags] = get_be16(head, at)? & 0x0fff;
        ethertype = get_be16(head, at + 2)?;
        at += 4;
        tags += 1;
    }
    let l3 = at;
    // Bytes of the frame from the IP header on (Ethernet may pad short packets).
    let l3_len = frame_len.checked_sub(l3)?;
    let (version, proto, src, dst, l4) = match ethertype {
        ETHERTYPE_IPV4 => {
            let b0 = *head.get(l3)?;
            let ihl = usize::from(b0 & 0x0f) * 4;
            if b0 >> 4 != 4 || ihl < 20 {
                return None;
            }
            let ip = head.get(l3..l3 + ihl)?;
            let total = usize::from(be16(ip, 2));
            if total < ihl || total > l3_len {
                return None;
            }
            // More-fragments flag or a fragment offset: the ports are in the first
            // fragment only, so no fragment has a flow.
            let frag = be16(ip, 6);
            if frag & 0x3fff != 0 {
                return None;
            }
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src[..4].copy_from_slice(&ip[12..16]);
            dst[..4].copy_from_slice(&ip[16..20]);
            (4, ip[9], src, dst, (l3 + ihl, l3 + total))
        }
        ETHERTYPE_IPV6 => {
            let ip = head.get(l3..l3 + 40)?;
            if ip[0] >> 4 != 6 {
                return None;
            }
            let payload = usize::from(be16(ip, 4));
            // Payload length 0 is a jumbogram (a hop-by-hop option): not parsed.
            if payload == 0 || 40 + payload > l3_len {
                return None;
            }
            let src: [u8; 16] = ip[8..24].try_into().ok()?;
            let dst: [u8; 16] = ip[24..40].try_into().ok()?;
            (6, ip[6], src, dst, (l3 + 40, l3 + 40 + payload))
        }
        _ => return None,
    };
    let (l4, end) = l4;
    let l4_min = match proto {
        IPPROTO_UDP => 8,
        IPPROTO_TCP => 20,
        _ => return None,
    };
    // The transport header must lie inside the IP packet and inside what we were given.
    if l4 + l4_min > end {
        return None;
    }
    let t = head.get(l4..l4 + l4_min)?;
    if proto == IPPROTO_TCP && usize::from(t[12] >> 4) * 4 < 20 {
        return None;
    }
    Some(FlowKey {
        vlans,
        version,
        proto,
        src,
        dst,
        sport: be16(t, 0),
        dport: be16(t, 2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn ipv4(proto: u8, src: [u8; 4], frag: u16, l4: &[u8]) -> Vec<u8> {
        let total = (20 + l4.len()) as u16;
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[0, 7]);
        h.extend_from_slice(&frag.to_be_bytes());
        h.extend_from_slice(&[64, proto, 0, 0]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&[10, 0, 2, 2]);
        h.extend_from_slice(l4);
        h
    }

    fn ipv6(next: u8, l4: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        h.extend_from_slice(&[next, 64]);
        h.extend_from_slice(&[0xfd; 16]);
        h.extend_from_slice(&[0xfe; 16]);
        h.extend_from_slice(l4);
        h
    }

    fn udp(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
        let mut h = sport.to_be_bytes().to_vec();
        h.extend_from_slice(&dport.to_be_bytes());
        h.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0]);
        h.resize(8 + payload, 0xab);
        h
    }

    fn tcp(sport: u16, dport: u16) -> Vec<u8> {
        let mut h = sport.to_be_bytes().to_vec();
        h.extend_from_slice(&dport.to_be_bytes());
        h.resize(20, 0);
        h[12] = 5 << 4;
        h
    }

    fn frame(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn key(f: &[u8]) -> Option<FlowKey> {
        classify(f, f.len())
    }

    #[test]
    fn udp_and_tcp_over_ipv4_have_flows_told_apart_by_every_field() {
        let a = frame(&[&eth(0x0800), &ipv4(17, [10, 0, 2, 15], 0, &udp(1, 2, 30))]);
        let ka = key(&a).expect("plain UDP/IPv4 has a flow");
        // Same headers, other payload length: the same flow.
        let a2 = frame(&[&eth(0x0800), &ipv4(17, [10, 0, 2, 15], 0, &udp(1, 2, 900))]);
        assert_eq!(key(&a2), Some(ka));
        for other in [
            frame(&[&eth(0x0800), &ipv4(17, [10, 0, 2, 15], 0, &udp(3, 2, 30))]),
            frame(&[&eth(0x0800), &ipv4(17, [10, 0, 2, 15], 0, &udp(1, 3, 30))]),
            frame(&[&eth(0x0800), &ipv4(17, [10, 0, 2, 16], 0, &udp(1, 2, 30))]),
            frame(&[&eth(0x0800), &ipv4(6, [10, 0, 2, 15], 0, &tcp(1, 2))]),
        ] {
            let k = key(&other).expect("has a flow");
            assert_ne!(k, ka);
        }
    }

    #[test]
    fn vlan_tags_are_followed_and_part_of_the_flow() {
        let inner = ipv4(17, [10, 0, 2, 15], 0, &udp(1, 2, 30));
        let plain = key(&frame(&[&eth(0x0800), &inner])).unwrap();
        let one = frame(&[&eth(0x8100), &[0x00, 0x05, 0x08, 0x00], &inner]);
        let two = frame(&[
            &eth(0x88a8),
            &[0x00, 0x07, 0x81, 0x00],
            &[0x00, 0x05, 0x08, 0x00],
            &inner,
        ]);
        let (k1, k2) = (key(&one).unwrap(), key(&two).unwrap());
        assert!(k1 != plain && k2 != plain && k1 != k2);
        let three = frame(&[
            &eth(0x8100),
            &[0x00, 0x07, 0x81, 0x00],
            &[0x00, 0x05, 0x81, 0x00],
            &[0x00, 0x05, 0x08, 0x00],
            &inner,
        ]);
        assert_eq!(key(&three), None, "more than two tags");
    }

    #[test]
    fn ipv6_without_extension_headers_has_a_flow() {
        let f = frame(&[&eth(0x86dd), &ipv6(17, &udp(5, 6, 10))]);
        let t = frame(&[&eth(0x86dd), &ipv6(6, &tcp(5, 6))]);
        assert!(key(&f).is_some() && key(&t).is_some() && key(&f) != key(&t));
        // Hop-by-hop (0), routing (43), fragment (44): not parsed, no flow.
        for ext in [0u8, 43, 44, 60] {
            let e = frame(&[&eth(0x86dd), &ipv6(ext, &udp(5, 6, 10))]);
            assert_eq!(key(&e), None, "extension header {ext}");
        }
    }

    #[test]
    fn doubtful_frames_have_no_flow() {
        let udp4 = |frag| frame(&[&eth(0x0800), &ipv4(17, [1, 2, 3, 4], frag, &udp(1, 2, 30))]);
        assert!(key(&udp4(0)).is_some());
        assert!(key(&udp4(0x4000)).is_some(), "don't-fragment is fine");
        assert_eq!(key(&udp4(0x2000)), None, "more fragments");
        assert_eq!(key(&udp4(0x0010)), None, "fragment offset");
        // ARP, an unknown ethertype, ICMP.
        assert_eq!(key(&frame(&[&eth(0x0806), &[0; 28]])), None);
        assert_eq!(key(&frame(&[&eth(0x88b5), &[0; 60]])), None);
        assert_eq!(
            key(&frame(&[&eth(0x0800), &ipv4(1, [1, 2, 3, 4], 0, &[0; 8])])),
            None
        );
        // Wrong IP version, IHL below 5, total length past the frame or below the header.
        let mut f = udp4(0);
        f[14] = 0x65;
        assert_eq!(key(&f), None);
        let mut f = udp4(0);
        f[14] = 0x44;
        assert_eq!(key(&f), None);
        let mut f = udp4(0);
        f[16..18].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(key(&f), None);
        let mut f = udp4(0);
        f[16..18].copy_from_slice(&24u16.to_be_bytes());
        assert_eq!(key(&f), None, "UDP header past the IP packet's end");
        // A TCP data offset below 5 words.
        let mut t = frame(&[&eth(0x0800), &ipv4(6, [1, 2, 3, 4], 0, &tcp(1, 2))]);
        t[14 + 20 + 12] = 4 << 4;
        assert_eq!(key(&t), None);
        // Ethernet padding after a short packet is fine.
        let mut p = frame(&[&eth(0x0800), &ipv4(17, [1, 2, 3, 4], 0, &udp(1, 2, 0))]);
        p.resize(60, 0);
        assert!(key(&p).is_some());
    }

    #[test]
    fn a_header_prefix_is_enough_but_the_length_is_checked() {
        let f = frame(&[&eth(0x0800), &ipv4(17, [1, 2, 3, 4], 0, &udp(1, 2, 2000))]);
        assert_eq!(classify(&f[..HEADER_PREFIX], f.len()), key(&f));
        // The IP header claims more bytes than the frame has.
        assert_eq!(classify(&f[..HEADER_PREFIX], 100), None);
        let v6 = frame(&[&eth(0x86dd), &ipv6(17, &udp(5, 6, 2000))]);
        assert_eq!(classify(&v6[..HEADER_PREFIX], v6.len()), key(&v6));
        assert_eq!(classify(&v6[..HEADER_PREFIX], 100), None);
    }

    #[test]
    fn truncated_at_every_offset_has_no_flow_and_never_panics() {
        let frames = [
            frame(&[&eth(0x0800), &ipv4(17, [1, 2, 3, 4], 0, &udp(1, 2, 0))]),
            frame(&[&eth(0x0800), &ipv4(6, [1, 2, 3, 4], 0, &tcp(1, 2))]),
            frame(&[&eth(0x86dd), &ipv6(6, &tcp(5, 6))]),
            frame(&[
                &eth(0x88a8),
                &[0x00, 0x07, 0x81, 0x00],
                &[0x00, 0x05, 0x08, 0x00],
                &ipv4(17, [1, 2, 3, 4], 0, &udp(1, 2, 0)),
            ]),
        ];
        for f in &frames {
            assert!(key(f).is_some());
            for cut in 0..f.len() {
                // The frame really ends there, or only the prefix given does.
                assert_eq!(key(&f[..cut]), None, "cut at {cut}");
                assert_eq!(classify(&f[..cut], f.len()), None, "prefix cut at {cut}");
            }
        }
    }

    #[test]
    fn hostile_bytes_never_panic() {
        // Every byte value at every header position of a VLAN-tagged IPv4 TCP frame.
        let base = frame(&[
            &eth(0x8100),
            &[0x00, 0x05, 0x08, 0x00],
            &ipv4(6, [1, 2, 3, 4], 0, &tcp(1, 2)),
        ]);
        for at in 0..base.len() {
            for v in 0..=255u8 {
                let mut f = base.clone();
                f[at] = v;
                let _ = key(&f);
                let _ = classify(&f, usize::MAX);
                let _ = classify(&f, 0);
            }
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// A valid header stack: 0-2 VLAN tags, IPv4 (IHL 5-15) or IPv6, TCP or UDP, then
        /// a payload; and where its headers end.
        fn valid() -> impl Strategy<Value = (Vec<u8>, usize)> {
            (
                0..=2usize,
                any::<bool>(),
                any::<bool>(),
                5..=15u8,
                any::<[u16; 2]>(),
                0..64usize,
            )
                .prop_map(|(tags, v6, is_tcp, ihl, ports, payload)| {
                    let mut l4 = if is_tcp {
                        tcp(ports[0], ports[1])
                    } else {
                        udp(ports[0], ports[1], 0)
                    };
                    let l4_hdr = l4.len();
                    l4.resize(l4_hdr + payload, 0x77);
                    let proto = if is_tcp { 6 } else { 17 };
                    let mut f = eth(if tags > 0 { 0x8100 } else { 0x0800 });
                    for t in 0..tags {
                        let inner: u16 = if t + 1 < tags {
                            0x8100
                        } else if v6 {
                            0x86dd
                        } else {
                            0x0800
                        };
                        f.extend_from_slice(&[0x00, 0x05]);
                        f.extend_from_slice(&inner.to_be_bytes());
                    }
                    if tags == 0 && v6 {
                        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
                    }
                    let ip = if v6 {
                        ipv6(proto, &l4)
                    } else {
                        // IPv4 with options: IHL words of header, options as NOPs.
                        let mut h = ipv4(proto, [1, 2, 3, 4], 0, &[]);
                        let hl = usize::from(ihl) * 4;
                        h[0] = 0x40 | ihl;
                        h.resize(hl, 1);
                        h.extend_from_slice(&l4);
                        let total = h.len() as u16;
                        h[2..4].copy_from_slice(&total.to_be_bytes());
                        h
                    };
                    let hdr_end = f.len() + ip.len() - payload;
                    f.extend_from_slice(&ip);
                    (f, hdr_end)
                })
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..200),
                len in prop_oneof![Just(usize::MAX), Just(0usize), any::<usize>(), 0..300usize],
            ) {
                let _ = classify(&bytes, len);
                let _ = classify(&bytes, bytes.len());
            }

            /// Bytes that start like a real header stack, then go random: the parser walks
            /// deep into them and still never panics.
            #[test]
            fn valid_prefix_then_garbage_never_panics(
                (f, _end) in valid(),
                at in 0..200usize,
                tail in proptest::collection::vec(any::<u8>(), 0..120),
            ) {
                let mut g = f[..at.min(f.len())].to_vec();
                g.extend_from_slice(&tail);
                let _ = classify(&g, g.len());
                let _ = classify(&g, usize::MAX);
            }

            #[test]
            fn every_truncation_of_a_valid_frame_has_no_flow((f, end) in valid()) {
                prop_assert!(key(&f).is_some());
                for cut in 0..f.len() {
                    // The frame really ends there.
                    prop_assert_eq!(key(&f[..cut]), None, "frame cut at {}", cut);
                }
                for cut in 0..end {
                    // Only the headers given are cut.
                    prop_assert_eq!(classify(&f[..cut], f.len()), None, "head cut at {}", cut);
                }
                prop_assert_eq!(classify(&f[..end], f.len()), key(&f));
            }
        }
    }
}
