//! The internet checksum (RFC 1071) over a frame held in pieces, for TX checksum offload
//! (VIRTIO_NET_F_CSUM): the guest leaves the TCP/UDP checksum field holding its
//! pseudo-header sum and asks the device, with VIRTIO_NET_HDR_F_NEEDS_CSUM, to sum from
//! `csum_start` to the end of the frame and store the complement of the folded sum in that
//! field (virtio spec 5.1.6.2). `crate::net::TxChain` reads the pieces out of guest memory
//! into [`Csum::add`] and sends the two result bytes from its own storage instead of the
//! guest's, so the guest's buffer is never written.
//!
//! Pieces may have any length: a piece that starts at an odd offset of the summed range
//! contributes its sum byte-swapped (RFC 1071, section 2(B)), so the result does not depend
//! on where the frame is cut.

/// A running ones'-complement sum of 16-bit big-endian words over bytes added in order.
#[derive(Debug, Default, Clone, Copy)]
pub struct Csum {
    /// Sum of the pieces so far, each folded to 16 bits before it was added: far from
    /// overflowing a u64 for any frame.
    sum: u64,
    /// An odd number of bytes has been added: the next piece starts at an odd offset.
    odd: bool,
}

/// Folds a ones'-complement sum to 16 bits (end-around carry).
#[inline]
fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Ones'-complement sum of `bytes` as big-endian 16-bit words (a last odd byte is the high
/// half of a word whose low half is zero), folded to 16 bits.
#[inline]
fn sum_words(bytes: &[u8]) -> u16 {
    // 32-bit words in the machine's byte order, added into a u64 (a loop the compiler
    // vectorises; a frame's 16 Ki words stay far below overflow): 2^16 is 1 modulo
    // 0xffff, so a 32-bit word adds what its two 16-bit halves do. Summed in little-endian
    // order, the folded result is the big-endian sum byte-swapped (RFC 1071 2(B)).
    let mut chunks = bytes.chunks_exact(4);
    let mut acc: u64 = 0;
    for c in &mut chunks {
        acc += u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
    }
    let words = fold(acc);
    let mut acc = u64::from(if cfg!(target_endian = "little") {
        words.swap_bytes()
    } else {
        words
    });
    // The rest starts at an offset that is a multiple of 4: big-endian words as they are.
    let mut rest = chunks.remainder().chunks_exact(2);
    for w in &mut rest {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = rest.remainder() {
        acc += u64::from(*last) << 8;
    }
    fold(acc)
}

impl Csum {
    pub fn new() -> Csum {
        Csum::default()
    }

    /// Adds the next `bytes` of the summed range.
    #[inline]
    pub fn add(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let s = sum_words(bytes);
        // A piece starting at an odd offset has its bytes in the other halves of the
        // words: its sum, byte-swapped, is what it adds (RFC 1071 2(B)).
        let s = if self.odd { s.swap_bytes() } else { s };
        self.sum += u64::from(s);
        self.odd ^= bytes.len() % 2 == 1;
    }

    /// The ones'-complement sum of everything added, folded to 16 bits. A range that holds
    /// a correct checksum sums to 0xffff.
    pub fn folded(&self) -> u16 {
        fold(self.sum)
    }

    /// The checksum to store: the complement of [`Csum::folded`], except that 0 is sent as
    /// 0xffff (the same number in ones' complement), as Linux's `skb_checksum_help` does
    /// (`CSUM_MANGLED_0`): a UDP checksum of 0 would mean "no checksum".
    pub fn finish(&self) -> u16 {
        match !self.folded() {
            0 => 0xffff,
            c => c,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The straightforward reference: 16-bit big-endian words one by one, a last odd byte
    /// padded with zero, carries folded at the end.
    fn reference_sum(bytes: &[u8]) -> u16 {
        let mut s: u64 = 0;
        for w in bytes.chunks(2) {
            let hi = u64::from(w[0]) << 8;
            let lo = w.get(1).map_or(0, |&b| u64::from(b));
            s += hi | lo;
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    fn in_pieces(bytes: &[u8], cuts: &[usize]) -> Csum {
        let mut c = Csum::new();
        let mut pos = 0;
        for &cut in cuts {
            let end = (pos + cut).min(bytes.len());
            c.add(&bytes[pos..end]);
            pos = end;
        }
        c.add(&bytes[pos..]);
        c
    }

    /// RFC 1071's worked example (section 3): the bytes 00 01 f2 03 f4 f5 f6 f7 sum to
    /// 0xddf2.
    #[test]
    fn rfc1071_example() {
        let b = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        let mut c = Csum::new();
        c.add(&b);
        assert_eq!(c.folded(), 0xddf2);
        assert_eq!(c.finish(), !0xddf2);
        // Cut at an odd offset: the same sum.
        assert_eq!(in_pieces(&b, &[3, 1]).folded(), 0xddf2);
    }

    /// A sum of 0xffff complements to 0, which is sent as 0xffff.
    #[test]
    fn zero_checksum_is_sent_as_ffff() {
        let mut c = Csum::new();
        c.add(&[0xff, 0xff]);
        assert_eq!(c.folded(), 0xffff);
        assert_eq!(c.finish(), 0xffff);
        let mut c = Csum::new();
        c.add(&[0x12, 0x34]);
        assert_eq!(c.finish(), !0x1234);
    }

    proptest! {
        /// Any bytes cut at any boundaries sum to what the word-by-word reference gives.
        #[test]
        fn pieces_sum_like_the_reference(
            bytes in prop::collection::vec(any::<u8>(), 0..3000),
            cuts in prop::collection::vec(0usize..700, 0..12),
        ) {
            prop_assert_eq!(in_pieces(&bytes, &cuts).folded(), reference_sum(&bytes));
        }

        /// A checksum computed by `finish` and stored in the range makes the range verify:
        /// its sum is 0xffff, however the range is cut.
        #[test]
        fn stored_checksum_verifies(
            mut bytes in prop::collection::vec(any::<u8>(), 2..3000),
            at in any::<prop::sample::Index>(),
            cuts in prop::collection::vec(0usize..700, 0..12),
        ) {
            // The checksum field: two bytes at an even offset of the range, as TCP's and
            // UDP's are from `csum_start` (zero while summing: the pseudo-header sum the
            // guest leaves there is just more of what is summed).
            let at = at.index(bytes.len() - 1) & !1;
            bytes[at] = 0;
            bytes[at + 1] = 0;
            let c = in_pieces(&bytes, &cuts).finish();
            let mut with = bytes.clone();
            with[at..at + 2].copy_from_slice(&c.to_be_bytes());
            prop_assert_eq!(reference_sum(&with), 0xffff);
            prop_assert_eq!(in_pieces(&with, &cuts).folded(), 0xffff);
        }
    }
}
