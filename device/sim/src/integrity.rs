//! Per-frame sequence numbers and checksums, and the checker that counts what went wrong.
//!
//! Every frame the simulation sends carries a 24-byte stamp: magic, stream, kind, sequence
//! number, the length the sender meant, and a CRC-32 over the stamp and the payload that
//! follows it. The receiving side feeds each frame to a [`Checker`], which counts lost,
//! duplicated, reordered and corrupted frames per stream. A unix socket and the device both
//! preserve order and never drop, so in built-in mode every non-zero counter is a bug.
//!
//! Order is checked per stream. A frame that overtook one sent before it on *another*
//! stream (the sender's send order comes with the frame: the IPv4 identification of the
//! simulation's frames) is counted apart, in `reordered_across_streams`: the
//! `small-first` retry policy does exactly that on purpose; under every other policy it
//! is an error.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

/// `VNS1`: tells our frames apart from anything else a real proxy sends the guest.
pub const MAGIC: u32 = 0x564e_5331;
/// Bytes of the stamp.
pub const STAMP_LEN: usize = 24;
/// Stream id used for acknowledgement frames (data streams are 0..streams).
pub const ACK_STREAM: u16 = 0xffff;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Data,
    Ack,
}

impl Kind {
    fn code(self) -> u16 {
        match self {
            Kind::Data => 0,
            Kind::Ack => 1,
        }
    }
    fn from_code(code: u16) -> Option<Kind> {
        match code {
            0 => Some(Kind::Data),
            1 => Some(Kind::Ack),
            _ => None,
        }
    }
}

/// What a sender writes into a frame and a receiver reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub stream: u16,
    pub kind: Kind,
    pub seq: u64,
    /// Length of the stamped region (stamp + payload) as the sender wrote it.
    pub len: u32,
}

/// The CRC of a payload, computed once per frame size so senders only hash the stamp.
#[derive(Clone)]
pub struct Payload {
    bytes: Vec<u8>,
    crc: crc32fast::Hasher,
}

impl Payload {
    /// A deterministic pseudo-random payload of `len` bytes (xorshift, seeded by the
    /// length) so a frame shifted or truncated by a bug does not checksum by accident.
    pub fn new(len: usize) -> Payload {
        let mut bytes = vec![0u8; len];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (len as u64);
        for chunk in bytes.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&bytes);
        Payload { bytes, crc }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Writes the stamp for a region whose payload (the bytes after the stamp) is `payload`.
/// `out` must be exactly `STAMP_LEN` bytes.
pub fn write_stamp(out: &mut [u8], stamp: &Stamp, payload: &Payload) {
    let head = stamp_head(stamp);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    crc.combine(&payload.crc);
    out[..20].copy_from_slice(&head);
    out[20..24].copy_from_slice(&crc.finalize().to_be_bytes());
}

fn stamp_head(stamp: &Stamp) -> [u8; 20] {
    let mut head = [0u8; 20];
    head[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    head[4..6].copy_from_slice(&stamp.stream.to_be_bytes());
    head[6..8].copy_from_slice(&stamp.kind.code().to_be_bytes());
    head[8..16].copy_from_slice(&stamp.seq.to_be_bytes());
    head[16..20].copy_from_slice(&stamp.len.to_be_bytes());
    head
}

/// Stamps a complete region (stamp followed by payload) held in one buffer.
pub fn stamp_region(region: &mut [u8], stream: u16, kind: Kind, seq: u64) {
    let stamp = Stamp {
        stream,
        kind,
        seq,
        len: region.len() as u32,
    };
    let head = stamp_head(&stamp);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    crc.update(&region[STAMP_LEN..]);
    region[..20].copy_from_slice(&head);
    region[20..24].copy_from_slice(&crc.finalize().to_be_bytes());
}

/// Why a region failed the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Shorter than a stamp, wrong magic or unknown kind: nothing in it can be trusted.
    Unreadable,
    /// The stamp reads but the length or checksum does not match: the sequence is usable.
    Mismatch(Stamp),
}

/// Reads and checks the stamp of `region`; `verify_crc = false` skips hashing the payload
/// (the throughput benchmark's sink, which only wants to count).
pub fn read_stamp(region: &[u8], verify_crc: bool) -> Result<Stamp, Damage> {
    if region.len() < STAMP_LEN {
        return Err(Damage::Unreadable);
    }
    let be16 = |o: usize| u16::from_be_bytes([region[o], region[o + 1]]);
    let be32 = |o: usize| u32::from_be_bytes(region[o..o + 4].try_into().unwrap());
    if be32(0) != MAGIC {
        return Err(Damage::Unreadable);
    }
    let Some(kind) = Kind::from_code(be16(6)) else {
        return Err(Damage::Unreadable);
    };
    let stamp = Stamp {
        stream: be16(4),
        kind,
        seq: u64::from_be_bytes(region[8..16].try_into().unwrap()),
        len: be32(16),
    };
    if stamp.len as usize != region.len() {
        return Err(Damage::Mismatch(stamp));
    }
    if verify_crc {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&region[..20]);
        crc.update(&region[STAMP_LEN..]);
        if crc.finalize() != be32(20) {
            return Err(Damage::Mismatch(stamp));
        }
    }
    Ok(stamp)
}

/// Counters for one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Frames that passed the check.
    pub frames: u64,
    /// Bytes of the frames that passed (whole Ethernet frames).
    pub bytes: u64,
    pub data_frames: u64,
    pub ack_frames: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Frames in order within their stream that arrived after a frame sent later on
    /// another stream (only where frames carry their send order; see the module doc).
    /// Not in [`Counts::errors`]: whether it is an error depends on the retry policy.
    pub reordered_across_streams: u64,
    pub corrupted: u64,
    /// Frames that were not ours (ARP, IPv6 router adverts from a real proxy): ignored.
    pub foreign: u64,
}

impl Counts {
    pub fn errors(&self) -> u64 {
        self.lost + self.duplicated + self.reordered + self.corrupted
    }
}

#[derive(Debug, Default)]
struct StreamState {
    next: u64,
    /// Sequence numbers skipped over and not yet seen: a late arrival is a reorder, not a
    /// duplicate, and stops counting as lost.
    missing: BTreeSet<u64>,
}

/// Outcome of one observation, for logging and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    InOrder,
    Gap(u64),
    Reordered,
    Duplicate,
    Corrupted,
}

/// Counts lost/duplicated/reordered/corrupted frames per stream for one direction.
#[derive(Debug, Default)]
pub struct Checker {
    streams: HashMap<u16, StreamState>,
    counts: Counts,
    verify_crc: bool,
    /// The latest send order seen (mod 2^16; comparisons by serial-number arithmetic,
    /// sound while frames overtake fewer than 32768 others).
    latest_order: Option<u16>,
}

impl Checker {
    pub fn new(verify_crc: bool) -> Checker {
        Checker {
            verify_crc,
            ..Checker::default()
        }
    }

    /// Checks one stamped region; `frame_len` is the whole frame's length for byte counts,
    /// `order` the sender's send order over all streams when the frame carries it.
    pub fn observe(
        &mut self,
        region: &[u8],
        frame_len: usize,
        order: Option<u16>,
    ) -> (Verdict, Option<Stamp>) {
        match read_stamp(region, self.verify_crc) {
            Ok(stamp) => {
                let v = self.sequence(&stamp);
                if let (Some(o), Verdict::InOrder | Verdict::Gap(_)) = (order, v) {
                    self.across_streams(o);
                }
                if matches!(v, Verdict::InOrder | Verdict::Gap(_) | Verdict::Reordered) {
                    self.counts.frames += 1;
                    self.counts.bytes += frame_len as u64;
                    match stamp.kind {
                        Kind::Data => self.counts.data_frames += 1,
                        Kind::Ack => self.counts.ack_frames += 1,
                    }
                }
                (v, Some(stamp))
            }
            Err(Damage::Mismatch(stamp)) => {
                // The sequence still tells where the stream is, so a corrupted frame is not
                // also counted as lost.
                self.sequence(&stamp);
                self.counts.corrupted += 1;
                (Verdict::Corrupted, Some(stamp))
            }
            Err(Damage::Unreadable) => {
                self.counts.corrupted += 1;
                (Verdict::Corrupted, None)
            }
        }
    }

    /// A frame in order on its stream, sent as number `order`: it overtook nothing unless
    /// a frame sent after it arrived already.
    fn across_streams(&mut self, order: u16) {
        match self.latest_order {
            Some(latest) if (order.wrapping_sub(latest) as i16) < 0 => {
                self.counts.reordered_across_streams += 1;
            }
            _ => self.latest_order = Some(order),
        }
    }

    /// Counts a frame that is not ours (foreign traffic on a real proxy).
    pub fn foreign(&mut self) {
        self.counts.foreign += 1;
    }

    fn sequence(&mut self, stamp: &Stamp) -> Verdict {
        let st = self.streams.entry(stamp.stream).or_default();
        if stamp.seq == st.next {
            st.next += 1;
            Verdict::InOrder
        } else if stamp.seq > st.next {
            let gap = stamp.seq - st.next;
            // Bound the set: a wild sequence number from a corrupted stamp must not make us
            // allocate billions of entries; beyond the bound it is simply lost.
            if gap <= 1 << 16 {
                st.missing.extend(st.next..stamp.seq);
            }
            self.counts.lost += gap;
            st.next = stamp.seq + 1;
            Verdict::Gap(gap)
        } else if st.missing.remove(&stamp.seq) {
            self.counts.lost -= 1;
            self.counts.reordered += 1;
            Verdict::Reordered
        } else {
            self.counts.duplicated += 1;
            Verdict::Duplicate
        }
    }

    /// Frames received so far on `stream` (the next expected sequence number).
    pub fn next_seq(&self, stream: u16) -> u64 {
        self.streams.get(&stream).map_or(0, |s| s.next)
    }

    /// Closes the books: `sent(stream)` is how many frames the sender put on each stream;
    /// whatever never arrived at the tail counts as lost.
    pub fn finish(&mut self, sent: &[(u16, u64)]) -> Counts {
        for &(stream, n) in sent {
            let next = self.next_seq(stream);
            if n > next {
                self.counts.lost += n - next;
            }
        }
        self.counts.clone()
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(payload: &Payload, stream: u16, seq: u64) -> Vec<u8> {
        let mut r = vec![0u8; STAMP_LEN];
        r.extend_from_slice(payload.bytes());
        let stamp = Stamp {
            stream,
            kind: Kind::Data,
            seq,
            len: r.len() as u32,
        };
        write_stamp(&mut r[..STAMP_LEN], &stamp, payload);
        r
    }

    #[test]
    fn stamped_region_reads_back_and_matches_stamp_region() {
        let p = Payload::new(100);
        let r = region(&p, 3, 42);
        let s = read_stamp(&r, true).unwrap();
        assert_eq!((s.stream, s.seq, s.kind, s.len), (3, 42, Kind::Data, 124));
        let mut r2 = r.clone();
        stamp_region(&mut r2, 3, Kind::Data, 42);
        assert_eq!(r, r2);
    }

    #[test]
    fn flipped_payload_bit_is_corruption() {
        let p = Payload::new(1000);
        let mut r = region(&p, 0, 0);
        r[500] ^= 1;
        assert!(matches!(read_stamp(&r, true), Err(Damage::Mismatch(_))));
        let mut c = Checker::new(true);
        assert_eq!(c.observe(&r, r.len(), None).0, Verdict::Corrupted);
        assert_eq!(c.finish(&[(0, 1)]).corrupted, 1);
        assert_eq!(c.counts().lost, 0);
    }

    #[test]
    fn gaps_duplicates_and_late_arrivals() {
        let p = Payload::new(10);
        let mut c = Checker::new(true);
        for seq in [0, 1, 3, 1, 2, 5] {
            let r = region(&p, 7, seq);
            c.observe(&r, r.len(), None);
        }
        let n = c.finish(&[(7, 8)]);
        // 4 is missing in the middle, 6 and 7 at the tail; 2 arrived late; 1 twice.
        assert_eq!(n.lost, 3);
        assert_eq!(n.reordered, 1);
        assert_eq!(n.duplicated, 1);
        assert_eq!(n.frames, 5);
        assert_eq!(n.errors(), 5);
    }

    #[test]
    fn overtaking_across_streams_is_counted_apart() {
        let p = Payload::new(10);
        let mut c = Checker::new(true);
        // Send order: s1#0 (0), s2#0 (1), s1#1 (2), s2#1 (3); s2 overtakes s1 once, and
        // the order numbers wrap past 65535 on the way.
        let base = 65534u16;
        for (stream, seq, order) in [(1, 0, 0u16), (2, 0, 1), (2, 1, 3), (1, 1, 2)] {
            let r = region(&p, stream, seq);
            c.observe(&r, r.len(), Some(base.wrapping_add(order)));
        }
        let n = c.finish(&[(1, 2), (2, 2)]);
        assert_eq!(
            (n.reordered_across_streams, n.reordered, n.errors()),
            (1, 0, 0)
        );
        // Without the send order nothing is counted.
        let mut c = Checker::new(true);
        for (stream, seq) in [(2, 0), (1, 0)] {
            let r = region(&p, stream, seq);
            c.observe(&r, r.len(), None);
        }
        assert_eq!(c.counts().reordered_across_streams, 0);
    }
}
