//! The vhost-user daemon without QEMU: the `vhost` crate's frontend drives our request
//! loop over a socketpair in QEMU 10's order (SET_VRING_ENABLE before SET_FEATURES
//! included), guest memory is a memfd both sides map, and frames must flow between the
//! rings and a stream-socket proxy.

#![cfg(target_os = "linux")]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use vhost::vhost_user::message::{FrontendReq, VhostUserVringState};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::ByteValued;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};
use vmm_sys_util::eventfd::EventFd;

use vnet_device::backend::{BackendOptions, UnixStreamBackend};
use vnet_device::metrics::Metrics;
use vnet_device::net::{DEVICE_FEATURES, NET_HDR_LEN};
use vnet_device::worker::WorkerOptions;
use vnet_vhost::handler::{VhostNetHandler, OFFERED_FEATURES};
use vnet_vhost::session::{self, Header, SessionEnd};

const MEM_SIZE: usize = 4 << 20;
const QSIZE: u16 = 16;
const RXQ: u64 = 0x0;
const TXQ: u64 = 0x1_0000;
const DATA: u64 = 0x10_0000;

fn memfd(size: usize) -> File {
    // SAFETY: a NUL-terminated name; memfd_create returns a fresh fd or -1.
    let fd = unsafe { libc::memfd_create(c"vnet-test-guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd was just created and is owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size as u64).unwrap();
    f
}

struct Rig {
    frontend: Frontend,
    /// A second handle on the frontend's socket, for messages the crate's frontend refuses
    /// to send in QEMU's order.
    raw: UnixStream,
    mem: GuestMemoryMmap,
    file: File,
    proxy: UnixStream,
    metrics: Arc<Metrics>,
    handler: Arc<Mutex<VhostNetHandler>>,
    server: thread::JoinHandle<SessionEnd>,
    kicks: [EventFd; 2],
    calls: [EventFd; 2],
}

/// One TX chain of one descriptor at DATA holding `hdr` then `frame`, and the kick.
fn post_tx(
    mem: &GuestMemoryMmap,
    txq: &MockSplitQueue<GuestMemoryMmap>,
    kick: &EventFd,
    hdr: &[u8],
    frame: &[u8],
) {
    mem.write_slice(hdr, GuestAddress(DATA)).unwrap();
    mem.write_slice(frame, GuestAddress(DATA + hdr.len() as u64))
        .unwrap();
    txq.build_desc_chain(&[RawDescriptor::from(Descriptor::new(
        DATA,
        (hdr.len() + frame.len()) as u32,
        0,
        0,
    ))])
    .unwrap();
    kick.write(1).unwrap();
}

/// One writable 4 KiB RX buffer at DATA + 0x2_0000, and the kick; returns its address.
fn post_rx_buffer(rxq: &MockSplitQueue<GuestMemoryMmap>, kick: &EventFd) -> u64 {
    let rx_buf = DATA + 0x2_0000;
    rxq.build_desc_chain(&[RawDescriptor::from(Descriptor::new(
        rx_buf,
        4096,
        VRING_DESC_F_WRITE as u16,
        0,
    ))])
    .unwrap();
    kick.write(1).unwrap();
    rx_buf
}

fn rig() -> Rig {
    rig_with(&BackendOptions::default())
}

fn rig_with(opts: &BackendOptions) -> Rig {
    let (front_sock, back_sock) = UnixStream::pair().unwrap();
    let (dev_end, proxy) = UnixStream::pair().unwrap();
    let backend = UnixStreamBackend::from_socket(dev_end, opts).unwrap();
    let metrics = Arc::new(Metrics::default());
    let handler = Arc::new(Mutex::new(VhostNetHandler::with_backend(
        Box::new(backend),
        WorkerOptions::default(),
        metrics.clone(),
    )));
    let h = handler.clone();
    let server = thread::spawn(move || {
        static NEVER: AtomicBool = AtomicBool::new(false);
        session::serve(back_sock, h, &NEVER, session::DEFAULT_REQUEST_TIMEOUT)
            .expect("request loop failed")
    });
    let raw = front_sock.try_clone().unwrap();
    let file = memfd(MEM_SIZE);
    let region =
        MmapRegion::<()>::from_file(FileOffset::new(file.try_clone().unwrap(), 0), MEM_SIZE)
            .unwrap();
    let mem =
        GuestMemoryMmap::from_regions(vec![GuestRegionMmap::new(region, GuestAddress(0)).unwrap()])
            .unwrap();
    Rig {
        frontend: Frontend::from_stream(front_sock, 2),
        raw,
        mem,
        file,
        proxy,
        metrics,
        handler,
        server,
        kicks: [EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
        calls: [EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
    }
}

impl Rig {
    /// QEMU's virtual address of a guest physical address: our own mapping of the memfd.
    fn host_addr(&self, gpa: u64) -> u64 {
        self.mem.get_host_address(GuestAddress(gpa)).unwrap() as u64
    }

    /// SET_VRING_ENABLE written by hand: the crate's frontend only sends it after
    /// SET_FEATURES, QEMU sends it before.
    fn raw_enable(&mut self, index: u32, enable: bool) {
        let body = VhostUserVringState::new(index, u32::from(enable));
        let hdr = Header {
            code: FrontendReq::SET_VRING_ENABLE as u32,
            flags: 0x1,
            size: body.as_slice().len() as u32,
        };
        let mut msg = hdr.bytes().to_vec();
        msg.extend_from_slice(body.as_slice());
        self.raw.write_all(&msg).unwrap();
    }

    fn stats(&self) -> vnet_vhost::HandshakeStats {
        self.handler.lock().unwrap().stats()
    }

    /// Everything up to (not including) the rings, in QEMU's order.
    fn negotiate(&mut self, early_enable: bool) -> u64 {
        self.negotiate_acking(early_enable, !0)
    }

    /// [`Rig::negotiate`], acking only the offered features in `mask` (a guest or a
    /// QEMU command line that turns some off).
    fn negotiate_acking(&mut self, early_enable: bool, mask: u64) -> u64 {
        self.frontend.set_owner().unwrap();
        let offered = self.frontend.get_features().unwrap();
        assert_eq!(offered, OFFERED_FEATURES);
        assert_eq!(offered & DEVICE_FEATURES, DEVICE_FEATURES);
        assert_ne!(
            offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            0
        );
        let proto = self.frontend.get_protocol_features().unwrap();
        assert!(
            !proto.contains(VhostUserProtocolFeatures::REPLY_ACK),
            "REPLY_ACK offered: {proto:?}"
        );
        assert!(!proto.contains(VhostUserProtocolFeatures::MQ));
        self.frontend.set_protocol_features(proto).unwrap();
        if early_enable {
            self.raw_enable(0, true);
            self.raw_enable(1, true);
        }
        let acked = offered & mask;
        self.frontend.set_features(acked).unwrap();
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: self.host_addr(0),
            mmap_offset: 0,
            mmap_handle: self.file.as_raw_fd(),
        };
        self.frontend.set_mem_table(&[region]).unwrap();
        acked
    }

    fn setup_ring(&mut self, index: usize, q: &MockSplitQueue<'_, GuestMemoryMmap>) {
        self.setup_ring_at(index, q, 0);
    }

    fn setup_ring_at(&mut self, index: usize, q: &MockSplitQueue<'_, GuestMemoryMmap>, base: u16) {
        self.frontend.set_vring_num(index, QSIZE).unwrap();
        self.frontend.set_vring_base(index, base).unwrap();
        let cfg = VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: self.host_addr(q.desc_table_addr().0),
            used_ring_addr: self.host_addr(q.used_addr().0),
            avail_ring_addr: self.host_addr(q.avail_addr().0),
            log_addr: None,
        };
        self.frontend.set_vring_addr(index, &cfg).unwrap();
        self.frontend
            .set_vring_kick(index, &self.kicks[index])
            .unwrap();
        self.frontend
            .set_vring_call(index, &self.calls[index])
            .unwrap();
    }

    /// A request with a reply: everything sent before it has been handled.
    fn sync(&mut self) {
        self.frontend.get_features().unwrap();
    }
}

fn wait_call(fd: &EventFd) {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd. Bounded so a broken device fails the test instead of hanging it.
    let n = unsafe { libc::poll(&mut p, 1, 20_000) };
    assert_eq!(n, 1, "no interrupt from the device");
    fd.read().unwrap();
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn qemu_order_with_early_enable_then_frames_flow_both_ways() {
    let mut r = rig();
    let mem = r.mem.clone();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QSIZE);
    let txq = MockSplitQueue::create(&mem, GuestAddress(TXQ), QSIZE);

    let acked = r.negotiate(true);
    r.setup_ring(0, &rxq);
    r.setup_ring(1, &txq);
    r.sync();
    let s = r.stats();
    assert_eq!(s.early_enables, 2);
    assert_eq!(s.acked_features, Some(acked));
    assert_eq!(
        s.worker_starts, 1,
        "the early enables must count once features are set"
    );
    assert!(r.handler.lock().unwrap().is_running());

    // Guest -> proxy: one TX chain, header and frame in two descriptors.
    let out = frame(1514, 7);
    mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(DATA))
        .unwrap();
    mem.write_slice(&out, GuestAddress(DATA + 0x1000)).unwrap();
    let chain = [
        RawDescriptor::from(Descriptor::new(DATA, NET_HDR_LEN as u32, 0, 0)),
        RawDescriptor::from(Descriptor::new(DATA + 0x1000, out.len() as u32, 0, 0)),
    ];
    txq.build_desc_chain(&chain).unwrap();
    r.kicks[1].write(1).unwrap();
    r.proxy
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut len = [0u8; 4];
    r.proxy.read_exact(&mut len).unwrap();
    assert_eq!(u32::from_be_bytes(len) as usize, out.len());
    let mut got = vec![0u8; out.len()];
    r.proxy.read_exact(&mut got).unwrap();
    assert_eq!(got, out);
    wait_call(&r.calls[1]);
    assert_eq!(txq.used().idx().load(), 1);

    // Proxy -> guest: a writable buffer in the RX ring, a frame from the proxy.
    let inbound = frame(900, 3);
    let rx_buf = post_rx_buffer(&rxq, &r.kicks[0]);
    let mut msg = (inbound.len() as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&inbound);
    r.proxy.write_all(&msg).unwrap();
    wait_call(&r.calls[0]);
    let used = rxq.used().ring().ref_at(0).unwrap().load();
    assert_eq!(used.len() as usize, NET_HDR_LEN + inbound.len());
    let mut got = vec![0u8; inbound.len()];
    mem.read_slice(&mut got, GuestAddress(rx_buf + NET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(got, inbound);

    // Stopping reports where each ring is, so QEMU can resume there.
    assert_eq!(r.frontend.get_vring_base(0).unwrap(), 1);
    assert_eq!(r.frontend.get_vring_base(1).unwrap(), 1);
    assert!(!r.handler.lock().unwrap().is_running());
    let m = r.handler.lock().unwrap().stats();
    assert_eq!((m.worker_starts, m.worker_stops), (1, 1));

    // QEMU restarts the rings where they stopped (a guest reset does this): the same proxy
    // connection carries on.
    r.setup_ring_at(0, &rxq, 1);
    r.setup_ring_at(1, &txq, 1);
    r.frontend.set_vring_enable(0, true).unwrap();
    r.frontend.set_vring_enable(1, true).unwrap();
    r.sync();
    assert_eq!(r.stats().worker_starts, 2);
    let again = frame(60, 9);
    mem.write_slice(&again, GuestAddress(DATA + 0x3000 + NET_HDR_LEN as u64))
        .unwrap();
    mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(DATA + 0x3000))
        .unwrap();
    txq.add_desc_chains(
        &[RawDescriptor::from(Descriptor::new(
            DATA + 0x3000,
            (NET_HDR_LEN + again.len()) as u32,
            0,
            0,
        ))],
        2,
    )
    .unwrap();
    r.kicks[1].write(1).unwrap();
    r.proxy.read_exact(&mut len).unwrap();
    assert_eq!(u32::from_be_bytes(len) as usize, again.len());
    let mut got = vec![0u8; again.len()];
    r.proxy.read_exact(&mut got).unwrap();
    assert_eq!(got, again);
    assert_eq!(r.frontend.get_vring_base(1).unwrap(), 2);

    drop(r.frontend);
    drop(r.raw);
    assert_eq!(r.server.join().unwrap(), SessionEnd::Disconnected);
}

#[test]
fn without_any_enable_the_worker_waits_for_one() {
    let mut r = rig();
    let mem = r.mem.clone();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QSIZE);
    let txq = MockSplitQueue::create(&mem, GuestAddress(TXQ), QSIZE);
    r.negotiate(false);
    r.setup_ring(0, &rxq);
    r.setup_ring(1, &txq);
    r.sync();
    // PROTOCOL_FEATURES was negotiated, so rings start disabled.
    assert_eq!(r.stats().worker_starts, 0);
    r.frontend.set_vring_enable(0, true).unwrap();
    r.sync();
    assert_eq!(r.stats().worker_starts, 0, "one ring enabled is not enough");
    r.frontend.set_vring_enable(1, true).unwrap();
    r.sync();
    assert_eq!(r.stats().worker_starts, 1);
    assert_eq!(r.stats().early_enables, 0);
    // Disabling a ring stops the worker.
    r.frontend.set_vring_enable(1, false).unwrap();
    r.sync();
    assert!(!r.handler.lock().unwrap().is_running());
    drop(r.frontend);
    drop(r.raw);
    assert_eq!(r.server.join().unwrap(), SessionEnd::Disconnected);
}

#[test]
fn features_we_did_not_offer_are_refused() {
    let mut r = rig();
    r.frontend.set_owner().unwrap();
    r.frontend.get_features().unwrap();
    // GUEST_ECN (bit 9) is not ours to give: the handler refuses and records nothing.
    assert_eq!(OFFERED_FEATURES & (1 << 9), 0);
    r.frontend
        .set_features(OFFERED_FEATURES | (1 << 9))
        .unwrap();
    r.sync();
    assert_eq!(r.stats().acked_features, None);
    drop(r.frontend);
    drop(r.raw);
    assert_eq!(r.server.join().unwrap(), SessionEnd::Disconnected);
}

/// The checksum offloads are offered, and the device does what was acked: with CSUM a TX
/// frame marked NEEDS_CSUM leaves with its checksum completed and with GUEST_CSUM RX
/// headers say DATA_VALID; a front end that acks neither gets the frame as the guest
/// wrote it and headers with no flags.
#[test]
fn checksum_offloads_follow_what_was_acked() {
    use vnet_device::net::{
        TxHeader, FEATURE_CSUM, FEATURE_GUEST_CSUM, HDR_F_DATA_VALID, HDR_F_NEEDS_CSUM,
    };
    for acked_csum in [true, false] {
        let mut r = rig();
        let mem = r.mem.clone();
        let rxq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QSIZE);
        let txq = MockSplitQueue::create(&mem, GuestAddress(TXQ), QSIZE);
        let offloads = FEATURE_CSUM | FEATURE_GUEST_CSUM;
        assert_eq!(OFFERED_FEATURES & offloads, offloads, "offloads offered");
        let mask = if acked_csum { !0 } else { !offloads };
        let acked = r.negotiate_acking(true, mask);
        assert_eq!(acked & offloads != 0, acked_csum);
        r.setup_ring(0, &rxq);
        r.setup_ring(1, &txq);
        r.sync();
        assert_eq!(r.stats().acked_features, Some(acked));

        // The checksum field at 40..42 holds 0x1234 (the guest's pseudo-header sum).
        let mut out = frame(200, 5);
        out[40..42].copy_from_slice(&[0x12, 0x34]);
        let hdr = TxHeader {
            flags: HDR_F_NEEDS_CSUM,
            gso_type: 0,
            csum_start: 34,
            csum_offset: 6,
            ..TxHeader::default()
        };
        post_tx(&mem, &txq, &r.kicks[1], &hdr.to_bytes(), &out);
        r.proxy
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut len = [0u8; 4];
        r.proxy.read_exact(&mut len).unwrap();
        let mut got = vec![0u8; u32::from_be_bytes(len) as usize];
        r.proxy.read_exact(&mut got).unwrap();
        if acked_csum {
            // The range from csum_start, with the completed field, plus the pseudo-header
            // sum the guest had left there, sums to 0xffff.
            let mut sum: u32 = 0x1234
                + got[34..]
                    .chunks(2)
                    .map(|w| (u32::from(w[0]) << 8) | u32::from(*w.get(1).unwrap_or(&0)))
                    .sum::<u32>();
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            assert_eq!(sum, 0xffff);
            assert_eq!((&got[..40], &got[42..]), (&out[..40], &out[42..]));
        } else {
            assert_eq!(got, out, "sent as the guest wrote it");
        }
        wait_call(&r.calls[1]);

        let rx_buf = post_rx_buffer(&rxq, &r.kicks[0]);
        let inbound = frame(300, 1);
        let mut msg = (inbound.len() as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&inbound);
        r.proxy.write_all(&msg).unwrap();
        wait_call(&r.calls[0]);
        let mut flags = [0u8; 1];
        mem.read_slice(&mut flags, GuestAddress(rx_buf)).unwrap();
        let want = if acked_csum { HDR_F_DATA_VALID } else { 0 };
        assert_eq!(flags[0], want);
        assert_eq!(r.metrics.snapshot().tx_csum_offload, u64::from(acked_csum));

        drop(r.frontend);
        drop(r.raw);
        assert_eq!(r.server.join().unwrap(), SessionEnd::Disconnected);
    }
}

#[test]
fn a_frame_in_flight_at_stop_is_offered_again_and_arrives_whole() {
    stuck_at_stop_then_restarted(&[frame(60_000, 5)]);
}

/// The device keeps the chains popped behind a stuck frame for its next batch; stopped
/// then, it reports none of them as done, and the restarted ring offers all three again.
#[test]
fn chains_popped_behind_a_stuck_frame_at_stop_are_offered_again_in_order() {
    stuck_at_stop_then_restarted(&[frame(60_000, 1), frame(300, 2), frame(400, 3)]);
}

/// Makes `frames` available as one-descriptor TX chains together, the first big enough to
/// stick half-written in a tiny send buffer that the proxy does not read; stops the ring
/// there (the base excludes every chain taken but not used) and restarts it at that base.
/// Then the proxy reads: each frame exactly once, intact and in order, the first one
/// completing the bytes it had started before the stop.
fn stuck_at_stop_then_restarted(frames: &[Vec<u8>]) {
    let mut r = rig_with(&BackendOptions {
        sndbuf: Some(4096),
        ..Default::default()
    });
    let mem = r.mem.clone();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QSIZE);
    let txq = MockSplitQueue::create(&mem, GuestAddress(TXQ), QSIZE);
    r.negotiate(true);
    r.setup_ring(0, &rxq);
    r.setup_ring(1, &txq);
    r.sync();
    let mut descs = Vec::new();
    let mut at = DATA;
    for f in frames {
        mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(at))
            .unwrap();
        mem.write_slice(f, GuestAddress(at + NET_HDR_LEN as u64))
            .unwrap();
        let len = (NET_HDR_LEN + f.len()) as u32;
        descs.push(RawDescriptor::from(Descriptor::new(at, len, 0, 0)));
        at += u64::from(len).next_multiple_of(0x1000);
    }
    assert!(at <= DATA + 0x2_0000, "frames overlap the RX buffer");
    txq.add_desc_chains(&descs, 0).unwrap();
    r.kicks[1].write(1).unwrap();
    // Bounded wait for the worker to hit the full socket.
    for _ in 0..2000 {
        if r.metrics.episodes.get() > 0 {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert!(r.metrics.episodes.get() > 0, "frame never blocked");
    assert_eq!(r.frontend.get_vring_base(0).unwrap(), 0);
    assert_eq!(r.frontend.get_vring_base(1).unwrap(), 0);
    assert_eq!(txq.used().idx().load(), 0);

    r.setup_ring_at(0, &rxq, 0);
    r.setup_ring_at(1, &txq, 0);
    r.sync();
    assert_eq!(r.stats().worker_starts, 2);
    r.proxy
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    for want in frames {
        let mut len = [0u8; 4];
        r.proxy.read_exact(&mut len).unwrap();
        assert_eq!(u32::from_be_bytes(len) as usize, want.len());
        let mut got = vec![0u8; want.len()];
        r.proxy.read_exact(&mut got).unwrap();
        assert!(
            &got == want,
            "frame of {} B corrupted across the restart",
            want.len()
        );
    }
    wait_call(&r.calls[1]);
    let n = frames.len() as u16;
    for _ in 0..2000 {
        if txq.used().idx().load() == n {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(txq.used().idx().load(), n);
    assert_eq!(r.metrics.snapshot().tx_frames, u64::from(n));
    assert_eq!(r.frontend.get_vring_base(1).unwrap(), u32::from(n));
    drop(r.frontend);
    drop(r.raw);
    assert_eq!(r.server.join().unwrap(), SessionEnd::Disconnected);
}

/// `vnet-vhost --no-checksum-offload`: neither offload is offered, nor TSO (which needs
/// CSUM), nor the receive coalescing that needs GUEST_CSUM, and a front end that acks one
/// anyway is refused like any feature we did not offer. `--no-tso` withdraws only
/// HOST_TSO4/6, `--no-rx-coalescing` only GUEST_TSO4/6.
#[test]
fn without_checksum_offload_neither_is_offered_nor_accepted() {
    use vhost::vhost_user::VhostUserBackendReqHandlerMut;
    use vnet_device::net::{
        FEATURE_CSUM, FEATURE_GUEST_CSUM, FEATURE_GUEST_TSO4, FEATURE_GUEST_TSO6,
        FEATURE_HOST_TSO4, FEATURE_HOST_TSO6,
    };
    let handler = || {
        let (dev_end, proxy) = UnixStream::pair().unwrap();
        let backend = UnixStreamBackend::from_socket(dev_end, &BackendOptions::default()).unwrap();
        let h = VhostNetHandler::with_backend(
            Box::new(backend),
            WorkerOptions::default(),
            Arc::new(Metrics::default()),
        );
        (h, proxy)
    };
    let tso = FEATURE_HOST_TSO4 | FEATURE_HOST_TSO6;
    assert_eq!(OFFERED_FEATURES & tso, tso, "TSO offered by default");
    let gro = FEATURE_GUEST_TSO4 | FEATURE_GUEST_TSO6;
    let all = FEATURE_CSUM | FEATURE_GUEST_CSUM | tso | gro;
    let (h, _proxy) = handler();
    let mut h = h.without_checksum_offload();
    let offered = h.get_features().unwrap();
    assert_eq!(offered & all, 0, "{offered:#x}");
    assert_eq!(offered, OFFERED_FEATURES & !all);
    for f in [
        FEATURE_CSUM,
        FEATURE_GUEST_CSUM,
        FEATURE_HOST_TSO4,
        FEATURE_HOST_TSO6,
        FEATURE_GUEST_TSO4,
        FEATURE_GUEST_TSO6,
    ] {
        assert!(h.set_features(offered | f).is_err(), "{f:#x} accepted");
    }
    assert!(h.set_features(offered).is_ok());
    assert_eq!(h.stats().acked_features, Some(offered));

    let (h, _proxy) = handler();
    let mut h = h.without_tso();
    let offered = h.get_features().unwrap();
    assert_eq!(offered, OFFERED_FEATURES & !tso);
    assert!(h.set_features(offered | FEATURE_HOST_TSO6).is_err());
    assert!(h.set_features(offered).is_ok());

    let (h, _proxy) = handler();
    let mut h = h.without_rx_coalescing();
    let offered = h.get_features().unwrap();
    assert_eq!(offered, OFFERED_FEATURES & !gro, "{offered:#x}");
    assert_eq!(OFFERED_FEATURES & gro, gro, "offered by default");
    assert!(h.set_features(offered | FEATURE_GUEST_TSO4).is_err());
    assert!(h.set_features(offered).is_ok());
}
