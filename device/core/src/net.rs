//! virtio-net: features, the 12-byte virtio_net_hdr_v1, TX and RX chain handling.
//!
//! Everything here is plain functions over guest memory and a `Queue`, with no sockets, so
//! the mock-queue tests exercise exactly the code the worker runs.

use std::collections::VecDeque;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::BS;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion,
    MemoryRegionAddress, Permissions, VolatileSlice,
};

use crate::csum::Csum;
use crate::frame::TxList;
pub use crate::frame::MAX_FRAME;
use crate::gso::{Gso, GsoFault, GSO_HDR_MAX};

/// The features the device offers: VERSION_1, MAC, EVENT_IDX, MRG_RXBUF, the two
/// checksum offloads, CSUM (the device completes TX checksums the guest marks
/// NEEDS_CSUM) and GUEST_CSUM (the device marks RX frames DATA_VALID); TX segmentation,
/// HOST_TSO4 and HOST_TSO6 (the device cuts the guest's large TCP segments into
/// `gso_size` pieces, `crate::gso`; both need CSUM); and receive coalescing, GUEST_TSO4
/// and GUEST_TSO6 (the device merges TCP segments from the proxy into GSO frames,
/// `crate::gro`; only with GUEST_CSUM, as the spec requires). No ECN either way (a TX
/// header with the ECN bit is refused), no UFO, and no INDIRECT_DESC (so an indirect
/// descriptor from the guest is an error).
pub const DEVICE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_NET_F_MRG_RXBUF)
    | FEATURE_CSUM
    | FEATURE_GUEST_CSUM
    | FEATURES_HOST_TSO
    | FEATURES_GUEST_TSO;
/// Length of the virtio_net_hdr_v1 in front of every frame (VERSION_1 makes it 12 bytes,
/// num_buffers included, whether or not MRG_RXBUF is negotiated).
pub const NET_HDR_LEN: usize = 12;
/// Queue number of the receive queue (device to guest).
pub const RX_QUEUE: u16 = 0;
/// Queue number of the transmit queue (guest to device).
pub const TX_QUEUE: u16 = 1;

pub const FEATURE_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
pub const FEATURE_MRG_RXBUF: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
/// VIRTIO_NET_F_CSUM: the guest may leave TX checksums to the device.
pub const FEATURE_CSUM: u64 = 1 << VIRTIO_NET_F_CSUM;
/// VIRTIO_NET_F_GUEST_CSUM: the device may tell the guest an RX frame's checksum is valid.
pub const FEATURE_GUEST_CSUM: u64 = 1 << VIRTIO_NET_F_GUEST_CSUM;
/// VIRTIO_NET_F_HOST_TSO4: the guest may hand over TCP/IPv4 segments for the device to
/// cut (needs CSUM).
pub const FEATURE_HOST_TSO4: u64 = 1 << VIRTIO_NET_F_HOST_TSO4;
/// VIRTIO_NET_F_HOST_TSO6: the same for TCP/IPv6.
pub const FEATURE_HOST_TSO6: u64 = 1 << VIRTIO_NET_F_HOST_TSO6;
/// TX segmentation for both IP versions.
pub const FEATURES_HOST_TSO: u64 = FEATURE_HOST_TSO4 | FEATURE_HOST_TSO6;
/// virtio_net_hdr `gso_type` TCPV4 / TCPV6.
pub const GSO_TCPV4: u8 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
pub const GSO_TCPV6: u8 = VIRTIO_NET_HDR_GSO_TCPV6 as u8;

/// The TX offloads a front end negotiated, as the data path acts on them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxOffloads {
    /// CSUM: headers are read, NEEDS_CSUM checksums completed.
    pub csum: bool,
    /// HOST_TSO4 (with CSUM): TCPV4 segments are cut.
    pub tso4: bool,
    /// HOST_TSO6 (with CSUM): TCPV6 segments are cut.
    pub tso6: bool,
}

impl TxOffloads {
    /// What `features` (the negotiated ones) turn on. TSO without CSUM is not honoured
    /// (the spec makes CSUM a requirement of it).
    pub fn from_features(features: u64) -> TxOffloads {
        let csum = features & FEATURE_CSUM != 0;
        TxOffloads {
            csum,
            tso4: csum && features & FEATURE_HOST_TSO4 != 0,
            tso6: csum && features & FEATURE_HOST_TSO6 != 0,
        }
    }
}

/// VIRTIO_NET_F_GUEST_TSO4: the device may hand the guest TCP/IPv4 GSO frames.
pub const FEATURE_GUEST_TSO4: u64 = 1 << VIRTIO_NET_F_GUEST_TSO4;
/// VIRTIO_NET_F_GUEST_TSO6: the device may hand the guest TCP/IPv6 GSO frames.
pub const FEATURE_GUEST_TSO6: u64 = 1 << VIRTIO_NET_F_GUEST_TSO6;
/// Receive coalescing for both IP versions.
pub const FEATURES_GUEST_TSO: u64 = FEATURE_GUEST_TSO4 | FEATURE_GUEST_TSO6;
/// The receive offloads: GUEST_CSUM and the coalescing that needs it.
pub const FEATURES_GUEST_OFFLOAD: u64 = FEATURE_GUEST_CSUM | FEATURES_GUEST_TSO;
/// Every offload that rests on the checksum ones: CSUM with the TSO that needs it,
/// GUEST_CSUM with the coalescing that needs it. A guest without checksum offload takes
/// none of them.
pub const FEATURES_CSUM_OFFLOADS: u64 = FEATURE_CSUM | FEATURES_HOST_TSO | FEATURES_GUEST_OFFLOAD;
/// virtio_net_hdr `flags`: the device must complete the checksum (TX); on RX, the
/// guest's checksum field holds only the pseudo-header sum (a merged GSO frame).
pub const HDR_F_NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
/// virtio_net_hdr `flags`: the frame's checksum is known to be good (RX).
pub const HDR_F_DATA_VALID: u8 = VIRTIO_NET_HDR_F_DATA_VALID as u8;

/// The virtio_net_config the device exposes: mac, status (link up), max_virtqueue_pairs.
pub fn config_space(mac: [u8; 6]) -> Vec<u8> {
    let mut c = Vec::with_capacity(10);
    c.extend_from_slice(&mac);
    c.extend_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    c.extend_from_slice(&1u16.to_le_bytes());
    c
}

/// The virtio_net_hdr_v1 the device writes in front of an RX frame: `flags` (0, or
/// [`HDR_F_DATA_VALID`] when GUEST_CSUM was negotiated) and `num_buffers`; no GSO.
pub fn rx_header(num_buffers: u16, flags: u8) -> [u8; NET_HDR_LEN] {
    let mut h = [0u8; NET_HDR_LEN];
    h[0] = flags;
    h[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    h
}

/// The GSO fields of the virtio_net_hdr_v1 in front of a merged RX frame (`crate::gro`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxGso {
    /// VIRTIO_NET_HDR_GSO_TCPV4 or _TCPV6.
    pub gso_type: u8,
    /// Ethernet, IP and TCP headers together.
    pub hdr_len: u16,
    /// Payload bytes per segment (the last may carry fewer).
    pub gso_size: u16,
    /// Where the TCP header starts; the checksum field is `csum_offset` into it.
    pub csum_start: u16,
    pub csum_offset: u16,
}

/// The virtio_net_hdr_v1 in front of a merged RX frame: NEEDS_CSUM (the TCP checksum
/// field holds the pseudo-header sum; the guest treats the frame as CHECKSUM_PARTIAL)
/// and the GSO fields, little-endian.
pub fn rx_gso_header(num_buffers: u16, g: &RxGso) -> [u8; NET_HDR_LEN] {
    let mut h = rx_header(num_buffers, HDR_F_NEEDS_CSUM);
    h[1] = g.gso_type;
    h[2..4].copy_from_slice(&g.hdr_len.to_le_bytes());
    h[4..6].copy_from_slice(&g.gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&g.csum_start.to_le_bytes());
    h[8..10].copy_from_slice(&g.csum_offset.to_le_bytes());
    h
}

/// The fields of a TX virtio_net_hdr_v1 the device acts on (little-endian in memory:
/// flags u8, gso_type u8, hdr_len u16, gso_size u16, csum_start u16, csum_offset u16,
/// num_buffers u16).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxHeader {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the headers (a hint under GSO; the device parses them itself).
    pub hdr_len: u16,
    /// GSO: payload bytes per segment.
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl TxHeader {
    pub fn from_bytes(h: &[u8; NET_HDR_LEN]) -> TxHeader {
        TxHeader {
            flags: h[0],
            gso_type: h[1],
            hdr_len: u16::from_le_bytes([h[2], h[3]]),
            gso_size: u16::from_le_bytes([h[4], h[5]]),
            csum_start: u16::from_le_bytes([h[6], h[7]]),
            csum_offset: u16::from_le_bytes([h[8], h[9]]),
        }
    }

    /// The header's bytes (what a driver writes), for tests and the simulated guest.
    pub fn to_bytes(&self) -> [u8; NET_HDR_LEN] {
        let mut h = [0u8; NET_HDR_LEN];
        h[0] = self.flags;
        h[1] = self.gso_type;
        h[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        h[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        h[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        h
    }

    /// Where the checksum the device must complete lies in a frame of `len` bytes:
    /// `Ok(None)` when the header asks for none, `Ok(Some((start, field)))` (the sum runs
    /// from `start` to the end, the result goes at `field`), or why the header cannot be
    /// honoured. Unknown flag bits are ignored, as the spec (5.1.6.2.2) asks.
    pub fn csum_request(&self, len: usize) -> Result<Option<(usize, usize)>, ChainError> {
        if self.gso_type != VIRTIO_NET_HDR_GSO_NONE as u8 {
            return Err(ChainError::GsoNotOffered {
                gso_type: self.gso_type,
            });
        }
        if self.flags & HDR_F_NEEDS_CSUM == 0 {
            return Ok(None);
        }
        let start = usize::from(self.csum_start);
        let field = start + usize::from(self.csum_offset);
        if field + 2 > len {
            return Err(ChainError::CsumOutsideFrame {
                start: self.csum_start,
                offset: self.csum_offset,
                len,
            });
        }
        Ok(Some((start, field)))
    }
}

/// A piece of guest memory as one host slice, as [`one_slice`] returns it.
type HostSlice<'a, M> =
    VolatileSlice<'a, BS<'a, <<M as GuestMemoryBackend>::R as GuestMemoryRegion>::B>>;

/// `[addr, addr + len)` as one host slice when one memory region holds all of it (for
/// the device's guests, always: buffers do not cross regions), found with one binary
/// search. vm-memory's general range walk (`get_slices`, `check_range`, `read_obj`,
/// `write_slice`) was a third of the worker's instructions per 1514-byte frame. `None`:
/// not inside one region; callers then take the general path, which reports the error.
#[inline]
fn one_slice<M: GuestMemoryBackend>(
    mem: &M,
    addr: GuestAddress,
    len: usize,
) -> Option<VolatileSlice<'_, BS<'_, <M::R as GuestMemoryRegion>::B>>> {
    let r = mem.find_region(addr)?;
    let off = addr.0.checked_sub(r.start_addr().0)?;
    if off.checked_add(len as u64)? > r.len() {
        return None;
    }
    r.get_slice(MemoryRegionAddress(off), len).ok()
}

/// A little-endian `u16` of the rings at `addr` ([`one_slice`] first, then vm-memory's
/// general path); `None` when it cannot be read.
fn ring_load<M: GuestMemoryBackend>(
    mem: &M,
    addr: GuestAddress,
    order: std::sync::atomic::Ordering,
) -> Option<u16> {
    let v = match one_slice(mem, addr, 2) {
        Some(s) => s.load::<u16>(0, order).ok(),
        None => None,
    };
    v.or_else(|| mem.load::<u16>(addr, order).ok())
        .map(u16::from_le)
}

/// The head index of the next chain the driver made available, taken off the ring (as
/// `Queue::pop_descriptor_chain` does, whose chain the device only ever asked its head
/// of): `None` when there is none, the queue is not ready, or the driver's avail index is
/// more than a ring ahead (which `Virtq::enable_notification` reports). A pass taking
/// several chains keeps one [`Rings`] instead.
pub fn pop_avail<M: GuestMemoryBackend>(queue: &mut Queue, mem: &M) -> Option<u16> {
    Rings::new(queue, mem).pop_avail(queue)
}

/// `Queue::add_used` (the used element, then the used index with release ordering, so the
/// driver never sees the index before the element). It leaves virtio-queue's count of
/// entries since the last interrupt decision alone: `Virtq::signal` decides from the used
/// index instead. A pass using several chains keeps one [`Rings`] instead.
pub fn add_used<M: GuestMemoryBackend>(
    queue: &mut Queue,
    mem: &M,
    head: u16,
    len: u32,
) -> Result<(), virtio_queue::Error> {
    Rings::new(queue, mem).add_used(queue, head, len)
}

/// A queue's avail and used rings, each looked up once as one host slice (as
/// [`ChainWalk`] does its descriptor table), so that taking a chain and using one cost a
/// load or a store each: virtio-queue's own, through vm-memory's general range walk, cost
/// about 300 instructions per chain (callgrind, 1514-byte frames), and one region lookup
/// per access was 6% of the worker's instructions. A ring not inside one region (never,
/// for the device's guests), or an access its slice refuses, takes vm-memory's general
/// path. A pass builds one at its start: the memory it borrows and the queue's ring
/// addresses and size do not change during one.
pub struct Rings<'m, M: GuestMemoryBackend> {
    mem: &'m M,
    /// flags, idx, ring[size], used_event.
    avail: Option<HostSlice<'m, M>>,
    /// flags, idx, ring[size] of 8-byte elements, avail_event.
    used: Option<HostSlice<'m, M>>,
}

impl<'m, M: GuestMemoryBackend> Rings<'m, M> {
    pub fn new(queue: &Queue, mem: &'m M) -> Rings<'m, M> {
        let size = usize::from(queue.size());
        let ring = |addr: u64, len: usize| {
            if addr == 0 {
                None
            } else {
                one_slice(mem, GuestAddress(addr), len)
            }
        };
        Rings {
            mem,
            avail: ring(queue.avail_ring(), 6 + 2 * size),
            used: ring(queue.used_ring(), 6 + 8 * size),
        }
    }

    pub fn mem(&self) -> &'m M {
        self.mem
    }

    /// The little-endian `u16` `off` bytes into the avail ring; `None` when it cannot be
    /// read.
    fn avail_u16(
        &self,
        queue: &Queue,
        off: usize,
        order: std::sync::atomic::Ordering,
    ) -> Option<u16> {
        let v = match &self.avail {
            Some(s) => s.load::<u16>(off, order).ok(),
            None => None,
        };
        v.or_else(|| {
            let at = GuestAddress(queue.avail_ring()).checked_add(off as u64)?;
            self.mem.load::<u16>(at, order).ok()
        })
        .map(u16::from_le)
    }

    /// See [`pop_avail`].
    pub fn pop_avail(&self, queue: &mut Queue) -> Option<u16> {
        if !queue.ready() || queue.avail_ring() == 0 {
            return None;
        }
        let order = std::sync::atomic::Ordering::Acquire;
        let idx = self.avail_u16(queue, 2, order)?;
        let next = queue.next_avail();
        let ahead = idx.wrapping_sub(next);
        if ahead == 0 || ahead > queue.size() {
            return None;
        }
        let slot = usize::from(next.checked_rem(queue.size())?);
        let head = self.avail_u16(queue, 4 + 2 * slot, order)?;
        queue.set_next_avail(next.wrapping_add(1));
        Some(head)
    }

    /// The first half of [`add_used`]: writes the used element at the device's next slot
    /// and moves past it, without publishing the used index, so the driver does not see it
    /// yet. An RX frame's buffers are put one by one and published together with
    /// [`Rings::publish_used`]: the spec has the device use all buffers of one received
    /// packet together, and Linux's `receive_mergeable` drops a frame whose `num_buffers`
    /// entries are not all there when it looks (`rx_length_errors`, "buffers out of ...
    /// missing").
    pub fn put_used(
        &self,
        queue: &mut Queue,
        head: u16,
        len: u32,
    ) -> Result<(), virtio_queue::Error> {
        use virtio_queue::Error;
        let size = queue.size();
        if head >= size {
            return Err(Error::InvalidDescriptorIndex);
        }
        let next = queue.next_used();
        let off = 4 + 8 * usize::from(next % size);
        // struct virtq_used_elem { le32 id; le32 len; }
        let elem = (u64::from(len) << 32 | u64::from(head)).to_le_bytes();
        let fast = self
            .used
            .as_ref()
            .is_some_and(|s| s.write_slice(&elem, off).is_ok());
        if !fast {
            let at = GuestAddress(queue.used_ring())
                .checked_add(off as u64)
                .ok_or(Error::AddressOverflow)?;
            self.mem
                .write_slice(&elem, at)
                .map_err(Error::GuestMemory)?;
        }
        queue.set_next_used(next.wrapping_add(1));
        Ok(())
    }

    /// The second half of [`add_used`]: publishes the used index (release ordering, so the
    /// driver sees every element put before it).
    pub fn publish_used(&self, queue: &Queue) -> Result<(), virtio_queue::Error> {
        use virtio_queue::Error;
        let next = queue.next_used().to_le();
        let order = std::sync::atomic::Ordering::Release;
        let fast = self
            .used
            .as_ref()
            .is_some_and(|s| s.store(next, 2, order).is_ok());
        if !fast {
            let at = GuestAddress(queue.used_ring())
                .checked_add(2)
                .ok_or(Error::AddressOverflow)?;
            self.mem
                .store(next, at, order)
                .map_err(Error::GuestMemory)?;
        }
        Ok(())
    }

    /// See [`add_used`].
    pub fn add_used(
        &self,
        queue: &mut Queue,
        head: u16,
        len: u32,
    ) -> Result<(), virtio_queue::Error> {
        self.put_used(queue, head, len)?;
        self.publish_used(queue)
    }
}

/// EVENT_IDX: the driver's `used_event` (interrupt me once the used index passes it),
/// read as virtio-queue reads it (relaxed, after the caller's fence).
pub fn used_event<M: GuestMemoryBackend>(
    queue: &Queue,
    mem: &M,
) -> Result<u16, virtio_queue::Error> {
    let at = GuestAddress(queue.avail_ring())
        .checked_add(4 + 2 * u64::from(queue.size()))
        .ok_or(virtio_queue::Error::AddressOverflow)?;
    match ring_load(mem, at, std::sync::atomic::Ordering::Relaxed) {
        Some(v) => Ok(v),
        None => mem
            .load::<u16>(at, std::sync::atomic::Ordering::Relaxed)
            .map(u16::from_le)
            .map_err(virtio_queue::Error::GuestMemory),
    }
}

/// How a guest descriptor chain was wrong. The chain is returned with length 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor chain is empty")]
    Empty,
    #[error("descriptor chain holds {len} bytes, too short for the {NET_HDR_LEN}-byte virtio_net_hdr_v1 and a frame")]
    TooShort { len: usize },
    #[error("TX chain of {len} bytes exceeds the {NET_HDR_LEN}-byte header plus a {MAX_FRAME}-byte frame")]
    TooLong { len: usize },
    #[error("descriptor {addr:#x}+{len} lies outside guest memory")]
    OutOfBounds { addr: u64, len: u32 },
    #[error("TX chain has a device-writable descriptor at {addr:#x} where the device must read")]
    WriteOnlyInTx { addr: u64 },
    #[error("RX chain has a device-readable descriptor at {addr:#x} where the device must write")]
    ReadOnlyInRx { addr: u64 },
    #[error("guest driver error: head index {head} is past the end of the {size}-entry ring")]
    HeadOutOfRange { head: u16, size: u16 },
    #[error("guest driver error: descriptor {index} has NEXT set with next = {next}, past the end of the {size}-entry table")]
    NextOutOfRange { index: u16, next: u16, size: u16 },
    #[error("guest driver error: chain runs past {size} descriptors (it loops)")]
    Loop { size: u16 },
    #[error(
        "guest driver error: descriptor {index} is indirect, but INDIRECT_DESC was not negotiated"
    )]
    Indirect { index: u16 },
    #[error("guest driver error: descriptor {index} of the table lies outside guest memory")]
    TableUnreadable { index: u16 },
    #[error("guest driver error: the kernel could not read the TX buffers (EFAULT): they lie inside a memory region but past what backs it")]
    Unreadable,
    #[error(
        "TX header asks for segmentation (gso_type {gso_type:#04x}) of a kind that was not negotiated (ECN and UDP are never offered)"
    )]
    GsoNotOffered { gso_type: u8 },
    #[error("TX header asks to segment (gso_type {gso_type}, gso_size {gso_size}, csum_start {csum_start}) a {len}-byte frame the device cannot cut: {fault}")]
    BadGso {
        gso_type: u8,
        gso_size: u16,
        csum_start: u16,
        len: usize,
        fault: GsoFault,
    },
    #[error("TX header's checksum (csum_start {start} + csum_offset {offset}, 2 bytes) lies outside the {len}-byte frame")]
    CsumOutsideFrame { start: u16, offset: u16, len: usize },
}

impl ChainError {
    /// The chain's structure is broken, not just its contents: something a working driver
    /// never produces (counted as [`crate::probes::DropReason::GuestDriverError`]).
    pub fn is_driver_error(&self) -> bool {
        matches!(
            self,
            ChainError::HeadOutOfRange { .. }
                | ChainError::NextOutOfRange { .. }
                | ChainError::Loop { .. }
                | ChainError::Indirect { .. }
                | ChainError::TableUnreadable { .. }
                | ChainError::Unreadable
        )
    }

    /// Whether the chain can go back on the used ring: only a head that names a real
    /// descriptor can.
    pub fn returnable(&self) -> bool {
        !matches!(self, ChainError::HeadOutOfRange { .. })
    }
}

/// The descriptors of one split-ring chain, read straight from the descriptor table and
/// checked at every step. virtio-queue's own iterator ends a chain silently when it loops,
/// when `next` points past the table or when a read fails, and it follows indirect tables;
/// the device would then forward whatever it got. This walk turns each of those into an
/// error instead, and ends after it.
pub struct ChainWalk<'a, M: GuestMemoryBackend> {
    mem: &'a M,
    table: GuestAddress,
    /// The whole descriptor table as one host slice, looked up once per chain rather than
    /// once per descriptor (`None`: not inside one region; each read then goes its own way).
    table_slice: Option<HostSlice<'a, M>>,
    size: u16,
    /// Index of the next descriptor to read; `None` once the chain (or an error) ended.
    next: Option<u16>,
    /// Descriptors read so far: a chain longer than the table loops.
    read: u16,
    /// Table index of the descriptor read last (names it in errors).
    last: u16,
}

impl<'a, M: GuestMemoryBackend> ChainWalk<'a, M> {
    /// The chain at `head` of `queue`'s descriptor table.
    pub fn new(mem: &'a M, queue: &Queue, head: u16) -> ChainWalk<'a, M> {
        let table = GuestAddress(queue.desc_table());
        let size = queue.size();
        ChainWalk {
            mem,
            table,
            table_slice: one_slice(mem, table, usize::from(size) * size_of::<Descriptor>()),
            size,
            next: Some(head),
            read: 0,
            last: head,
        }
    }
}

impl<M: GuestMemoryBackend> Iterator for ChainWalk<'_, M> {
    type Item = Result<Descriptor, ChainError>;

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.next.take()?;
        let size = self.size;
        if index >= size {
            return Some(Err(if self.read == 0 {
                ChainError::HeadOutOfRange { head: index, size }
            } else {
                ChainError::NextOutOfRange {
                    index: self.last,
                    next: index,
                    size,
                }
            }));
        }
        if self.read == size {
            return Some(Err(ChainError::Loop { size }));
        }
        self.read += 1;
        self.last = index;
        let at = usize::from(index) * size_of::<Descriptor>();
        let d = match &self.table_slice {
            Some(t) => t.read_obj::<Descriptor>(at).ok(),
            None => self
                .table
                .checked_add(at as u64)
                .and_then(|a| self.mem.read_obj::<Descriptor>(a).ok()),
        };
        let Some(d) = d else {
            return Some(Err(ChainError::TableUnreadable { index }));
        };
        if d.refers_to_indirect_table() {
            return Some(Err(ChainError::Indirect { index }));
        }
        if d.has_next() {
            self.next = Some(d.next());
        }
        Some(Ok(d))
    }
}

/// Reads `out.len()` bytes of guest memory at `addr` ([`one_slice`] first, then
/// vm-memory's general path).
fn read_guest<M: GuestMemoryBackend>(
    mem: &M,
    addr: GuestAddress,
    out: &mut [u8],
) -> Result<(), ChainError> {
    if let Some(s) = one_slice(mem, addr, out.len()) {
        s.copy_to(out);
        return Ok(());
    }
    mem.read_slice(out, addr)
        .map_err(|_| ChainError::OutOfBounds {
            addr: addr.0,
            len: out.len() as u32,
        })
}

/// Bytes of guest memory summed per copy into the device's stack buffer (the guest may
/// change its buffer meanwhile, so the sum reads a private copy, never a Rust reference
/// into guest memory).
const CSUM_CHUNK: usize = 4096;

/// A checked TX chain: where its frame's bytes (the header skipped) lie in guest memory.
/// Kept between sends so a deferred frame is sent again from the guest's own buffers,
/// which the guest may not reuse until the chain is used.
#[derive(Debug, Default, Clone)]
pub struct TxChain {
    segs: Vec<(GuestAddress, usize)>,
    len: usize,
    /// Checksum offload asked for (NEEDS_CSUM): where the sum starts and where the 2-byte
    /// field is, in the frame.
    csum_req: Option<(usize, usize)>,
    /// The field's bytes once computed, sent from here in place of the guest's 2 bytes
    /// (the guest's TX buffer is the driver's, and the device never writes it). Computed
    /// when the frame first goes into a send ([`TxChain::gather_into`],
    /// [`TxChain::copy_to`]), not at parse: a chain popped and given back to the ring
    /// (a batch full by bytes, or stopped before it) costs no sum, and a deferred frame's
    /// sum is kept for its retries.
    csum: Option<[u8; 2]>,
    /// Segmentation asked for (HOST_TSO4/6 and a TCPV4/TCPV6 header): the frame goes out
    /// as [`Gso::segments`] frames, each built by [`TxChain::gather_segments`].
    gso: Option<Gso>,
    /// Segment header blocks built for the segments being sent: segment `hdr_base + k`'s
    /// at `k * header_len`. Built once per segment (its payload summed then) and kept for
    /// a deferred chain's retries; at most [`crate::frame::MAX_BATCH_FRAMES`] of them, so
    /// the storage stops growing after the first large chain.
    seg_hdrs: Vec<u8>,
    hdr_base: usize,
    hdr_count: usize,
}

impl TxChain {
    /// Frame bytes (without the header).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The frame's header asked the device to complete its checksum (NEEDS_CSUM), or
    /// to segment it (every segment's checksum is the device's).
    pub fn offloads_csum(&self) -> bool {
        self.csum_req.is_some() || self.gso.is_some()
    }

    /// The chain is a TCP segment the device cuts (HOST_TSO4/6).
    pub fn is_gso(&self) -> bool {
        self.gso.is_some()
    }

    /// Length of the header block every segment of a GSO chain carries (0 otherwise).
    pub fn gso_header_len(&self) -> usize {
        self.gso.as_ref().map_or(0, Gso::header_len)
    }

    /// Frames the chain goes out as: its segments, or 1.
    pub fn frames(&self) -> usize {
        self.gso.as_ref().map_or(1, Gso::segments)
    }

    /// Length of frame `i` of the chain as sent (see [`TxChain::frames`]).
    pub fn frame_len(&self, i: usize) -> usize {
        self.gso.as_ref().map_or(self.len, |g| g.segment_len(i))
    }

    /// The checksum the device completed, once computed: the field's offset in the frame
    /// and the value sent there.
    pub fn csum(&self) -> Option<(usize, u16)> {
        let (_, field) = self.csum_req?;
        self.csum.map(|b| (field, u16::from_be_bytes(b)))
    }

    /// Computes the checksum the header asked for, if not done yet.
    fn complete_csum<M: GuestMemoryBackend>(&mut self, mem: &M) -> Result<(), ChainError> {
        if let (Some((start, _)), None) = (self.csum_req, self.csum) {
            self.csum = Some(self.sum_from(mem, start)?.finish().to_be_bytes());
        }
        Ok(())
    }

    /// Checks a chain and records its frame's pieces (reusing this value's storage).
    /// Returns the chain's total length in bytes.
    ///
    /// `offload.csum`: VIRTIO_NET_F_CSUM was negotiated, so the header is read and
    /// honoured (a NEEDS_CSUM checksum is computed when the frame first goes into a
    /// send); a header the device cannot honour (a GSO type not negotiated, a checksum
    /// field outside the frame, a segment whose headers `crate::gso` refuses) is a
    /// malformed chain. Without it the header is skipped unread, as a driver that
    /// negotiated no offload must leave it zero.
    pub fn parse<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        descs: impl Iterator<Item = Result<Descriptor, ChainError>>,
        offload: TxOffloads,
    ) -> Result<usize, ChainError> {
        self.segs.clear();
        self.len = 0;
        self.csum_req = None;
        self.csum = None;
        self.gso = None;
        self.hdr_count = 0;
        let mut hdr = [0u8; NET_HDR_LEN];
        let mut total = 0usize;
        let mut any = false;
        // The header may be split across descriptors and share one with frame bytes.
        let mut skip = NET_HDR_LEN;
        for d in descs {
            let d = d?;
            any = true;
            if d.is_write_only() {
                return Err(ChainError::WriteOnlyInTx { addr: d.addr().0 });
            }
            let len = d.len() as usize;
            if len > 0
                && one_slice(mem, d.addr(), len).is_none()
                && !GuestMemory::check_range(mem, d.addr(), len, Permissions::Read)
            {
                return Err(ChainError::OutOfBounds {
                    addr: d.addr().0,
                    len: d.len(),
                });
            }
            total += len;
            if total > NET_HDR_LEN + MAX_FRAME {
                return Err(ChainError::TooLong { len: total });
            }
            if offload.csum && skip > 0 {
                let n = skip.min(len);
                let at = NET_HDR_LEN - skip;
                read_guest(mem, d.addr(), &mut hdr[at..at + n])?;
            }
            if skip >= len {
                skip -= len;
                continue;
            }
            self.segs
                .push((GuestAddress(d.addr().0 + skip as u64), len - skip));
            skip = 0;
        }
        if !any {
            return Err(ChainError::Empty);
        }
        if total <= NET_HDR_LEN {
            return Err(ChainError::TooShort { len: total });
        }
        self.len = total - NET_HDR_LEN;
        if offload.csum {
            let h = TxHeader::from_bytes(&hdr);
            if h.gso_type == VIRTIO_NET_HDR_GSO_NONE as u8 {
                self.csum_req = h.csum_request(self.len)?;
            } else {
                self.gso = Some(self.parse_gso(mem, &h, offload)?);
            }
        }
        Ok(total)
    }

    /// The segmentation a GSO header asks for, its frame's headers read and checked.
    fn parse_gso<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        h: &TxHeader,
        offload: TxOffloads,
    ) -> Result<Gso, ChainError> {
        let v6 = match h.gso_type {
            GSO_TCPV4 if offload.tso4 => false,
            GSO_TCPV6 if offload.tso6 => true,
            gso_type => return Err(ChainError::GsoNotOffered { gso_type }),
        };
        let mut prefix = [0u8; GSO_HDR_MAX];
        let n = self.read_prefix(mem, &mut prefix)?;
        Gso::parse(h, &prefix[..n], self.len, v6).map_err(|fault| ChainError::BadGso {
            gso_type: h.gso_type,
            gso_size: h.gso_size,
            csum_start: h.csum_start,
            len: self.len,
            fault,
        })
    }

    /// The internet checksum of the frame's bytes from `start` to its end, read out of
    /// guest memory in [`CSUM_CHUNK`] pieces.
    fn sum_from<M: GuestMemoryBackend>(&self, mem: &M, start: usize) -> Result<Csum, ChainError> {
        self.sum_range(mem, start, self.len)
    }

    /// The internet checksum of the frame's bytes `from..to`, as [`TxChain::sum_from`].
    fn sum_range<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        from: usize,
        to: usize,
    ) -> Result<Csum, ChainError> {
        let mut c = Csum::new();
        let mut buf = [0u8; CSUM_CHUNK];
        let mut skip = from;
        let mut left = to.saturating_sub(from);
        for &(addr, len) in &self.segs {
            if left == 0 {
                break;
            }
            if skip >= len {
                skip -= len;
                continue;
            }
            let mut off = skip;
            skip = 0;
            let end = len.min(off + left);
            left -= end - off;
            while off < end {
                let n = (end - off).min(CSUM_CHUNK);
                read_guest(mem, GuestAddress(addr.0 + off as u64), &mut buf[..n])?;
                c.add(&buf[..n]);
                off += n;
            }
        }
        Ok(c)
    }

    /// Appends the frame to `list` as pieces of guest memory for one gathered send (the
    /// batch's reused storage: nothing is allocated or zeroed per frame). `Ok(false)`: it
    /// has more pieces than one send takes (then [`TxChain::copy_to`]); nothing is
    /// appended. An error means the memory map changed under a deferred frame and the
    /// chain no longer lies inside it.
    pub fn gather_into<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        list: &mut TxList,
    ) -> Result<bool, ChainError> {
        self.complete_csum(mem)?;
        let (Some((_, at)), Some(bytes)) = (&self.csum_req, &self.csum) else {
            if !self.gather_range(mem, list, 0, self.len)? {
                return Ok(false);
            }
            list.end_frame();
            return Ok(true);
        };
        // The frame with the 2 bytes at `at` sent from the device's copy: the guest's
        // pieces before the field, the device's 2 bytes, the guest's pieces after. The
        // list then points into this chain too, which stays where it is until the send
        // (the batch's chains are not moved while their list is out).
        if !self.gather_range(mem, list, 0, *at)? {
            return Ok(false);
        }
        if list.push_bytes(bytes).is_err() {
            list.cancel_frame();
            return Ok(false);
        }
        if !self.gather_range(mem, list, at + 2, self.len)? {
            return Ok(false);
        }
        list.end_frame();
        Ok(true)
    }

    /// Appends segments `from..` of a GSO chain to `list` as frames, as many as
    /// `max_frames` allows and, after the first, as fit in `max_bytes`: each is the
    /// device's header block for it (built here, see [`Gso::write_header`]) and its
    /// payload, straight from guest memory, or from `copy` (the whole frame, copied by
    /// [`TxChain::copy_to`]) when given. Returns how many segments were appended; 0 when
    /// the first has more pieces than one send takes (then copy the frame). An error
    /// (memory gone under a deferred chain) is returned only when no segment was
    /// appended; otherwise the next call, which starts at the segment it concerns, meets
    /// it. The list points into this chain's storage until it is sent.
    pub fn gather_segments<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        list: &mut TxList,
        from: usize,
        max_frames: usize,
        max_bytes: usize,
        copy: Option<&[u8]>,
    ) -> Result<usize, ChainError> {
        let Some(g) = self.gso else {
            return Ok(0);
        };
        let (hlen, nseg) = (g.header_len(), g.segments());
        let mut count = 0;
        let mut bytes = 0;
        while from + count < nseg && count < max_frames.max(1) {
            let l = g.segment_len(from + count);
            if count > 0 && bytes + l > max_bytes {
                break;
            }
            bytes += l;
            count += 1;
        }
        // Headers already built for a retry of these segments are kept (their payload
        // sums are not taken again): move them to the front.
        if (self.hdr_base..self.hdr_base + self.hdr_count).contains(&from) {
            let shift = from - self.hdr_base;
            self.seg_hdrs
                .copy_within(shift * hlen..self.hdr_count * hlen, 0);
            self.hdr_count -= shift;
        } else {
            self.hdr_count = 0;
        }
        self.hdr_base = from;
        if self.seg_hdrs.len() < count * hlen {
            // Nothing in any list points into this storage yet.
            self.seg_hdrs
                .resize(count.max(max_frames.min(nseg)) * hlen, 0);
        }
        for k in self.hdr_count..count {
            let r = g.payload(from + k);
            let sum = match copy {
                Some(c) => {
                    let mut s = Csum::new();
                    s.add(&c[r.clone()]);
                    s
                }
                None => match self.sum_range(mem, r.start, r.end) {
                    Ok(s) => s,
                    Err(e) if k == 0 => return Err(e),
                    Err(_) => {
                        count = k;
                        break;
                    }
                },
            };
            g.write_header(
                from + k,
                sum.folded(),
                &mut self.seg_hdrs[k * hlen..(k + 1) * hlen],
            );
            self.hdr_count = k + 1;
        }
        for k in 0..count {
            let r = g.payload(from + k);
            // A frame's first piece always fits.
            let _ = list.push_bytes(&self.seg_hdrs[k * hlen..(k + 1) * hlen]);
            let pushed = match copy {
                Some(c) => list.push_bytes(&c[r]).map(|()| true).or(Ok(false)),
                None => self.gather_range(mem, list, r.start, r.end),
            };
            match pushed {
                Ok(true) => list.end_frame(),
                Ok(false) | Err(_) if k > 0 => {
                    list.cancel_frame();
                    return Ok(k);
                }
                Ok(false) => {
                    list.cancel_frame();
                    return Ok(0);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(count)
    }

    /// Appends the frame's bytes `from..to` to the open frame of `list` (see
    /// [`TxChain::gather_into`]); `Ok(false)` (and the open frame cancelled): too many
    /// pieces.
    fn gather_range<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        list: &mut TxList,
        from: usize,
        to: usize,
    ) -> Result<bool, ChainError> {
        let mut pos = 0;
        for &(seg_addr, seg_len) in &self.segs {
            let (seg_start, seg_end) = (pos, pos + seg_len);
            pos = seg_end;
            let (a, b) = (seg_start.max(from), seg_end.min(to));
            if a >= b {
                if seg_start >= to {
                    break;
                }
                continue;
            }
            let addr = GuestAddress(seg_addr.0 + (a - seg_start) as u64);
            let len = b - a;
            if let Some(slice) = one_slice(mem, addr, len) {
                if list.push_volatile(&slice).is_err() {
                    list.cancel_frame();
                    return Ok(false);
                }
                continue;
            }
            let oob = || ChainError::OutOfBounds {
                addr: addr.0,
                len: len as u32,
            };
            let slices = match GuestMemory::get_slices(mem, addr, len, Permissions::Read) {
                Ok(s) => s,
                Err(_) => {
                    list.cancel_frame();
                    return Err(oob());
                }
            };
            for slice in slices {
                let pushed = match slice {
                    Ok(slice) => list.push_volatile(&slice),
                    Err(_) => {
                        list.cancel_frame();
                        return Err(oob());
                    }
                };
                if pushed.is_err() {
                    list.cancel_frame();
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Copies the frame's first `out.len()` bytes (fewer if it is shorter) into `out`;
    /// returns how many. For looking at headers (`crate::flow`) without copying the frame.
    pub fn read_prefix<M: GuestMemory>(
        &self,
        mem: &M,
        out: &mut [u8],
    ) -> Result<usize, ChainError> {
        let mut pos = 0;
        for &(addr, len) in &self.segs {
            let n = len.min(out.len() - pos);
            if n == 0 {
                break;
            }
            mem.read_slice(&mut out[pos..pos + n], addr)
                .map_err(|_| ChainError::OutOfBounds {
                    addr: addr.0,
                    len: len as u32,
                })?;
            pos += n;
        }
        Ok(pos)
    }

    /// Copies the frame into `out` (for chains [`TxChain::gather_into`] cannot send as
    /// they are), with the checksum the device completed in place (summed from the copy
    /// when not computed yet).
    pub fn copy_to<M: GuestMemory>(
        &mut self,
        mem: &M,
        out: &mut Vec<u8>,
    ) -> Result<(), ChainError> {
        out.clear();
        out.resize(self.len, 0);
        let mut pos = 0;
        for &(addr, len) in &self.segs {
            mem.read_slice(&mut out[pos..pos + len], addr)
                .map_err(|_| ChainError::OutOfBounds {
                    addr: addr.0,
                    len: len as u32,
                })?;
            pos += len;
        }
        if let Some((start, at)) = self.csum_req {
            let bytes = *self.csum.get_or_insert_with(|| {
                let mut c = Csum::new();
                c.add(&out[start..]);
                c.finish().to_be_bytes()
            });
            out[at..at + 2].copy_from_slice(&bytes);
        }
        Ok(())
    }
}

/// A writable guest buffer (one RX chain), checked and ready to be filled.
#[derive(Debug, Clone)]
pub struct RxBuffer {
    pub head: u16,
    segs: Vec<(GuestAddress, usize)>,
    pub capacity: usize,
    /// Descriptors in the chain (bounds how many chains the ring can hold).
    pub descs: usize,
}

/// Checks an RX chain: every descriptor device-writable and inside guest memory, room for
/// at least the header.
pub fn parse_rx_chain<M: GuestMemoryBackend>(
    mem: &M,
    head: u16,
    descs: impl Iterator<Item = Result<Descriptor, ChainError>>,
) -> Result<RxBuffer, ChainError> {
    let mut b = RxBuffer {
        head,
        segs: Vec::new(),
        capacity: 0,
        descs: 0,
    };
    b.parse(mem, head, descs)?;
    Ok(b)
}

impl RxBuffer {
    /// [`parse_rx_chain`] into this value, reusing its storage.
    fn parse<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        head: u16,
        descs: impl Iterator<Item = Result<Descriptor, ChainError>>,
    ) -> Result<(), ChainError> {
        self.head = head;
        self.segs.clear();
        self.capacity = 0;
        self.descs = 0;
        for d in descs {
            let d = d?;
            if !d.is_write_only() {
                return Err(ChainError::ReadOnlyInRx { addr: d.addr().0 });
            }
            let len = d.len() as usize;
            if len > 0
                && one_slice(mem, d.addr(), len).is_none()
                && !GuestMemory::check_range(mem, d.addr(), len, Permissions::Write)
            {
                return Err(ChainError::OutOfBounds {
                    addr: d.addr().0,
                    len: d.len(),
                });
            }
            self.capacity = self.capacity.saturating_add(d.len() as usize);
            self.descs += 1;
            self.segs.push((d.addr(), d.len() as usize));
        }
        if self.descs == 0 {
            return Err(ChainError::Empty);
        }
        if self.capacity < NET_HDR_LEN {
            return Err(ChainError::TooShort { len: self.capacity });
        }
        Ok(())
    }

    /// Writes `parts` back to back from the start of the buffer; returns bytes written.
    fn fill<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        parts: &mut [&[u8]],
    ) -> Result<usize, ChainError> {
        let mut written = 0;
        for &(addr, len) in &self.segs {
            let mut off = 0;
            while off < len {
                let Some(part) = parts.iter_mut().find(|p| !p.is_empty()) else {
                    return Ok(written);
                };
                let n = part.len().min(len - off);
                let a = GuestAddress(addr.0 + off as u64);
                match one_slice(mem, a, n) {
                    Some(slice) => slice.copy_from(&part[..n]),
                    None => {
                        mem.write_slice(&part[..n], a)
                            .map_err(|_| ChainError::OutOfBounds {
                                addr: a.0,
                                len: n as u32,
                            })?
                    }
                }
                *part = &part[n..];
                off += n;
                written += n;
            }
        }
        Ok(written)
    }
}

/// What happened to a frame offered to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written into `buffers` guest buffers (num_buffers in the header).
    Delivered { buffers: u16 },
    /// The guest has not posted enough buffers yet: keep the frame, wait for an RX kick.
    NoBuffers,
    /// The frame can never fit (see [`crate::probes::DropReason::RxNoRoom`]).
    NoRoom,
}

/// A malformed chain taken off a queue and handed back with length 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub head: u16,
    pub error: ChainError,
}

/// RX side state: buffers popped from the avail ring but not yet filled. Holding them
/// (instead of rewinding the ring) keeps "wait for more buffers" free of re-parsing and
/// makes rejected chains in between harmless.
#[derive(Debug, Default)]
pub struct RxBuffers {
    reserved: VecDeque<RxBuffer>,
    /// Buffers already used, kept so the next chains reuse their storage: no allocation
    /// per frame.
    free: Vec<RxBuffer>,
    /// Bytes written into each buffer of the frame being delivered (reused).
    lens: Vec<usize>,
    /// `flags` of every header written ([`HDR_F_DATA_VALID`] under GUEST_CSUM).
    hdr_flags: u8,
}

impl RxBuffers {
    /// The `flags` byte of the headers this device writes.
    pub fn set_header_flags(&mut self, flags: u8) {
        self.hdr_flags = flags;
    }

    pub fn reserved(&self) -> usize {
        self.reserved.len()
    }

    /// Most frame bytes (header excluded) the buffers reserved now can take: all of them
    /// with `mergeable`, else the first. After [`RxBuffers::reserve`] failed, that is all
    /// the guest has posted (and with `NoRoom` and `mergeable`, all its ring can hold).
    pub fn room(&self, mergeable: bool) -> usize {
        let cap = if mergeable {
            self.reserved_capacity()
        } else {
            self.reserved.front().map_or(0, |b| b.capacity)
        };
        cap.saturating_sub(NET_HDR_LEN)
    }

    fn reserved_capacity(&self) -> usize {
        self.reserved.iter().map(|b| b.capacity).sum()
    }

    /// Pops one more usable chain into the reserve; rejected chains go back used with
    /// length 0 and are reported through `rejected`. False when the ring is empty.
    fn reserve_one<M: GuestMemoryBackend>(
        &mut self,
        queue: &mut Queue,
        rings: &Rings<'_, M>,
        rejected: &mut Vec<Rejected>,
    ) -> Result<bool, virtio_queue::Error> {
        let mem = rings.mem();
        loop {
            let Some(head) = rings.pop_avail(queue) else {
                return Ok(false);
            };
            let mut b = self.free.pop().unwrap_or_else(|| RxBuffer {
                head,
                segs: Vec::new(),
                capacity: 0,
                descs: 0,
            });
            match b.parse(mem, head, ChainWalk::new(mem, queue, head)) {
                Ok(()) => {
                    self.reserved.push_back(b);
                    return Ok(true);
                }
                Err(error) => {
                    self.free.push(b);
                    if error.returnable() {
                        rings.add_used(queue, head, 0)?;
                    }
                    rejected.push(Rejected { head, error });
                }
            }
        }
    }

    /// Offers `frame` to the guest: header (with num_buffers) plus frame, spanning several
    /// buffers when `mergeable` (VIRTIO_NET_F_MRG_RXBUF), else one buffer.
    pub fn deliver<M: GuestMemoryBackend>(
        &mut self,
        queue: &mut Queue,
        rings: &Rings<'_, M>,
        frame: &[u8],
        mergeable: bool,
        rejected: &mut Vec<Rejected>,
    ) -> Result<RxOutcome, virtio_queue::Error> {
        match self.reserve(queue, rings, frame.len(), mergeable, rejected)? {
            Ok(take) => {
                let hdr = rx_header(take as u16, self.hdr_flags);
                self.write_parts(queue, rings, &mut [&hdr, frame], take, rejected)
            }
            Err(outcome) => Ok(outcome),
        }
    }

    /// Reserves guest buffers for a frame of `len` bytes (and its header) without writing
    /// it: `Ok(take)`, the frame goes into the first `take` reserved buffers; otherwise
    /// why it cannot go anywhere now (`NoBuffers`) or ever (`NoRoom`).
    pub fn reserve<M: GuestMemoryBackend>(
        &mut self,
        queue: &mut Queue,
        rings: &Rings<'_, M>,
        len: usize,
        mergeable: bool,
        rejected: &mut Vec<Rejected>,
    ) -> Result<Result<usize, RxOutcome>, virtio_queue::Error> {
        let needed = NET_HDR_LEN + len;
        if !mergeable {
            if self.reserved.is_empty() && !self.reserve_one(queue, rings, rejected)? {
                return Ok(Err(RxOutcome::NoBuffers));
            }
            if self.reserved[0].capacity < needed {
                // The buffer stays reserved for the next (smaller) frame.
                return Ok(Err(RxOutcome::NoRoom));
            }
            return Ok(Ok(1));
        }
        while self.reserved_capacity() < needed {
            if !self.reserve_one(queue, rings, rejected)? {
                let descs: usize = self.reserved.iter().map(|b| b.descs).sum();
                // Every descriptor of the ring is already reserved: no kick can help.
                if descs >= usize::from(queue.size()) {
                    return Ok(Err(RxOutcome::NoRoom));
                }
                return Ok(Err(RxOutcome::NoBuffers));
            }
        }
        let mut take = 0;
        let mut cap = 0;
        while cap < needed {
            cap += self.reserved[take].capacity;
            take += 1;
        }
        Ok(Ok(take))
    }

    /// Appends to `out` the guest memory a frame of `len` bytes fills in the first `take`
    /// reserved buffers (after the header), as iovecs the kernel can read into: the frame
    /// is then read from the socket straight into the guest (see [`RxBuffers::complete`]).
    pub fn payload_iovecs<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        take: usize,
        len: usize,
        out: &mut Vec<libc::iovec>,
    ) -> Result<(), Rejected> {
        let mut skip = NET_HDR_LEN;
        let mut left = len;
        for b in self.reserved.range(..take) {
            for &(addr, seg) in &b.segs {
                if left == 0 {
                    return Ok(());
                }
                if skip >= seg {
                    skip -= seg;
                    continue;
                }
                let n = (seg - skip).min(left);
                let a = GuestAddress(addr.0 + skip as u64);
                skip = 0;
                left -= n;
                let bad = || Rejected {
                    head: b.head,
                    error: ChainError::OutOfBounds {
                        addr: a.0,
                        len: n as u32,
                    },
                };
                // Without vm-memory's `xen` feature the pointer lives as long as the memory
                // mapping, which the caller borrows for the read.
                if let Some(slice) = one_slice(mem, a, n) {
                    out.push(libc::iovec {
                        iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                        iov_len: slice.len(),
                    });
                    continue;
                }
                let slices = GuestMemory::get_slices(mem, a, n, Permissions::Write);
                for slice in slices.map_err(|_| bad())? {
                    let slice = slice.map_err(|_| bad())?;
                    out.push(libc::iovec {
                        iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                        iov_len: slice.len(),
                    });
                }
            }
        }
        Ok(())
    }

    /// A frame of `len` bytes is in place in the first `take` reserved buffers (read
    /// there through [`RxBuffers::payload_iovecs`]): writes its header and uses them.
    pub fn complete<M: GuestMemoryBackend>(
        &mut self,
        queue: &mut Queue,
        rings: &Rings<'_, M>,
        take: usize,
        len: usize,
        rejected: &mut Vec<Rejected>,
    ) -> Result<RxOutcome, virtio_queue::Error> {
        let hdr = rx_header(take as u16, self.hdr_flags);
        if let Err(error) = self.reserved[0].fill(rings.mem(), &mut [&hdr[..]]) {
            let head = self.reserved[0].head;
            return self.abandon(queue, rings, take, Rejected { head, error }, rejected);
        }
        let mut left = NET_HDR_LEN + len;
        for b in self.reserved.drain(..take) {
            let w = b.capacity.min(left);
            left -= w;
            rings.put_used(queue, b.head, w as u32)?;
            self.free.push(b);
        }
        rings.publish_used(queue)?;
        Ok(RxOutcome::Delivered {
            buffers: take as u16,
        })
    }

    /// Memory went away under a checked chain (hot-unplug): hands the first `take`
    /// reserved buffers back empty rather than publish a partial frame.
    pub fn abandon<M: GuestMemoryBackend>(
        &mut self,
        queue: &mut Queue,
        rings: &Rings<'_, M>,
        take: usize,
        why: Rejected,
        rejected: &mut Vec<Rejected>,
    ) -> Result<RxOutcome, virtio_queue::Error> {
        for b in self.reserved.drain(..take) {
            rings.put_used(queue, b.head, 0)?;
            self.free.push(b);
        }
        rings.publish_used(queue)?;
        rejected.push(why);
        Ok(RxOutcome::NoRoom)
    }

    /// Writes `parts` (the header, with `num_buffers` = `take`, then the frame in as many
    /// pieces as it comes) back to back into the first `take` reserved buffers (which
    /// [`RxBuffers::reserve`] sized for them) and uses them; they then go to the free
    /// list. The pieces are consumed.
    pub fn write_parts<M: GuestMemoryBackend>(
        &mut self,
        queue: &mut Queue,
        rings: &Rings<'_, M>,
        parts: &mut [&[u8]],
        take: usize,
        rejected: &mut Vec<Rejected>,
    ) -> Result<RxOutcome, virtio_queue::Error> {
        let n = take as u16;
        self.lens.clear();
        let mut failed = None;
        for b in self.reserved.range(..take) {
            match b.fill(rings.mem(), parts) {
                Ok(w) => self.lens.push(w),
                Err(error) => {
                    failed = Some(Rejected {
                        head: b.head,
                        error,
                    });
                    break;
                }
            }
        }
        if let Some(r) = failed {
            return self.abandon(queue, rings, take, r, rejected);
        }
        // All of the frame's buffers become visible to the driver at once.
        for (b, &len) in self.reserved.drain(..take).zip(&self.lens) {
            rings.put_used(queue, b.head, len as u32)?;
            self.free.push(b);
        }
        rings.publish_used(queue)?;
        Ok(RxOutcome::Delivered { buffers: n })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_and_config() {
        // VERSION_1, MAC, EVENT_IDX, MRG_RXBUF, CSUM (0), GUEST_CSUM (1), GUEST_TSO4 (7),
        // GUEST_TSO6 (8), HOST_TSO4 (11), HOST_TSO6 (12); never GUEST_ECN (9) or HOST_ECN (13).
        assert_eq!(
            DEVICE_FEATURES,
            (1 << 32)
                | (1 << 5)
                | (1 << 29)
                | (1 << 15)
                | (1 << 0)
                | (1 << 1)
                | (1 << 7)
                | (1 << 8)
                | (1 << 11)
                | (1 << 12)
        );
        let g = RxGso {
            gso_type: 4,
            hdr_len: 74,
            gso_size: 1440,
            csum_start: 54,
            csum_offset: 16,
        };
        // flags NEEDS_CSUM, gso_type, hdr_len, gso_size, csum_start, csum_offset,
        // num_buffers, little-endian.
        assert_eq!(
            rx_gso_header(3, &g),
            [1, 4, 74, 0, 0xa0, 5, 54, 0, 16, 0, 3, 0]
        );
        let c = config_space([2, 0, 0, 0, 0, 1]);
        assert_eq!(&c[..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1);
        assert_eq!(rx_header(3, 0)[10..], [3, 0]);
        assert_eq!(rx_header(3, HDR_F_DATA_VALID)[0], 2);
        assert_eq!(rx_header(3, HDR_F_DATA_VALID)[1..10], [0; 9]);
    }

    #[test]
    fn tx_header_fields_and_checksum_bounds() {
        let h = TxHeader {
            flags: HDR_F_NEEDS_CSUM,
            gso_type: 0,
            csum_start: 34,
            csum_offset: 16,
            ..TxHeader::default()
        };
        let b = h.to_bytes();
        // flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers (LE).
        assert_eq!(b, [1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0, 0]);
        assert_eq!(TxHeader::from_bytes(&b), h);
        assert_eq!(h.csum_request(52), Ok(Some((34, 50))));
        assert_eq!(
            h.csum_request(51),
            Err(ChainError::CsumOutsideFrame {
                start: 34,
                offset: 16,
                len: 51
            })
        );
        // Offsets that would overflow a u16 sum do not wrap.
        let far = TxHeader {
            csum_start: u16::MAX,
            csum_offset: u16::MAX,
            ..h
        };
        assert!(far.csum_request(MAX_FRAME).is_err());
        // Without NEEDS_CSUM the offsets are not used, whatever they say (spec 5.1.6.2.2),
        // and unknown flag bits are ignored.
        let none = TxHeader { flags: 0x80, ..far };
        assert_eq!(none.csum_request(60), Ok(None));
        let gso = TxHeader { gso_type: 1, ..h };
        assert_eq!(
            gso.csum_request(1514),
            Err(ChainError::GsoNotOffered { gso_type: 1 })
        );
    }
}
