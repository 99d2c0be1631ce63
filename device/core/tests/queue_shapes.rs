//! Descriptor chains of every shape through the device's data path, on `virtio_queue`'s
//! mock queues (driver side) and a real datagram socketpair (proxy side). The device is
//! stepped directly (`NetDevice::process_tx/rx`), so every assertion is deterministic.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use vnet_device::device::{NetDevice, RxPass, TxPass};
use vnet_device::metrics::Metrics;
use vnet_device::net::{
    DEVICE_FEATURES, FEATURE_EVENT_IDX, FEATURE_MRG_RXBUF, MAX_FRAME, NET_HDR_LEN,
};
use vnet_device::notify::Notifier;
use vnet_device::sockopt::{set_sock_buf, SockBuf};

const W: u16 = VRING_DESC_F_WRITE as u16;
/// Data for descriptors lives from here on (the mock rings sit below 2 MiB).
const DATA: u64 = 0x40_0000;

struct Rig<'a> {
    mem: &'a GuestMemoryMmap,
    rxq: MockSplitQueue<'a, GuestMemoryMmap>,
    txq: MockSplitQueue<'a, GuestMemoryMmap>,
    dev: NetDevice,
    peer: UnixDatagram,
    metrics: Arc<Metrics>,
    rx_call: Notifier,
    tx_next: u16,
    rx_next: u16,
}

fn rig(mem: &GuestMemoryMmap, features: u64, qsize: u16) -> Rig<'_> {
    let rxq = MockSplitQueue::create(mem, GuestAddress(0), qsize);
    let txq = MockSplitQueue::create(mem, GuestAddress(0x10_0000), qsize);
    let rx_call = Notifier::new().unwrap();
    let (dev, peer, metrics) = common::gram_device(
        mem,
        rxq.create_queue::<Queue>().unwrap(),
        txq.create_queue::<Queue>().unwrap(),
        rx_call.try_clone().unwrap(),
        features,
    );
    Rig {
        mem,
        rxq,
        txq,
        dev,
        peer,
        metrics,
        rx_call,
        tx_next: 0,
        rx_next: 0,
    }
}

/// Raw descriptors for one chain: NEXT flags and indices filled in from `offset`.
fn chain(parts: &[(u64, u32, u16)], offset: u16) -> Vec<RawDescriptor> {
    parts
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let last = i + 1 == parts.len();
            let f = if last {
                flags
            } else {
                flags | VRING_DESC_F_NEXT as u16
            };
            RawDescriptor::from(Descriptor::new(addr, len, f, offset + i as u16 + 1))
        })
        .collect()
}

impl Rig<'_> {
    fn add_tx(&mut self, parts: &[(u64, u32, u16)]) {
        self.txq
            .add_desc_chains(&chain(parts, self.tx_next), self.tx_next)
            .unwrap();
        self.tx_next += parts.len() as u16;
    }

    fn add_rx(&mut self, parts: &[(u64, u32, u16)]) {
        self.rxq
            .add_desc_chains(&chain(parts, self.rx_next), self.rx_next)
            .unwrap();
        self.rx_next += parts.len() as u16;
    }

    fn put(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    fn used(q: &MockSplitQueue<'_, GuestMemoryMmap>) -> Vec<(u32, u32)> {
        let n = q.used().idx().load();
        (0..n)
            .map(|i| q.used().ring().ref_at(i as usize).unwrap().load())
            .map(|e| (e.id(), e.len()))
            .collect()
    }

    fn recv_all(&self) -> Vec<Vec<u8>> {
        common::recv_all(&self.peer)
    }
}

/// A TX chain whose bytes are `hdr ++ frame`, cut into descriptors of `cuts` bytes.
fn put_split(r: &Rig<'_>, base: u64, frame: &[u8], cuts: &[usize]) -> Vec<(u64, u32, u16)> {
    let mut all = vec![0u8; NET_HDR_LEN];
    all.extend_from_slice(frame);
    let mut parts = Vec::new();
    let (mut pos, mut k) = (0, 0);
    while pos < all.len() {
        let end = (pos + cuts[k % cuts.len()]).min(all.len());
        // Leave gaps between descriptors so contiguity is never assumed.
        let addr = base + (pos as u64) * 2;
        r.put(addr, &all[pos..end]);
        parts.push((addr, (end - pos) as u32, 0));
        pos = end;
        k += 1;
    }
    parts
}

#[test]
fn tx_header_split_from_data() {
    let mem = common::memory();
    let mut r = rig(&mem, DEVICE_FEATURES, 16);
    let f = common::frame(1, 1514);
    let parts = put_split(&r, DATA, &f, &[NET_HDR_LEN, 1514]);
    assert_eq!(parts.len(), 2);
    r.add_tx(&parts);
    assert_eq!(r.dev.process_tx().unwrap(), TxPass::Idle);
    assert_eq!(r.recv_all(), vec![f]);
    assert_eq!(Rig::used(&r.txq), vec![(0, 0)]);
    let s = r.metrics.snapshot();
    assert_eq!((s.tx_frames, s.tx_bytes, s.rejected_chains), (1, 1514, 0));
    assert_eq!(s.tx_copied, 0, "sent straight from guest memory");
}

#[test]
fn tx_header_sharing_descriptors_with_data() {
    let mem = common::memory();
    let mut r = rig(&mem, DEVICE_FEATURES, 16);
    // One descriptor for everything, then a header cut in the middle (5 + 7...).
    let f1 = common::frame(1, 60);
    let p1 = put_split(&r, DATA, &f1, &[NET_HDR_LEN + 60]);
    r.add_tx(&p1);
    let f2 = common::frame(2, 999);
    let p2 = put_split(&r, DATA + 0x10000, &f2, &[5, 300]);
    r.add_tx(&p2);
    r.dev.process_tx().unwrap();
    assert_eq!(r.recv_all(), vec![f1, f2]);
}

#[test]
fn tx_many_small_descriptors() {
    let mem = common::memory();
    let mut r = rig(&mem, DEVICE_FEATURES, 256);
    let f = common::frame(3, 1514);
    let parts = put_split(&r, DATA, &f, &[7, 1, 13]);
    assert!(parts.len() > 200, "{} descriptors", parts.len());
    r.add_tx(&parts);
    r.dev.process_tx().unwrap();
    assert_eq!(r.recv_all(), vec![f]);
    assert_eq!(
        r.metrics.snapshot().tx_copied,
        1,
        "more pieces than one sendmsg gathers: copied"
    );
}

#[test]
fn tx_descriptor_spanning_two_memory_regions_is_gathered() {
    // RAM split around a hole or hot-plugged: two mappings, adjacent in guest addresses.
    let half = 8u64 << 20;
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), half as usize),
        (GuestAddress(half), half as usize),
    ])
    .unwrap();
    let mut r = rig(&mem, DEVICE_FEATURES, 16);
    let f = common::frame(7, 1514);
    // The header sits below the boundary, the frame's descriptor crosses it.
    let parts = put_split(&r, half - 700, &f, &[NET_HDR_LEN, 1514]);
    let (addr, len, _) = parts[1];
    assert!(addr < half && addr + u64::from(len) > half);
    r.add_tx(&parts);
    assert_eq!(r.dev.process_tx().unwrap(), TxPass::Idle);
    assert_eq!(r.recv_all(), vec![f]);
    let s = r.metrics.snapshot();
    assert_eq!((s.tx_frames, s.rejected_chains, s.tx_copied), (1, 0, 0));
}

#[test]
fn tx_deferred_frames_go_out_unchanged_and_in_order_gathered_or_copied() {
    let mem = common::memory();
    let mut r = rig(&mem, DEVICE_FEATURES, 256);
    // Two 60000-byte frames fill 128 KiB of buffer: the rest wait deferred in guest memory.
    // Odd frames have more pieces than a send gathers. Where the push-back comes from
    // depends on the OS: Linux holds an unread datagram against the sender's SO_SNDBUF
    // (64 KiB asked for, doubled), macOS against the receiver's SO_RCVBUF.
    #[cfg(target_os = "linux")]
    {
        // SAFETY: the device owns its open socket for the whole test; the borrow ends here.
        let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(r.dev.backend_fd()) };
        set_sock_buf(sock, SockBuf::Send, 64 << 10).unwrap();
    }
    #[cfg(target_os = "macos")]
    set_sock_buf(std::os::fd::AsFd::as_fd(&r.peer), SockBuf::Recv, 128 << 10).unwrap();
    let frames: Vec<Vec<u8>> = (0..6).map(|i| common::frame(i, 60000)).collect();
    for (i, f) in frames.iter().enumerate() {
        let cuts: &[usize] = if i % 2 == 1 {
            &[NET_HDR_LEN, 1500]
        } else {
            &[NET_HDR_LEN, 60000]
        };
        let parts = put_split(&r, DATA + 0x40000 * i as u64, f, cuts);
        r.add_tx(&parts);
    }
    let mut got = Vec::new();
    let mut blocked = 0;
    loop {
        let pass = r.dev.process_tx().unwrap();
        got.extend(r.recv_all());
        match pass {
            TxPass::Blocked => blocked += 1,
            TxPass::Idle => break,
            TxPass::More => {}
        }
        assert!(blocked < 100, "no progress");
    }
    assert!(
        blocked > 0,
        "the socket never pushed back: the test proves nothing"
    );
    assert_eq!(got.len(), frames.len());
    for (i, (g, f)) in got.iter().zip(&frames).enumerate() {
        assert!(g == f, "frame {i} differs");
    }
    let s = r.metrics.snapshot();
    assert_eq!(s.tx_copied, 3);
    assert_eq!(s.tx_frames, 6);
    assert!(s.episodes > 0);
}

/// INDIRECT_DESC is never offered, so a driver that uses an indirect table anyway has a
/// bug: the chain is returned unsent (hostile_chains.rs covers the other broken shapes).
#[test]
fn tx_indirect_chain_is_rejected_without_the_feature() {
    let mem = common::memory();
    let mut r = rig(&mem, DEVICE_FEATURES, 16);
    let f = common::frame(4, 300);
    let parts = put_split(&r, DATA, &f, &[NET_HDR_LEN, 100]);
    let table = DATA + 0x20_0000;
    for (i, d) in chain(&parts, 0).iter().enumerate() {
        mem.write_obj(*d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    r.add_tx(&[(table, 16 * parts.len() as u32, VRING_DESC_F_INDIRECT as u16)]);
    r.dev.process_tx().unwrap();
    assert!(r.recv_all().is_empty(), "frame {} was forwarded", f.len());
    assert_eq!(Rig::used(&r.txq), vec![(0, 0)]);
    let s = r.metrics.snapshot();
    assert_eq!((s.rejected_chains, s.drops.guest_driver_error), (1, 1));
}

#[test]
fn tx_bad_chains_are_rejected_returned_and_do_not_block_the_queue() {
    let mem = common::memory();
    let mut r = rig(&mem, DEVICE_FEATURES, 32);
    // 1: shorter than the header.
    r.add_tx(&[(DATA, 10, 0)]);
    // 2: header only, no frame.
    r.add_tx(&[(DATA, NET_HDR_LEN as u32, 0)]);
    // 3: data beyond guest memory.
    r.add_tx(&[(DATA, NET_HDR_LEN as u32, 0), (common::MEM_END - 8, 100, 0)]);
    // 4: a device-writable descriptor in a TX chain.
    r.add_tx(&[(DATA, NET_HDR_LEN as u32, 0), (DATA + 0x1000, 100, W)]);
    // 5: longer than header + largest frame.
    r.add_tx(&[(DATA, (NET_HDR_LEN + MAX_FRAME + 1) as u32, 0)]);
    // 6: a good frame after all that.
    let f = common::frame(6, 200);
    let p = put_split(&r, DATA + 0x40000, &f, &[NET_HDR_LEN, 200]);
    r.add_tx(&p);
    assert_eq!(r.dev.process_tx().unwrap(), TxPass::Idle);
    assert_eq!(r.recv_all(), vec![f], "only the good frame goes out");
    let used = Rig::used(&r.txq);
    assert_eq!(
        used.len(),
        6,
        "every chain is returned so the guest never hangs"
    );
    assert!(used.iter().all(|&(_, len)| len == 0));
    let s = r.metrics.snapshot();
    assert_eq!(s.rejected_chains, 5);
    assert_eq!(s.drops.tx_bad_chain, 5);
    assert_eq!(s.tx_frames, 1);
}

#[test]
fn rx_single_buffer_header_split_and_num_buffers_one() {
    let mem = common::memory();
    let mut r = rig(&mem, DEVICE_FEATURES & !FEATURE_MRG_RXBUF, 16);
    r.add_rx(&[(DATA, NET_HDR_LEN as u32, W), (DATA + 0x100, 1600, W)]);
    let f = common::frame(7, 1514);
    r.peer.send(&f).unwrap();
    assert_eq!(r.dev.process_rx().unwrap(), RxPass::Idle);
    assert_eq!(Rig::used(&r.rxq), vec![(0, (NET_HDR_LEN + 1514) as u32)]);
    let mut hdr = [0u8; NET_HDR_LEN];
    mem.read_slice(&mut hdr, GuestAddress(DATA)).unwrap();
    // GUEST_CSUM is among the features negotiated here: the header says DATA_VALID.
    assert_eq!(
        hdr,
        vnet_device::net::rx_header(1, vnet_device::net::HDR_F_DATA_VALID)
    );
    let mut got = vec![0u8; 1514];
    mem.read_slice(&mut got, GuestAddress(DATA + 0x100))
        .unwrap();
    assert_eq!(got, f);
    assert!(r.rx_call.drain().unwrap() > 0, "used buffer signalled");
    assert_eq!(r.metrics.snapshot().guest_irqs, 1);
}

#[test]
fn rx_bad_chains_rejected_and_frame_goes_to_next_good_one() {
    let mem = common::memory();
    let mut r = rig(&mem, DEVICE_FEATURES, 16);
    r.add_rx(&[(DATA, 2048, 0)]); // device-readable in RX
    r.add_rx(&[(common::MEM_END - 16, 2048, W)]); // out of bounds
    r.add_rx(&[(DATA, 8, W)]); // too short for the header
    r.add_rx(&[(DATA + 0x1000, 2048, W)]);
    let f = common::frame(8, 1000);
    r.peer.send(&f).unwrap();
    r.dev.process_rx().unwrap();
    let used = Rig::used(&r.rxq);
    assert_eq!(
        used,
        vec![(0, 0), (1, 0), (2, 0), (3, (NET_HDR_LEN + 1000) as u32)]
    );
    assert_eq!(r.metrics.snapshot().rejected_chains, 3);
    let mut got = vec![0u8; 1000];
    mem.read_slice(&mut got, GuestAddress(DATA + 0x1000 + NET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(got, f);
}

#[test]
fn rx_mergeable_65550_byte_frame_spans_buffers() {
    let mem = common::memory();
    let mut r = rig(&mem, DEVICE_FEATURES, 64);
    for i in 0..20u64 {
        r.add_rx(&[(DATA + i * 0x2000, 4096, W)]);
    }
    let f = common::frame(9, MAX_FRAME);
    r.peer.send(&f).unwrap();
    r.dev.process_rx().unwrap();
    let used = Rig::used(&r.rxq);
    // 65562 bytes = 16 full 4096-byte buffers + 26 bytes.
    assert_eq!(used.len(), 17);
    assert!(used[..16].iter().all(|&(_, len)| len == 4096));
    assert_eq!(used[16].1, 26);
    let mut all = Vec::new();
    for (i, &(id, len)) in used.iter().enumerate() {
        assert_eq!(id, i as u32, "buffers used in ring order");
        let mut b = vec![0u8; len as usize];
        mem.read_slice(&mut b, GuestAddress(DATA + u64::from(id) * 0x2000))
            .unwrap();
        all.extend(b);
    }
    assert_eq!(u16::from_le_bytes([all[10], all[11]]), 17, "num_buffers");
    assert_eq!(&all[NET_HDR_LEN..], &f[..]);
}

#[test]
fn rx_waits_for_buffers_without_loss_then_resumes() {
    let mem = common::memory();
    let mut r = rig(&mem, DEVICE_FEATURES | FEATURE_EVENT_IDX, 64);
    for i in 0..3u64 {
        r.add_rx(&[(DATA + i * 0x2000, 4096, W)]);
    }
    let big = common::frame(10, 20000);
    let small = common::frame(11, 100);
    r.peer.send(&big).unwrap();
    r.peer.send(&small).unwrap();
    // 3 buffers cannot hold 20012 bytes: the frame waits, nothing is used or dropped.
    assert_eq!(r.dev.process_rx().unwrap(), RxPass::NoBuffers);
    assert!(r.dev.rx_waiting());
    assert!(Rig::used(&r.rxq).is_empty());
    for i in 3..8u64 {
        r.add_rx(&[(DATA + i * 0x2000, 4096, W)]);
    }
    assert_eq!(r.dev.process_rx().unwrap(), RxPass::Idle);
    let used = Rig::used(&r.rxq);
    assert_eq!(
        used.len(),
        6,
        "5 buffers for the big frame, 1 for the small one"
    );
    let s = r.metrics.snapshot();
    assert_eq!((s.rx_frames, s.drops.total, s.rx_no_buffers), (2, 0, 1));
}

#[test]
fn rx_frame_too_big_for_a_non_mergeable_buffer_is_dropped_and_counted() {
    let mem = common::memory();
    let mut r = rig(&mem, DEVICE_FEATURES & !FEATURE_MRG_RXBUF, 16);
    r.add_rx(&[(DATA, 1526, W)]);
    r.peer.send(&common::frame(12, 9000)).unwrap();
    let f = common::frame(13, 1514);
    r.peer.send(&f).unwrap();
    r.dev.process_rx().unwrap();
    // The jumbo frame is dropped; the buffer it could not use takes the next frame.
    assert_eq!(Rig::used(&r.rxq), vec![(0, 1526)]);
    let s = r.metrics.snapshot();
    assert_eq!((s.drops.rx_no_room, s.rx_frames), (1, 2));
}
