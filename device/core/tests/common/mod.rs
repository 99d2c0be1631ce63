//! A minimal virtio driver for tests: guest memory, split rings the test fills as a guest
//! would (with wrap-around, unlike `virtio_queue::mock`), and helpers to read what the
//! device put in the used rings.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

use vnet_device::net::{TxHeader, NET_HDR_LEN};

/// Per-descriptor data slot: room for the largest buffer (header + 65550-byte frame).
pub const SLOT: u64 = 0x11000;
pub const MEM_SIZE: usize = 48 << 20;
/// Guest memory ends here; any address beyond is out of bounds.
pub const MEM_END: u64 = MEM_SIZE as u64;

pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// The same memory as [`memory`], in regions that meet at each of `seams` (ascending):
/// a ring or table across a seam is not one host slice.
pub fn memory_split_at(seams: &[u64]) -> GuestMemoryMmap {
    let mut ranges = vec![];
    let mut start = 0;
    for &end in seams.iter().chain(&[MEM_END]) {
        ranges.push((GuestAddress(start), (end - start) as usize));
        start = end;
    }
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}

/// One segment of a chain the test builds.
#[derive(Debug, Clone)]
pub struct Seg {
    pub len: u32,
    pub write: bool,
    /// Bytes to place in the segment (device-readable segments).
    pub data: Vec<u8>,
    /// Use this address instead of the descriptor's own slot (out-of-bounds tests).
    pub addr: Option<u64>,
}

impl Seg {
    pub fn read(data: &[u8]) -> Seg {
        Seg {
            len: data.len() as u32,
            write: false,
            data: data.to_vec(),
            addr: None,
        }
    }
    pub fn write(len: u32) -> Seg {
        Seg {
            len,
            write: true,
            data: Vec::new(),
            addr: None,
        }
    }
}

pub struct DriverQueue {
    pub size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    data: GuestAddress,
    indirect: GuestAddress,
    free: Vec<u16>,
    chains: HashMap<u16, Vec<u16>>,
    avail_idx: u16,
    used_seen: u16,
}

/// An entry the device put in a used ring, with the descriptors it covered.
#[derive(Debug, Clone)]
pub struct Used {
    pub head: u16,
    pub len: u32,
    pub segs: Vec<(u64, u32)>,
}

impl DriverQueue {
    /// Queue `q` (0 = RX, 1 = TX) laid out in its own MiB; data slots after both.
    pub fn new(q: u64, size: u16) -> DriverQueue {
        let base = q * 0x10_0000;
        let data = 0x20_0000 + q * u64::from(size) * SLOT;
        assert!(
            data + u64::from(size) * SLOT <= MEM_END - 0x10_0000,
            "queue too large for test memory"
        );
        DriverQueue {
            size,
            desc: GuestAddress(base),
            avail: GuestAddress(base + 0x8000),
            used: GuestAddress(base + 0x9000),
            data: GuestAddress(data),
            // Indirect tables live in the last MiB, one 4 KiB page per queue slot use.
            indirect: GuestAddress(MEM_END - 0x10_0000 + q * 0x8_0000),
            free: (0..size).rev().collect(),
            chains: HashMap::new(),
            avail_idx: 0,
            used_seen: 0,
        }
    }

    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.try_set_desc_table_address(self.desc).unwrap();
        q.try_set_avail_ring_address(self.avail).unwrap();
        q.try_set_used_ring_address(self.used).unwrap();
        q.set_ready(true);
        q
    }

    pub fn free_descs(&self) -> usize {
        self.free.len()
    }

    fn slot(&self, i: u16) -> u64 {
        self.data.0 + u64::from(i) * SLOT
    }

    fn write_desc(mem: &GuestMemoryMmap, table: GuestAddress, i: u16, d: Descriptor) {
        mem.write_obj(d, GuestAddress(table.0 + u64::from(i) * 16))
            .unwrap();
    }

    /// Builds a chain from `segs` and makes it available. None if descriptors ran out.
    pub fn add(&mut self, mem: &GuestMemoryMmap, segs: &[Seg]) -> Option<u16> {
        if segs.is_empty() || self.free.len() < segs.len() {
            return None;
        }
        let ids: Vec<u16> = (0..segs.len()).map(|_| self.free.pop().unwrap()).collect();
        for (k, (seg, &id)) in segs.iter().zip(&ids).enumerate() {
            let addr = seg.addr.unwrap_or_else(|| self.slot(id));
            if seg.addr.is_none() && !seg.data.is_empty() {
                mem.write_slice(&seg.data, GuestAddress(addr)).unwrap();
            }
            let mut flags = if seg.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let next = ids.get(k + 1).copied().unwrap_or(0);
            if k + 1 < ids.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            Self::write_desc(
                mem,
                self.desc,
                id,
                Descriptor::new(addr, seg.len, flags, next),
            );
        }
        let head = ids[0];
        self.chains.insert(head, ids);
        self.publish(mem, head);
        Some(head)
    }

    /// Builds a one-descriptor chain pointing at an indirect table holding `segs`.
    pub fn add_indirect(&mut self, mem: &GuestMemoryMmap, segs: &[Seg]) -> Option<u16> {
        let id = self.free.pop()?;
        let table = GuestAddress(self.indirect.0 + u64::from(id) * 0x800);
        assert!(segs.len() <= 128);
        for (k, seg) in segs.iter().enumerate() {
            // Indirect segments point into this descriptor's data slot, back to back.
            let addr = seg.addr.unwrap_or(self.slot(id) + k as u64 * 0x100);
            if seg.addr.is_none() && !seg.data.is_empty() {
                assert!(seg.data.len() <= 0x100);
                mem.write_slice(&seg.data, GuestAddress(addr)).unwrap();
            }
            let mut flags = if seg.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if k + 1 < segs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            Self::write_desc(
                mem,
                table,
                k as u16,
                Descriptor::new(addr, seg.len, flags, k as u16 + 1),
            );
        }
        let d = Descriptor::new(
            table.0,
            16 * segs.len() as u32,
            VRING_DESC_F_INDIRECT as u16,
            0,
        );
        Self::write_desc(mem, self.desc, id, d);
        self.chains.insert(id, vec![id]);
        self.publish(mem, id);
        Some(id)
    }

    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = GuestAddress(self.avail.0 + 4 + 2 * u64::from(self.avail_idx % self.size));
        mem.write_obj(head.to_le(), slot).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.store(
            self.avail_idx.to_le(),
            GuestAddress(self.avail.0 + 2),
            Ordering::Release,
        )
        .unwrap();
    }

    /// Writes descriptor `i` of the table exactly as given: no bookkeeping, no checks
    /// (hostile-guest tests lay out loops, bad `next` values, indirect flags...).
    pub fn put_raw_desc(&self, mem: &GuestMemoryMmap, i: u16, d: Descriptor) {
        Self::write_desc(mem, self.desc, i, d);
    }

    /// Makes `head` available as it is, even out of range; the driver does not track it.
    pub fn publish_raw(&mut self, mem: &GuestMemoryMmap, head: u16) {
        self.publish(mem, head);
    }

    /// Writes the avail ring's index as given, behind the driver's bookkeeping (a driver
    /// that moves it backwards or past the ring), or back to the driver's own value (`None`).
    pub fn set_avail_idx_raw(&self, mem: &GuestMemoryMmap, v: Option<u16>) {
        let v = v.unwrap_or(self.avail_idx);
        mem.store(v.to_le(), GuestAddress(self.avail.0 + 2), Ordering::Release)
            .unwrap();
    }

    /// Guest address of the descriptor table.
    pub fn queue_desc_addr(&self) -> u64 {
        self.desc.0
    }

    pub fn avail_ring_addr(&self) -> u64 {
        self.avail.0
    }

    pub fn used_ring_addr(&self) -> u64 {
        self.used.0
    }

    /// Address of data slot `i` (room for [`SLOT`] bytes) for raw chains.
    pub fn slot_addr(&self, i: u16) -> u64 {
        self.slot(i)
    }

    /// Address of indirect table page `i` (2 KiB each) for raw chains.
    pub fn indirect_addr(&self, i: u16) -> u64 {
        self.indirect.0 + u64::from(i) * 0x800
    }

    /// New used entries since the last call as (id, len), without the driver's bookkeeping
    /// (for raw chains).
    pub fn take_used_raw(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let idx = self.used_idx(mem);
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = GuestAddress(self.used.0 + 4 + 8 * u64::from(self.used_seen % self.size));
            let id: u32 = mem.read_obj(e).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(e.0 + 4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// The device's used index.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        u16::from_le(
            mem.load(GuestAddress(self.used.0 + 2), Ordering::Acquire)
                .unwrap(),
        )
    }

    /// The driver's avail index: chains made available so far (wrapping).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Chains made available and not yet returned.
    pub fn outstanding(&self) -> usize {
        self.chains.len()
    }

    /// EVENT_IDX: interrupt me when the used index passes `v`.
    pub fn set_used_event(&self, mem: &GuestMemoryMmap, v: u16) {
        let addr = GuestAddress(self.avail.0 + 4 + 2 * u64::from(self.size));
        mem.store(v.to_le(), addr, Ordering::Release).unwrap();
    }

    /// EVENT_IDX: the avail_event the device asked for.
    pub fn avail_event(&self, mem: &GuestMemoryMmap) -> u16 {
        let addr = GuestAddress(self.used.0 + 4 + 8 * u64::from(self.size));
        u16::from_le(mem.load(addr, Ordering::Acquire).unwrap())
    }

    /// New used entries since the last call; their descriptors become free again.
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<Used> {
        let idx = self.used_idx(mem);
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = GuestAddress(self.used.0 + 4 + 8 * u64::from(self.used_seen % self.size));
            let id: u32 = mem.read_obj(e).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(e.0 + 4)).unwrap();
            let head = id as u16;
            let ids = self
                .chains
                .remove(&head)
                .unwrap_or_else(|| panic!("device used unknown head {head}"));
            let segs = ids
                .iter()
                .map(|&i| {
                    let d: Descriptor = mem
                        .read_obj(GuestAddress(self.desc.0 + u64::from(i) * 16))
                        .unwrap();
                    (d.addr().0, d.len())
                })
                .collect();
            self.free.extend(ids);
            out.push(Used { head, len, segs });
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// Reads the first `len` bytes the device wrote into a used RX buffer.
pub fn read_used(mem: &GuestMemoryMmap, u: &Used) -> Vec<u8> {
    let mut out = Vec::with_capacity(u.len as usize);
    let mut left = u.len as usize;
    for &(addr, len) in &u.segs {
        let n = left.min(len as usize);
        let mut b = vec![0u8; n];
        mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        out.extend(b);
        left -= n;
    }
    assert_eq!(left, 0, "used len larger than the chain");
    out
}

/// Reassembles RX frames from used buffers (mergeable: num_buffers entries per frame).
#[derive(Default)]
pub struct RxAssembler {
    cur: Vec<u8>,
    remaining: u16,
    pub frames: Vec<Vec<u8>>,
    /// Each frame's header `flags` (0, or DATA_VALID under GUEST_CSUM).
    pub flags: Vec<u8>,
}

impl RxAssembler {
    pub fn push(&mut self, mem: &GuestMemoryMmap, u: &Used) {
        let bytes = read_used(mem, u);
        if self.remaining == 0 {
            assert!(
                bytes.len() >= NET_HDR_LEN,
                "first buffer lacks the header: {} bytes",
                bytes.len()
            );
            let n = u16::from_le_bytes([bytes[10], bytes[11]]);
            assert!(n >= 1, "num_buffers 0");
            assert_eq!(
                bytes[0] & !vnet_device::net::HDR_F_DATA_VALID,
                0,
                "flags other than DATA_VALID set"
            );
            assert!(
                bytes[1..10].iter().all(|&b| b == 0),
                "GSO or csum fields set"
            );
            self.flags.push(bytes[0]);
            self.remaining = n;
            self.cur = bytes[NET_HDR_LEN..].to_vec();
        } else {
            self.cur.extend(bytes);
        }
        self.remaining -= 1;
        if self.remaining == 0 {
            self.frames.push(std::mem::take(&mut self.cur));
        }
    }
}

/// TX chain bytes: the 12-byte header then the frame, cut at `cuts` (segment lengths,
/// cycled; the last segment takes the rest).
pub fn tx_segs(frame: &[u8], cuts: &[usize]) -> Vec<Seg> {
    cut_chain(&TxHeader::default(), frame, cuts)
}

/// TX chain bytes: `hdr` then `frame`, cut at `cuts` (piece lengths, cycled; the last
/// piece takes the rest).
pub fn cut_chain(hdr: &TxHeader, frame: &[u8], cuts: &[usize]) -> Vec<Seg> {
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

/// Word-by-word ones'-complement sum of `b` (big-endian words, a last odd byte padded),
/// folded: the plain reference the checksum tests hold the device's sums to.
pub fn reference_sum(b: &[u8]) -> u16 {
    let mut s: u64 = b
        .chunks(2)
        .map(|w| (u64::from(w[0]) << 8) | u64::from(*w.get(1).unwrap_or(&0)))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// A frame whose bytes encode its sequence number, so loss, duplication, reordering and
/// corruption are all visible.
pub fn frame(seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    for (i, b) in f.iter_mut().enumerate() {
        *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
    if len >= 4 {
        f[..4].copy_from_slice(&seq.to_be_bytes());
    }
    f
}

/// The frames of a stream backend's bytes: each a 4-byte big-endian length, then the frame.
pub fn split_stream(wire: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut pos = 0;
    while pos < wire.len() {
        let len = u32::from_be_bytes(wire[pos..pos + 4].try_into().unwrap()) as usize;
        frames.push(wire[pos + 4..pos + 4 + len].to_vec());
        pos += 4 + len;
    }
    frames
}

pub fn seq_of(f: &[u8]) -> u32 {
    u32::from_be_bytes([f[0], f[1], f[2], f[3]])
}

pub fn atomic(mem: &GuestMemoryMmap) -> GuestMemoryAtomic<GuestMemoryMmap> {
    GuestMemoryAtomic::new(mem.clone())
}

/// A device on `mem`'s two rings with every offered feature, notifiers of its own and
/// `backend`, counting into `metrics`.
pub fn device(
    mem: &GuestMemoryMmap,
    rx: &DriverQueue,
    tx: &DriverQueue,
    backend: Box<dyn vnet_device::backend::Backend>,
    metrics: std::sync::Arc<vnet_device::metrics::Metrics>,
) -> vnet_device::device::NetDevice {
    device_with_features(
        mem,
        rx,
        tx,
        vnet_device::net::DEVICE_FEATURES,
        backend,
        metrics,
    )
}

/// [`device`] with only `features` negotiated.
pub fn device_with_features(
    mem: &GuestMemoryMmap,
    rx: &DriverQueue,
    tx: &DriverQueue,
    features: u64,
    backend: Box<dyn vnet_device::backend::Backend>,
    metrics: std::sync::Arc<vnet_device::metrics::Metrics>,
) -> vnet_device::device::NetDevice {
    vnet_device::device::NetDevice::new(
        atomic(mem),
        rx.queue(),
        tx.queue(),
        vnet_device::notify::Notifier::new().unwrap(),
        vnet_device::notify::Notifier::new().unwrap(),
        features,
        backend,
        metrics,
    )
}

/// A unique temp directory for sockets (5 helpers run tests at once).
pub fn tempdir(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "vnet-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

use std::sync::Arc;
use std::time::{Duration, Instant};
use vnet_device::backend::Backend;
use vnet_device::metrics::Metrics;
use vnet_device::notify::Notifier;
use vnet_device::worker::{spawn, WorkerHandle, WorkerOptions, WorkerSetup};

/// The guest side of a running worker.
pub struct Guest {
    pub mem: GuestMemoryMmap,
    pub rx: DriverQueue,
    pub tx: DriverQueue,
    pub rx_kick: Notifier,
    pub tx_kick: Notifier,
    pub rx_call: Notifier,
    pub tx_call: Notifier,
    pub metrics: Arc<Metrics>,
}

pub fn start(
    backend: Box<dyn Backend>,
    features: u64,
    options: WorkerOptions,
    qsize: u16,
) -> (Guest, WorkerHandle) {
    let mem = memory();
    let rx = DriverQueue::new(0, qsize);
    let tx = DriverQueue::new(1, qsize);
    let (rx_kick, tx_kick, rx_call, tx_call) = (
        Notifier::new().unwrap(),
        Notifier::new().unwrap(),
        Notifier::new().unwrap(),
        Notifier::new().unwrap(),
    );
    let metrics = Arc::new(Metrics::new());
    let setup = WorkerSetup {
        mem: atomic(&mem),
        rx: rx.queue(),
        tx: tx.queue(),
        rx_kick: rx_kick.try_clone().unwrap(),
        tx_kick: tx_kick.try_clone().unwrap(),
        rx_call: rx_call.try_clone().unwrap(),
        tx_call: tx_call.try_clone().unwrap(),
        features,
        backend,
        options,
        metrics: metrics.clone(),
    };
    let h = spawn(setup).unwrap();
    (
        Guest {
            mem,
            rx,
            tx,
            rx_kick,
            tx_kick,
            rx_call,
            tx_call,
            metrics,
        },
        h,
    )
}

/// Hang guard for tests that wait on another thread: generous, never a speed assertion.
pub struct Deadline(Instant);

impl Deadline {
    pub fn new() -> Deadline {
        Deadline(Instant::now() + Duration::from_secs(120))
    }
    #[track_caller]
    pub fn check(&self, what: &str) {
        assert!(
            Instant::now() < self.0,
            "gave up waiting for {what} (hang guard)"
        );
    }
}

/// Waits (with a hang guard) until `cond` holds, polling every millisecond.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let d = Deadline::new();
    while !cond() {
        d.check(what);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A datagram socketpair whose second end is sized like a proxy's socket
/// (`sockopt::size_proxy_dgram`): macOS's defaults (2 KiB send, 4 KiB receive) would refuse
/// most test frames; Linux keeps its defaults, as before.
pub fn gram_pair() -> (
    std::os::unix::net::UnixDatagram,
    std::os::unix::net::UnixDatagram,
) {
    let (a, peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
    vnet_device::sockopt::size_proxy_dgram(std::os::fd::AsFd::as_fd(&peer), None).unwrap();
    (a, peer)
}

/// Whether a datagram send failed because the path to the receiver is full. The OS decides
/// how that looks: Linux holds the datagram against the sender's own SO_SNDBUF and answers
/// EAGAIN (a socketpair is exempt from `max_dgram_qlen`); macOS has no datagram send buffer
/// to fill, appends straight to the receiver's and answers ENOBUFS when that is full.
pub fn is_dgram_full(e: &std::io::Error) -> bool {
    #[cfg(target_os = "linux")]
    return e.kind() == std::io::ErrorKind::WouldBlock;
    #[cfg(target_os = "macos")]
    return e.raw_os_error() == Some(libc::ENOBUFS);
}

/// A device on guest memory `mem` and queues `rx`/`tx`, its proxy a datagram socketpair
/// (the peer end returned, non-blocking): the rig most device tests start from.
pub fn gram_device(
    mem: &GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    rx_call: vnet_device::notify::Notifier,
    features: u64,
) -> (
    vnet_device::device::NetDevice,
    std::os::unix::net::UnixDatagram,
    std::sync::Arc<vnet_device::metrics::Metrics>,
) {
    use vnet_device::backend::{BackendOptions, UnixGram};
    let (a, peer) = gram_pair();
    peer.set_nonblocking(true).unwrap();
    let backend = UnixGram::from_socket(a, &BackendOptions::default()).unwrap();
    let metrics = std::sync::Arc::new(vnet_device::metrics::Metrics::new());
    let dev = vnet_device::device::NetDevice::new(
        atomic(mem),
        rx,
        tx,
        rx_call,
        vnet_device::notify::Notifier::new().unwrap(),
        features,
        Box::new(backend),
        metrics.clone(),
    );
    (dev, peer, metrics)
}

/// Every datagram waiting at `peer` (non-blocking), in order. The buffer is one byte larger
/// than the largest frame, so an oversized datagram shows as such instead of being cut.
pub fn recv_all(peer: &std::os::unix::net::UnixDatagram) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; vnet_device::net::MAX_FRAME + 1];
    while let Ok(n) = peer.recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}
