//! The simulated guest: its memory, and the TX and RX halves of its virtio-net driver.
//!
//! Like Linux's virtio-net, TX chains carry the 12-byte virtio_net_hdr_v1 followed by the
//! frame in one of several descriptor shapes, RX buffers are posted as small mergeable
//! buffers (one page each) the device fills and stitches together with `num_buffers`, and
//! both halves sleep on their interrupt when they have nothing to do.

use std::os::fd::{AsFd, BorrowedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use super::driver::{align, Buf, DriverError, GuestQueue, RingLayout};
use super::integrity::{Checker, Kind, Payload, Stamp, Verdict, STAMP_LEN};
use super::latency::OneWay;
use super::workload::{Idle, Next, Scheduler, SendLedger, SIM_HDR};
use vnet_device::metrics::Metrics;
use vnet_device::net::{TxHeader, HDR_F_DATA_VALID, HDR_F_NEEDS_CSUM, NET_HDR_LEN};
use vnet_device::notify::Notifier;
use vnet_device::probes::DropReason;

/// Where everything lives in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct GuestLayout {
    pub rx: RingLayout,
    pub tx: RingLayout,
    /// One TX slot per possible in-flight chain: virtio header + largest frame.
    pub tx_slots: GuestAddress,
    pub tx_slot_len: u64,
    /// Where each TX frame starts in its (page-aligned) slot; its virtio header sits
    /// just before it.
    pub tx_frame_offset: u64,
    pub rx_bufs: GuestAddress,
    pub rx_buf_len: u32,
    pub size: u64,
}

impl GuestLayout {
    pub fn new(
        queue_size: u16,
        max_frame: usize,
        rx_buf_len: u32,
        tx_frame_offset: u64,
    ) -> Result<Self, DriverError> {
        if tx_frame_offset < NET_HDR_LEN as u64 || tx_frame_offset > 4096 {
            return Err(DriverError::BadFrameOffset(tx_frame_offset));
        }
        // Page 0 stays unused so a zero address from a bug faults in the device's checks.
        let (rx, next) = RingLayout::at(GuestAddress(4096), queue_size)?;
        let (tx, next) = RingLayout::at(next, queue_size)?;
        let tx_slot_len = align(tx_frame_offset + max_frame as u64, 4096);
        let tx_slots = next;
        let rx_bufs = GuestAddress(tx_slots.0 + tx_slot_len * u64::from(queue_size));
        let end = rx_bufs.0 + u64::from(rx_buf_len) * u64::from(queue_size);
        Ok(GuestLayout {
            rx,
            tx,
            tx_slots,
            tx_slot_len,
            tx_frame_offset,
            rx_bufs,
            rx_buf_len,
            size: align(end, 4096),
        })
    }

    pub fn memory(&self) -> std::io::Result<GuestMemoryAtomic<GuestMemoryMmap>> {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), self.size as usize)])
            .map_err(|e| std::io::Error::other(format!("guest memory: {e}")))?;
        Ok(GuestMemoryAtomic::new(m))
    }

    /// Where slot `i`'s chain starts: its virtio header.
    fn tx_slot(&self, i: u32) -> GuestAddress {
        GuestAddress(
            self.tx_slots.0 + self.tx_slot_len * u64::from(i) + self.tx_frame_offset
                - NET_HDR_LEN as u64,
        )
    }

    fn rx_buf(&self, i: u32) -> GuestAddress {
        GuestAddress(self.rx_bufs.0 + u64::from(self.rx_buf_len) * u64::from(i))
    }
}

/// How the guest turns scheduled frames into bytes and finds its stamps in what arrives.
pub trait Framer: Send {
    /// Writes the frame for `n` at `addr` in guest memory; returns the frame length.
    /// `same_len_before`: this slot last held a frame of the same length, which the device
    /// only read, so a framer whose payload depends on the length alone may leave it.
    fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        n: &Next,
        same_len_before: bool,
    ) -> Result<usize, DriverError>;
    /// The stamped region of a received frame and, where the frame carries it, the
    /// sender's send order over all streams; None if the frame is not ours.
    fn region<'a>(&mut self, frame: &'a [u8]) -> Option<(&'a [u8], Option<u16>)>;
    /// A control frame (e.g. an ARP request) to send before any data; polled by TX.
    fn control(&mut self) -> Option<Vec<u8>> {
        None
    }
    /// Whether data may be sent yet (a real network needs the gateway's MAC first).
    fn ready(&self) -> bool {
        true
    }
}

pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
pub const PROXY_MAC: [u8; 6] = [0x02, 0x76, 0x6e, 0x65, 0x74, 0x01];
/// UDP destination port of the simulation's data frames (IEEE's "local experimental"
/// EtherType, which the frames carried before they were UDP).
pub const SIM_DATA_PORT: u16 = 0x88b5;
/// UDP destination port of its ACK frames: ACKs are a flow of their own, as a TCP
/// receiver's ACKs are not part of its peer's data flow.
pub const SIM_ACK_PORT: u16 = 0xffff;
const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
const PROXY_IP: [u8; 4] = [10, 0, 2, 2];

/// Frames for the built-in proxy: Ethernet + IPv4 + UDP headers (so the device can tell
/// their flows apart, as `small-first` needs), stamp, pseudo-random payload.
///
/// The UDP source port is the stream (ACKs: [`super::integrity::ACK_STREAM`]), the
/// destination port [`SIM_DATA_PORT`] or [`SIM_ACK_PORT`]: each data stream and the ACKs
/// are one flow each. The IPv4 identification is the sender's send order over all
/// streams (mod 2^16): the stamp's sequence number orders a stream, this number tells
/// the checker a frame overtook one sent before it on another stream
/// (`Counts::reordered_across_streams`). The UDP checksum is 0 (none, allowed on IPv4).
pub struct SimFramer {
    src: [u8; 6],
    dst: [u8; 6],
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    /// Frames built so far: the next frame's IPv4 identification.
    order: u16,
    payloads: std::collections::HashMap<usize, Payload>,
}

impl SimFramer {
    pub fn new(src: [u8; 6], dst: [u8; 6]) -> SimFramer {
        let (src_ip, dst_ip) = if src == GUEST_MAC {
            (GUEST_IP, PROXY_IP)
        } else {
            (PROXY_IP, GUEST_IP)
        };
        SimFramer {
            src,
            dst,
            src_ip,
            dst_ip,
            order: 0,
            payloads: Default::default(),
        }
    }

    /// Builds the whole frame into `out` (the proxy side, which sends from a buffer).
    pub fn build(&mut self, out: &mut Vec<u8>, n: &Next) {
        out.clear();
        out.extend_from_slice(&self.header(n));
        out.resize(SIM_HDR + STAMP_LEN, 0);
        let p = self.payload(n.len);
        out.extend_from_slice(p.bytes());
        let stamp = stamp_for(n);
        super::integrity::write_stamp(&mut out[SIM_HDR..SIM_HDR + STAMP_LEN], &stamp, p);
    }

    /// The headers of the next frame, `n`; counts it in the send order.
    fn header(&mut self, n: &Next) -> [u8; SIM_HDR] {
        let mut h = [0u8; SIM_HDR];
        h[0..6].copy_from_slice(&self.dst);
        h[6..12].copy_from_slice(&self.src);
        h[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut h[14..34];
        ip[0] = 0x45;
        // The largest frames (up to MAX_FRAME) hold one byte more than an IPv4 packet can
        // say it has: the packet is then 65535 bytes and the rest is Ethernet padding, so
        // the frame still parses and keeps its flow.
        let ip_len = (n.len - 14).min(usize::from(u16::MAX)) as u16;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[4..6].copy_from_slice(&self.order.to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&self.src_ip);
        ip[16..20].copy_from_slice(&self.dst_ip);
        let sum = ipv4_checksum(ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let udp = &mut h[34..42];
        udp[0..2].copy_from_slice(&n.stream.to_be_bytes());
        let dport = if n.ack { SIM_ACK_PORT } else { SIM_DATA_PORT };
        udp[2..4].copy_from_slice(&dport.to_be_bytes());
        udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
        self.order = self.order.wrapping_add(1);
        h
    }

    fn payload(&mut self, frame_len: usize) -> &Payload {
        self.payloads
            .entry(frame_len)
            .or_insert_with(|| Payload::new(frame_len - SIM_HDR - STAMP_LEN))
    }
}

/// The UDP pseudo-header sum (RFC 768) of an Ethernet + IPv4 (no options) + UDP frame
/// of `frame_len` bytes whose headers are `frame` (at least their 42 bytes), folded and
/// not complemented: what Linux leaves in the checksum field of a frame it hands a device
/// with NEEDS_CSUM. `None` for any other frame, and for one with bytes past its IPv4
/// packet (Ethernet padding, which a device summing to the end of the frame would
/// include).
pub fn udp_pseudo_sum(frame: &[u8], frame_len: usize) -> Option<u16> {
    if frame.len() < SIM_HDR || frame[12..14] != [0x08, 0x00] || frame[14] != 0x45 {
        return None;
    }
    let ip_len = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    if frame[23] != 17 || 14 + ip_len != frame_len {
        return None;
    }
    let mut sum: u32 = frame[26..34]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    sum += 17 + u32::from(u16::from_be_bytes([frame[38], frame[39]]));
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    Some(sum as u16)
}

/// Whether a frame's UDP checksum, if it has one (nonzero), verifies: `None` for a
/// frame without one (or not IPv4/UDP).
pub fn udp_csum_ok(frame: &[u8]) -> Option<bool> {
    let pseudo = udp_pseudo_sum(frame, frame.len())?;
    if frame[40..42] == [0, 0] {
        return None;
    }
    let mut sum = u32::from(pseudo);
    for c in frame[34..].chunks(2) {
        sum += u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    Some(sum == 0xffff)
}

/// The guest's side of TX checksum offload for the frame of `len` bytes after the header
/// at `addr`: an IPv4/UDP frame gets the pseudo-header sum in its checksum field and a
/// header saying NEEDS_CSUM from the UDP header on (csum_start 34, csum_offset 6); any
/// other frame keeps its zero header.
fn leave_udp_csum_to_device(
    m: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
) -> Result<(), DriverError> {
    let err = |a: GuestAddress| move |source| DriverError::Memory { addr: a.0, source };
    let at = GuestAddress(addr.0 + NET_HDR_LEN as u64);
    let mut head = [0u8; SIM_HDR];
    if len < SIM_HDR {
        return Ok(());
    }
    m.read_slice(&mut head, at).map_err(err(at))?;
    let Some(pseudo) = udp_pseudo_sum(&head, len) else {
        return Ok(());
    };
    let field = GuestAddress(at.0 + 40);
    m.write_slice(&pseudo.to_be_bytes(), field)
        .map_err(err(field))?;
    let hdr = TxHeader {
        flags: HDR_F_NEEDS_CSUM,
        gso_type: 0,
        csum_start: 34,
        csum_offset: 6,
        ..TxHeader::default()
    };
    m.write_slice(&hdr.to_bytes(), addr).map_err(err(addr))?;
    Ok(())
}

/// The IPv4 header checksum (RFC 791) of `ip`, its checksum field zero.
fn ipv4_checksum(ip: &[u8]) -> u16 {
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The stamped region of a simulation frame (after its UDP header) and the sender's send
/// order from its IPv4 identification; `None` for anything else.
pub fn sim_region(frame: &[u8]) -> Option<(&[u8], u16)> {
    if frame.len() < SIM_HDR || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
        return None;
    }
    let dport = u16::from_be_bytes([frame[36], frame[37]]);
    if dport != SIM_DATA_PORT && dport != SIM_ACK_PORT {
        return None;
    }
    Some((
        &frame[SIM_HDR..],
        u16::from_be_bytes([frame[18], frame[19]]),
    ))
}

pub(crate) fn stamp_for(n: &Next) -> Stamp {
    Stamp {
        stream: n.stream,
        kind: if n.ack { Kind::Ack } else { Kind::Data },
        seq: n.seq,
        len: (n.len - SIM_HDR) as u32,
    }
}

impl Framer for SimFramer {
    fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        n: &Next,
        same_len_before: bool,
    ) -> Result<usize, DriverError> {
        let hdr = self.header(n);
        let p = self.payload(n.len);
        let mut head = [0u8; SIM_HDR + STAMP_LEN];
        head[..SIM_HDR].copy_from_slice(&hdr);
        super::integrity::write_stamp(&mut head[SIM_HDR..], &stamp_for(n), p);
        let err = |a: GuestAddress| move |source| DriverError::Memory { addr: a.0, source };
        mem.write_slice(&head, addr).map_err(err(addr))?;
        // The payload is a function of the length only: a slot that carried a frame of
        // this length still holds it (the device never writes TX buffers, and if a bug
        // did, the checksum would catch it). Skipping the copy keeps the guest's cost out
        // of the device's throughput numbers.
        if !same_len_before {
            let body = GuestAddress(addr.0 + head.len() as u64);
            mem.write_slice(p.bytes(), body).map_err(err(body))?;
        }
        Ok(n.len)
    }

    fn region<'a>(&mut self, frame: &'a [u8]) -> Option<(&'a [u8], Option<u16>)> {
        sim_region(frame).map(|(r, order)| (r, Some(order)))
    }
}

/// State the guest threads, the proxy and the run share.
pub struct Shared {
    pub stop: AtomicBool,
    /// Guest to proxy (what the guest put on its TX ring).
    pub guest_sent: SendLedger,
    /// Proxy to guest.
    pub proxy_sent: SendLedger,
    /// ACKs the guest owes for proxy data it received.
    pub guest_acks_owed: AtomicU64,
    /// ACKs the proxy owes for guest data it received.
    pub proxy_acks_owed: AtomicU64,
    /// Frames the guest received and checked (ours only), and the data frames among them.
    pub guest_received: AtomicU64,
    pub guest_received_data: AtomicU64,
    pub guest_rx_bytes: AtomicU64,
    /// Frames the proxy received and checked, and the data frames among them.
    pub proxy_received: AtomicU64,
    pub proxy_received_data: AtomicU64,
    pub proxy_rx_bytes: AtomicU64,
    /// Every frame the guest put on its TX ring (control frames included), and every frame
    /// it took off its RX ring: compared with the device's own counts, they tell a frame
    /// the device lost from one a real network dropped.
    pub guest_frames_out: AtomicU64,
    pub guest_frames_in: AtomicU64,
    /// Wakes the guest TX thread (an ACK came due, or stop).
    pub guest_tx_wake: Notifier,
    /// Set when the guest has all the data the proxy will send: no more ACKs come due.
    /// (Only data, not ACKs, or the two directions would wait for each other.)
    pub guest_rx_data_complete: AtomicBool,
    /// Set when the proxy has all the data the guest will send.
    pub proxy_rx_data_complete: AtomicBool,
    /// The device's counters, once the worker runs: TX frames a bounded retry policy
    /// dropped never reach the proxy, so the ledgers count them as accounted for.
    pub device: std::sync::OnceLock<Arc<Metrics>>,
    /// One-way latency, guest to proxy (built-in proxy only).
    pub tx_latency: OneWay,
    /// One-way latency, proxy to guest (built-in proxy only).
    pub rx_latency: OneWay,
    /// Frames the built-in proxy received with a UDP checksum (the sim's guest sends
    /// none unless the device completes it, `--offload-csum`), and those of them that did
    /// not verify.
    pub udp_csum_checked: AtomicU64,
    pub udp_csum_bad: AtomicU64,
    /// `--offload-csum`: frames the guest received whose header lacked DATA_VALID.
    pub rx_data_valid_missing: AtomicU64,
}

impl Shared {
    pub fn new() -> std::io::Result<Shared> {
        Ok(Shared {
            stop: AtomicBool::new(false),
            guest_sent: SendLedger::default(),
            proxy_sent: SendLedger::default(),
            guest_acks_owed: AtomicU64::new(0),
            proxy_acks_owed: AtomicU64::new(0),
            guest_received: AtomicU64::new(0),
            guest_received_data: AtomicU64::new(0),
            guest_rx_bytes: AtomicU64::new(0),
            proxy_received: AtomicU64::new(0),
            proxy_received_data: AtomicU64::new(0),
            proxy_rx_bytes: AtomicU64::new(0),
            guest_frames_out: AtomicU64::new(0),
            guest_frames_in: AtomicU64::new(0),
            guest_tx_wake: Notifier::new()?,
            guest_rx_data_complete: AtomicBool::new(false),
            proxy_rx_data_complete: AtomicBool::new(false),
            device: std::sync::OnceLock::new(),
            tx_latency: OneWay::new(Instant::now()),
            rx_latency: OneWay::new(Instant::now()),
            udp_csum_checked: AtomicU64::new(0),
            udp_csum_bad: AtomicU64::new(0),
            rx_data_valid_missing: AtomicU64::new(0),
        })
    }

    /// Guest frames the device dropped on purpose (`retry_exhausted`): they will never
    /// arrive. The guest cannot tell which ones (a dropped chain comes back like a sent
    /// one), so each drop also stands for a lost ACK in the senders' windows, as a TCP
    /// sender's retransmission timeout would eventually free the window; the sim does not
    /// retransmit.
    pub fn tx_dropped(&self) -> u64 {
        self.device
            .get()
            .map_or(0, |m| m.drops.get(DropReason::RetryExhausted))
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sets `guest_rx_data_complete` when due; true once set.
    pub fn check_guest_rx_data(&self) -> bool {
        check_data_complete(
            &self.proxy_sent,
            &self.guest_received_data,
            0,
            &self.guest_rx_data_complete,
        )
    }

    pub fn check_proxy_rx_data(&self) -> bool {
        check_data_complete(
            &self.guest_sent,
            &self.proxy_received_data,
            self.tx_dropped(),
            &self.proxy_rx_data_complete,
        )
    }

    /// The guest has everything the proxy sent, ACKs included.
    pub fn guest_rx_complete(&self) -> bool {
        self.proxy_sent.all_done()
            && self.guest_received.load(Ordering::Acquire) >= self.proxy_sent.total()
    }

    /// The proxy has everything the guest sent, ACKs included.
    pub fn proxy_rx_complete(&self) -> bool {
        self.guest_sent.all_done()
            && self.proxy_received.load(Ordering::Acquire) + self.tx_dropped()
                >= self.guest_sent.total()
    }
}

/// `dropped`: frames the device dropped on the way, counted as arrived.
fn check_data_complete(
    sent: &SendLedger,
    received: &AtomicU64,
    dropped: u64,
    flag: &AtomicBool,
) -> bool {
    if flag.load(Ordering::Acquire) {
        return true;
    }
    if sent.data_done.load(Ordering::Acquire)
        && received.load(Ordering::Acquire) + dropped >= sent.data.load(Ordering::Acquire)
    {
        flag.store(true, Ordering::Release);
        return true;
    }
    false
}

/// Descriptor shapes a Linux guest produces for a TX frame.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Header in its own descriptor, the frame in one more (no ANY_LAYOUT tricks).
    HeaderApart,
    /// Header and frame in one descriptor (VERSION_1 drivers push the header in front).
    HeaderInline,
    /// Header apart, the linear part, then page-sized fragments like a TSO skb's frags.
    Fragmented,
}

fn chain_for(shape: Shape, addr: GuestAddress, frame_len: usize) -> Vec<Buf> {
    let hdr = NET_HDR_LEN as u64;
    let ro = |a: u64, l: u64| Buf {
        addr: GuestAddress(a),
        len: l as u32,
        device_writes: false,
    };
    let f = frame_len as u64;
    match shape {
        Shape::HeaderInline => vec![ro(addr.0, hdr + f)],
        Shape::HeaderApart => vec![ro(addr.0, hdr), ro(addr.0 + hdr, f)],
        Shape::Fragmented => {
            let linear = f.min(128);
            let mut v = vec![ro(addr.0, hdr), ro(addr.0 + hdr, linear)];
            let mut off = linear;
            // At most 17 fragments (MAX_SKB_FRAGS), so big frames get bigger fragments.
            let frag = 4096u64.max((f - linear).div_ceil(17));
            while off < f {
                let l = frag.min(f - off);
                v.push(ro(addr.0 + hdr + off, l));
                off += l;
            }
            v
        }
    }
}

/// How long a guest thread sleeps at most before re-checking the stop flag.
const NAP: Duration = Duration::from_millis(20);

/// The TX half: schedules frames, writes them into free slots, posts and kicks.
pub struct GuestTx {
    pub queue: GuestQueue,
    pub layout: GuestLayout,
    pub mem: GuestMemoryAtomic<GuestMemoryMmap>,
    pub framer: Box<dyn Framer>,
    pub sched: Scheduler,
    pub shared: Arc<Shared>,
    pub posted_frames: u64,
    pub posted_bytes: u64,
    /// Real-proxy mode: at most this many datagrams without an echo yet (0 = no limit).
    pub window: u64,
    /// CSUM negotiated: IPv4/UDP frames go with their checksum left to the device
    /// (NEEDS_CSUM, the pseudo-header sum in the field), as Linux sends them.
    pub offload_csum: bool,
}

/// Window bookkeeping: a UDP drop leaves its datagram outstanding forever, so once no
/// echo has come for [`WINDOW_RTO`] the sender writes off what is outstanding, like a
/// retransmission timeout that gives up instead of resending.
struct Window {
    size: u64,
    written_off: u64,
    last_echoes: u64,
    last_echo_at: Instant,
}

/// Longer than a loaded machine's scheduling hiccup, short against a run.
const WINDOW_RTO: Duration = Duration::from_millis(200);

impl Window {
    /// Whether one more data frame may go out.
    fn open(&mut self, shared: &Shared) -> bool {
        if self.size == 0 {
            return true;
        }
        let echoes = shared.guest_received_data.load(Ordering::Acquire);
        if echoes != self.last_echoes {
            self.last_echoes = echoes;
            self.last_echo_at = Instant::now();
        }
        let sent = shared.guest_sent.data.load(Ordering::Acquire);
        let outstanding = sent.saturating_sub(echoes + self.written_off);
        if outstanding < self.size {
            return true;
        }
        if self.last_echo_at.elapsed() >= WINDOW_RTO {
            self.written_off += outstanding;
            self.last_echo_at = Instant::now();
            return true;
        }
        false
    }
}

impl GuestTx {
    pub fn run(mut self) -> Result<GuestQueue, DriverError> {
        let mut free_slots: Vec<u32> = (0..u32::from(self.queue.size())).rev().collect();
        let mut frame_no: u64 = 0;
        // Length of the frame each slot last carried (0 = none, or a control frame).
        let mut slot_len = vec![0usize; usize::from(self.queue.size())];
        let mut window = Window {
            size: self.window,
            written_off: 0,
            last_echoes: 0,
            last_echo_at: Instant::now(),
        };
        let mut final_ack = false;
        loop {
            if self.shared.stopping() {
                break;
            }
            let mut progressed = false;
            while let Some(u) = self.queue.pop_used()? {
                free_slots.push(u.token);
                progressed = true;
            }
            let mut paced: Option<Duration> = None;
            let mut posted = 0u32;
            // Control frames (ARP) first; data only once the framer is ready.
            while let Some(frame) = self.framer.control() {
                let Some(slot) = free_slots.pop() else { break };
                let addr = self.layout.tx_slot(slot);
                let m = self.mem.memory();
                m.write_slice(&[0u8; NET_HDR_LEN], addr)
                    .map_err(|source| DriverError::Memory {
                        addr: addr.0,
                        source,
                    })?;
                let at = GuestAddress(addr.0 + NET_HDR_LEN as u64);
                m.write_slice(&frame, at)
                    .map_err(|source| DriverError::Memory { addr: at.0, source })?;
                slot_len[slot as usize] = 0;
                let chain = chain_for(Shape::HeaderInline, addr, frame.len());
                if self.queue.add(&chain, slot)?.is_none() {
                    free_slots.push(slot);
                    break;
                }
                self.shared.guest_frames_out.fetch_add(1, Ordering::AcqRel);
                posted += 1;
            }
            while self.framer.ready() {
                if !window.open(&self.shared) {
                    // Woken by the next echo (GuestRx::wake_tx_on_data), or retry soon
                    // for the write-off.
                    paced = Some(WINDOW_RTO / 4);
                    break;
                }
                let owed = self.shared.guest_acks_owed.load(Ordering::Acquire);
                let acks_in = self.shared.guest_received.load(Ordering::Acquire)
                    - self
                        .shared
                        .guest_received_data
                        .load(Ordering::Acquire)
                        .min(self.shared.guest_received.load(Ordering::Acquire));
                let acks_in = acks_in + self.shared.tx_dropped();
                let next = match self.sched.next(owed, acks_in) {
                    Ok(n) => n,
                    Err(Idle::Paced(d)) => {
                        paced = Some(d);
                        break;
                    }
                    // Woken by the RX half when an ACK arrives.
                    Err(Idle::Window) => break,
                    Err(Idle::DataDone) => {
                        self.shared
                            .guest_sent
                            .data_done
                            .store(true, Ordering::Release);
                        break;
                    }
                };
                let Some(&slot) = free_slots.last() else {
                    break;
                };
                let shape = match frame_no % 3 {
                    _ if next.ack => Shape::HeaderApart,
                    0 => Shape::HeaderApart,
                    1 => Shape::HeaderInline,
                    _ => Shape::Fragmented,
                };
                let addr = self.layout.tx_slot(slot);
                let chain = chain_for(shape, addr, next.len);
                if chain.len() > self.queue.free_descriptors() {
                    break;
                }
                let m = self.mem.memory();
                m.write_slice(&[0u8; NET_HDR_LEN], addr)
                    .map_err(|source| DriverError::Memory {
                        addr: addr.0,
                        source,
                    })?;
                let same = slot_len[slot as usize] == next.len;
                let len = self.framer.write(
                    &m,
                    GuestAddress(addr.0 + NET_HDR_LEN as u64),
                    &next,
                    same,
                )?;
                slot_len[slot as usize] = next.len;
                debug_assert_eq!(len, next.len);
                if self.offload_csum {
                    leave_udp_csum_to_device(&m, addr, len)?;
                }
                self.shared.tx_latency.sent(&stamp_for(&next));
                self.queue.add(&chain, slot)?;
                self.shared.guest_frames_out.fetch_add(1, Ordering::AcqRel);
                free_slots.pop();
                frame_no += 1;
                self.sched.sent(&next);
                self.posted_frames += 1;
                self.posted_bytes += len as u64;
                if next.ack {
                    self.shared.guest_acks_owed.fetch_sub(1, Ordering::AcqRel);
                    self.shared.guest_sent.acks.fetch_add(1, Ordering::AcqRel);
                } else {
                    self.shared.guest_sent.data.fetch_add(1, Ordering::AcqRel);
                }
                posted += 1;
                // Publish in batches so the device starts on big frames early, as a
                // guest under load does with xmit_more.
                if posted % 8 == 0 {
                    self.queue.publish()?;
                    self.queue.kick_if_needed()?;
                }
            }
            if posted > 0 {
                self.queue.publish()?;
                self.queue.kick_if_needed()?;
                progressed = true;
            }
            // The delayed ACK's timer: once all the proxy's data is in, a trailing odd
            // frame is acknowledged too.
            if !final_ack
                && self.shared.guest_sent.data_done.load(Ordering::Acquire)
                && self.shared.check_guest_rx_data()
            {
                final_ack = true;
                let every = self.sched.ack_every();
                let got = self.shared.guest_received_data.load(Ordering::Acquire);
                if every > 0 && got % every != 0 {
                    self.shared.guest_acks_owed.fetch_add(1, Ordering::AcqRel);
                    continue;
                }
            }
            // No more ACKs can come due once the guest has everything the proxy will send.
            if self.shared.guest_sent.data_done.load(Ordering::Acquire)
                && self.shared.check_guest_rx_data()
                && self.shared.guest_acks_owed.load(Ordering::Acquire) == 0
            {
                self.shared
                    .guest_sent
                    .acks_done
                    .store(true, Ordering::Release);
                if self.queue.in_flight() == 0 {
                    break;
                }
            }
            if progressed {
                continue;
            }
            // Ask for an interrupt when 3/4 of what is in flight is done (Linux's
            // enable_cb_delayed), or on the last one when little is left.
            let inflight = self.queue.in_flight();
            let delay = if inflight > 4 { inflight * 3 / 4 } else { 0 };
            if self.queue.enable_interrupts(delay)? {
                continue;
            }
            let timeout = paced.map_or(NAP, |p| p.min(NAP));
            poll2(
                self.queue.call_fd(),
                self.shared.guest_tx_wake.as_fd(),
                timeout,
            );
            self.queue.drain_call()?;
            let _ = self.shared.guest_tx_wake.drain();
            self.queue.disable_interrupts()?;
        }
        Ok(self.queue)
    }
}

/// Sleeps until either fd is readable or the timeout passes.
pub fn poll2(a: BorrowedFd<'_>, b: BorrowedFd<'_>, timeout: Duration) {
    let mut fds = [
        PollFd::new(a, PollFlags::POLLIN),
        PollFd::new(b, PollFlags::POLLIN),
    ];
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // An interrupted or failed poll just ends this nap early; the caller loops.
    let _ = nix::poll::poll(
        &mut fds,
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
    );
}

/// The RX half: keeps the ring full of mergeable buffers, reassembles and checks frames.
pub struct GuestRx {
    pub queue: GuestQueue,
    pub layout: GuestLayout,
    pub mem: GuestMemoryAtomic<GuestMemoryMmap>,
    pub framer: Box<dyn Framer>,
    pub checker: Checker,
    pub shared: Arc<Shared>,
    /// Owe one ACK per this many data frames received; 0 = no ACKs.
    pub ack_every: u64,
    /// Leave once everything the proxy sent has arrived (built-in mode); a real-proxy
    /// run ends on the run's own drain timeout instead.
    pub exit_when_complete: bool,
    /// Wake the TX half on every data frame (real-proxy mode: an echo opens the window).
    pub wake_tx_on_data: bool,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub bad_frames: u64,
    /// GUEST_CSUM negotiated: every header must say DATA_VALID (counted in
    /// `Shared::rx_data_valid_missing` when one does not).
    pub expect_data_valid: bool,
}

/// Reassembly state for a frame spread over several mergeable buffers.
struct Partial {
    want: u16,
    have: u16,
    bytes: Vec<u8>,
}

impl GuestRx {
    pub fn run(mut self) -> Result<(GuestQueue, Checker), DriverError> {
        let n = u32::from(self.queue.size());
        let buf_len = self.layout.rx_buf_len;
        for i in 0..n {
            let b = Buf {
                addr: self.layout.rx_buf(i),
                len: buf_len,
                device_writes: true,
            };
            self.queue.add(&[b], i)?;
        }
        self.queue.publish()?;
        self.queue.kick_if_needed()?;
        let mut partial: Option<Partial> = None;
        let mut scratch = vec![0u8; buf_len as usize];
        loop {
            if self.shared.stopping() {
                break;
            }
            let mut reposted = 0;
            let m = self.mem.memory();
            while let Some(u) = self.queue.pop_used()? {
                let addr = self.layout.rx_buf(u.token);
                let len = (u.len as usize).min(buf_len as usize);
                m.read_slice(&mut scratch[..len], addr)
                    .map_err(|source| DriverError::Memory {
                        addr: addr.0,
                        source,
                    })?;
                // Give the buffer straight back, as the driver refills its ring.
                let b = Buf {
                    addr,
                    len: buf_len,
                    device_writes: true,
                };
                self.queue.add(&[b], u.token)?;
                reposted += 1;
                let p = match partial.as_mut() {
                    Some(p) => {
                        p.bytes.extend_from_slice(&scratch[..len]);
                        p.have += 1;
                        p
                    }
                    None => {
                        if len < NET_HDR_LEN {
                            self.bad_frames += 1;
                            self.shared.guest_frames_in.fetch_add(1, Ordering::AcqRel);
                            self.checker.observe(&[], 0, None);
                            continue;
                        }
                        let want = u16::from_le_bytes([scratch[10], scratch[11]]).max(1);
                        if self.expect_data_valid && scratch[0] & HDR_F_DATA_VALID == 0 {
                            self.shared
                                .rx_data_valid_missing
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        partial.insert(Partial {
                            want,
                            have: 1,
                            bytes: scratch[NET_HDR_LEN..len].to_vec(),
                        })
                    }
                };
                if p.have >= p.want {
                    let frame = partial.take().unwrap().bytes;
                    self.deliver(&frame);
                }
            }
            drop(m);
            if reposted > 0 {
                self.queue.publish()?;
                self.queue.kick_if_needed()?;
                continue;
            }
            if !self.shared.guest_rx_data_complete.load(Ordering::Acquire)
                && self.shared.check_guest_rx_data()
            {
                // Wake TX so it can declare its ACKs done.
                let _ = self.shared.guest_tx_wake.notify();
            }
            if self.exit_when_complete && self.shared.guest_rx_complete() {
                break;
            }
            if self.queue.enable_interrupts(0)? {
                continue;
            }
            self.queue.wait(NAP)?;
            self.queue.disable_interrupts()?;
        }
        Ok((self.queue, self.checker))
    }

    fn deliver(&mut self, frame: &[u8]) {
        self.shared.guest_frames_in.fetch_add(1, Ordering::AcqRel);
        let Some((region, order)) = self.framer.region(frame) else {
            self.checker.foreign();
            return;
        };
        let (verdict, stamp) = self.checker.observe(region, frame.len(), order);
        self.rx_frames += 1;
        self.rx_bytes += frame.len() as u64;
        self.shared
            .guest_rx_bytes
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        // Only frames that count as received move completion; a duplicate must not make
        // up for a lost frame.
        if !counts_as_received(verdict) {
            return;
        }
        self.shared.guest_received.fetch_add(1, Ordering::AcqRel);
        if let (Some(s), true) = (stamp, self.exit_when_complete) {
            // Built-in mode: the proxy stamped the send time (a real proxy's echoes
            // carry the guest's own stamps, timed by nobody).
            self.shared.rx_latency.arrived(&s);
        }
        let mut data_no = 0;
        if matches!(stamp, Some(s) if s.kind == Kind::Ack) {
            // An ACK may open the TX half's send window.
            let _ = self.shared.guest_tx_wake.notify();
        }
        if matches!(stamp, Some(s) if s.kind == Kind::Data) {
            data_no = self
                .shared
                .guest_received_data
                .fetch_add(1, Ordering::AcqRel)
                + 1;
        }
        if self.ack_every > 0 && data_no > 0 && data_no % self.ack_every == 0 {
            self.shared.guest_acks_owed.fetch_add(1, Ordering::AcqRel);
            let _ = self.shared.guest_tx_wake.notify();
        } else if self.wake_tx_on_data {
            let _ = self.shared.guest_tx_wake.notify();
        }
    }
}

/// A monotonic progress stamp for the stall detector.
pub fn progress(shared: &Shared) -> (u64, u64) {
    (
        shared.guest_received.load(Ordering::Acquire),
        shared.proxy_received.load(Ordering::Acquire),
    )
}

/// Shared MAC learned from the network (real-proxy mode), readable by TX and RX framers.
pub type LearnedMac = Arc<Mutex<Option<[u8; 6]>>>;

pub fn counts_as_received(v: Verdict) -> bool {
    matches!(v, Verdict::InOrder | Verdict::Gap(_) | Verdict::Reordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy's check of a device-completed UDP checksum: none when the field is 0,
    /// good when the field holds what a device computes from the pseudo-header sum, bad
    /// once a byte changes; frames with Ethernet padding past the IPv4 packet are left
    /// alone.
    #[test]
    fn udp_checksums_are_checked_against_the_pseudo_header() {
        let mut framer = SimFramer::new(GUEST_MAC, PROXY_MAC);
        let mut f = Vec::new();
        let next = Next {
            stream: 2,
            seq: 5,
            ack: false,
            len: 1515,
        };
        framer.build(&mut f, &next);
        assert_eq!(udp_csum_ok(&f), None, "no checksum, nothing to check");
        let pseudo = udp_pseudo_sum(&f, f.len()).unwrap();
        f[40..42].copy_from_slice(&pseudo.to_be_bytes());
        let mut c = vnet_device::csum::Csum::new();
        c.add(&f[34..]);
        f[40..42].copy_from_slice(&c.finish().to_be_bytes());
        assert_eq!(udp_csum_ok(&f), Some(true));
        f[700] ^= 1;
        assert_eq!(udp_csum_ok(&f), Some(false));
        let padded = Next {
            len: vnet_device::frame::MAX_FRAME,
            ..next
        };
        framer.build(&mut f, &padded);
        assert_eq!(udp_pseudo_sum(&f, f.len()), None);
    }

    #[test]
    fn sim_frames_are_valid_ipv4_udp_whose_flow_is_the_stream() {
        let mut framer = SimFramer::new(GUEST_MAC, [2, 0, 0, 0, 0, 2]);
        let mut out = Vec::new();
        let max = vnet_device::frame::MAX_FRAME;
        for (i, (stream, ack, len)) in [(3u16, false, 1514usize), (7, true, 66), (9, false, max)]
            .into_iter()
            .enumerate()
        {
            let n = Next {
                stream,
                seq: 0,
                ack,
                len,
            };
            framer.build(&mut out, &n);
            assert_eq!(out.len(), len);
            let p = etherparse::SlicedPacket::from_ethernet(&out).expect("parses");
            let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
                panic!("not IPv4")
            };
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            // The largest frame carries one byte of padding past a full-size IPv4 packet.
            let ip_len = (len - 14).min(65535);
            assert_eq!(usize::from(h.total_len), ip_len);
            assert_eq!((h.identification, h.dont_fragment), (i as u16, true));
            assert_eq!((h.source, h.destination), (GUEST_IP, PROXY_IP));
            let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else {
                panic!("not UDP")
            };
            let dport = if ack { SIM_ACK_PORT } else { SIM_DATA_PORT };
            assert_eq!((udp.source_port(), udp.destination_port()), (stream, dport));
            assert_eq!(usize::from(udp.length()), ip_len - 20);
            let flow = vnet_device::flow::classify(&out, out.len());
            assert!(flow.is_some(), "{len}-byte frame has a flow");
            let (region, order) = sim_region(&out).expect("ours");
            assert_eq!((region.len(), order), (len - SIM_HDR, i as u16));
        }
    }
}
