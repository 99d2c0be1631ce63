//! A guest driver that writes nonsense into its rings must not stop the device: heads past
//! the end of the ring, chains that loop or point past the table, indirect descriptors the
//! device never offered, TX buffers the kernel cannot read. Each such chain is rejected and
//! counted (`drops.guest_driver_error`, a `frame_drop` row with reason 6), returned to the
//! guest with length 0 where its head is a real descriptor, never forwarded, and the
//! chains after it keep flowing.
//!
//! Descriptor tables are written raw into guest memory, as a buggy or hostile driver would.

mod common;

#[cfg(target_os = "linux")]
use std::fs::File;
#[cfg(target_os = "linux")]
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use common::{frame, DriverQueue};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
#[cfg(target_os = "linux")]
use vm_memory::FileOffset;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use vnet_device::device::{NetDevice, RxPass, TxPass};
use vnet_device::metrics::{Metrics, MetricsSnapshot};
use vnet_device::net::{DEVICE_FEATURES, FEATURE_MRG_RXBUF, NET_HDR_LEN};
use vnet_device::notify::Notifier;

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
const QSIZE: u16 = 16;

struct Rig {
    mem: GuestMemoryMmap,
    rx: DriverQueue,
    tx: DriverQueue,
    dev: NetDevice,
    peer: UnixDatagram,
    metrics: Arc<Metrics>,
}

fn rig_on(mem: GuestMemoryMmap, features: u64) -> Rig {
    let (rx, tx) = (DriverQueue::new(0, QSIZE), DriverQueue::new(1, QSIZE));
    let (dev, peer, metrics) = common::gram_device(
        &mem,
        rx.queue(),
        tx.queue(),
        Notifier::new().unwrap(),
        features,
    );
    Rig {
        mem,
        rx,
        tx,
        dev,
        peer,
        metrics,
    }
}

fn rig() -> Rig {
    rig_on(common::memory(), DEVICE_FEATURES)
}

impl Rig {
    /// A good one-descriptor TX chain at descriptor `i` carrying `f`.
    fn good_tx(&mut self, i: u16, f: &[u8]) {
        let addr = self.tx.slot_addr(i);
        let mut bytes = vec![0u8; NET_HDR_LEN];
        bytes.extend_from_slice(f);
        self.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
        self.tx.put_raw_desc(
            &self.mem,
            i,
            Descriptor::new(addr, bytes.len() as u32, 0, 0),
        );
        self.tx.publish_raw(&self.mem, i);
    }

    /// A good one-descriptor RX buffer at descriptor `i`.
    fn good_rx(&mut self, i: u16, len: u32) {
        let addr = self.rx.slot_addr(i);
        self.rx
            .put_raw_desc(&self.mem, i, Descriptor::new(addr, len, WRITE, 0));
        self.rx.publish_raw(&self.mem, i);
    }

    fn tx_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.tx
            .put_raw_desc(&self.mem, i, Descriptor::new(addr, len, flags, next));
    }

    fn rx_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.rx
            .put_raw_desc(&self.mem, i, Descriptor::new(addr, len, flags, next));
    }

    fn sent(&self) -> Vec<Vec<u8>> {
        common::recv_all(&self.peer)
    }

    fn m(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// What the device wrote into RX buffer `i` after the header.
    fn rx_frame(&self, i: u16, len: u32) -> Vec<u8> {
        let mut b = vec![0u8; len as usize - NET_HDR_LEN];
        self.mem
            .read_slice(
                &mut b,
                GuestAddress(self.rx.slot_addr(i) + NET_HDR_LEN as u64),
            )
            .unwrap();
        b
    }
}

#[test]
fn tx_head_past_the_ring_is_counted_and_the_next_chain_goes_out() {
    let mut r = rig();
    r.tx.publish_raw(&r.mem, 999);
    let f = frame(1, 200);
    r.good_tx(0, &f);
    assert_eq!(r.dev.process_tx().unwrap(), TxPass::Idle);
    assert_eq!(r.sent(), vec![f]);
    // 999 is no descriptor: it cannot be returned; the good chain is.
    assert_eq!(r.tx.take_used_raw(&r.mem), vec![(0, 0)]);
    let m = r.m();
    assert_eq!((m.rejected_chains, m.drops.guest_driver_error), (1, 1));
    assert_eq!(m.tx_frames, 1);
    // And again later: the device is still serving.
    r.tx.publish_raw(&r.mem, QSIZE);
    let g = frame(2, 60);
    r.good_tx(1, &g);
    r.dev.process_tx().unwrap();
    assert_eq!(r.sent(), vec![g]);
    assert_eq!(r.m().drops.guest_driver_error, 2);
}

/// Runs `f` on its own thread and fails the test if it has not returned in 10 s: the bug
/// these tests guard against is the device looping forever.
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("the device did not return: it loops on the corrupt avail index")
}

#[test]
fn tx_avail_index_moved_backwards_is_counted_once_and_a_sane_index_resumes() {
    let mut r = rig();
    let (a, b) = (frame(1, 100), frame(2, 100));
    r.good_tx(0, &a);
    r.good_tx(1, &b);
    assert_eq!(r.dev.process_tx().unwrap(), TxPass::Idle);
    assert_eq!(r.sent(), vec![a, b]);
    // The driver writes its index back to 0: 65534 entries "ahead" on a 16-entry ring.
    r.tx.set_avail_idx_raw(&r.mem, Some(0));
    let mut r = bounded(move || {
        for _ in 0..3 {
            assert_eq!(r.dev.process_tx().unwrap(), TxPass::Idle);
        }
        r
    });
    assert_eq!(
        r.m().drops.guest_driver_error,
        1,
        "counted once, not per pass"
    );
    assert!(r.sent().is_empty());
    // A sane index again, with a new chain: it goes out.
    r.tx.set_avail_idx_raw(&r.mem, None);
    let c = frame(3, 80);
    r.good_tx(2, &c);
    assert_eq!(r.dev.process_tx().unwrap(), TxPass::Idle);
    assert_eq!(r.sent(), vec![c]);
    assert_eq!(r.m().tx_frames, 3);
}

#[test]
fn rx_avail_index_past_the_ring_does_not_spin_the_device() {
    let mut r = rig_on(common::memory(), DEVICE_FEATURES & !FEATURE_MRG_RXBUF);
    let f = frame(7, 1000);
    r.peer.send(&f).unwrap();
    // No buffers, and an index 40 entries ahead of the device on a 16-entry ring.
    r.rx.set_avail_idx_raw(&r.mem, Some(40));
    let mut r = bounded(move || {
        assert_eq!(r.dev.process_rx().unwrap(), RxPass::NoBuffers);
        r
    });
    assert_eq!(r.m().drops.guest_driver_error, 1);
    // Sane again with one buffer: the waiting frame lands in it.
    r.rx.set_avail_idx_raw(&r.mem, Some(0));
    r.good_rx(3, 2048);
    assert_eq!(r.dev.process_rx().unwrap(), RxPass::Idle);
    let len = (NET_HDR_LEN + f.len()) as u32;
    assert_eq!(r.rx.take_used_raw(&r.mem), vec![(3, len)]);
    assert_eq!(r.rx_frame(3, len), f);
}

#[test]
fn rx_head_past_the_ring_is_counted_and_the_frame_goes_to_the_next_buffer() {
    let mut r = rig_on(common::memory(), DEVICE_FEATURES & !FEATURE_MRG_RXBUF);
    r.rx.publish_raw(&r.mem, 999);
    r.good_rx(3, 2048);
    let f = frame(5, 1000);
    r.peer.send(&f).unwrap();
    assert_eq!(r.dev.process_rx().unwrap(), RxPass::Idle);
    let len = (NET_HDR_LEN + f.len()) as u32;
    assert_eq!(r.rx.take_used_raw(&r.mem), vec![(3, len)]);
    assert_eq!(r.rx_frame(3, len), f);
    let m = r.m();
    assert_eq!((m.rejected_chains, m.drops.guest_driver_error), (1, 1));
    assert_eq!(m.rx_frames, 1);
}

#[test]
fn tx_looped_chain_is_rejected_not_sent_as_repeated_memory() {
    let mut r = rig();
    // 0 -> 1 -> 0 -> ... over 20 bytes of guest memory.
    let a = r.tx.slot_addr(0);
    r.tx_desc(0, a, 10, NEXT, 1);
    r.tx_desc(1, a + 10, 10, NEXT, 0);
    r.tx.publish_raw(&r.mem, 0);
    let f = frame(2, 300);
    r.good_tx(2, &f);
    r.dev.process_tx().unwrap();
    assert_eq!(r.sent(), vec![f], "the loop is not forwarded");
    assert_eq!(r.tx.take_used_raw(&r.mem), vec![(0, 0), (2, 0)]);
    assert_eq!(r.m().drops.guest_driver_error, 1);
    assert_eq!(r.m().rejected_chains, 1);
}

#[test]
fn tx_next_past_the_table_and_next_on_the_last_descriptor_are_rejected() {
    let mut r = rig();
    let a = r.tx.slot_addr(0);
    r.mem
        .write_slice(&frame(9, 500), GuestAddress(a + NET_HDR_LEN as u64))
        .unwrap();
    // NEXT set, next = 40 on a 16-entry table: virtio-queue ends the chain silently.
    r.tx_desc(0, a, 512, NEXT, 40);
    r.tx.publish_raw(&r.mem, 0);
    // NEXT set on what the driver meant as the last descriptor, next = itself.
    r.tx_desc(1, a, 512, NEXT, 1);
    r.tx.publish_raw(&r.mem, 1);
    let f = frame(3, 100);
    r.good_tx(2, &f);
    r.dev.process_tx().unwrap();
    assert_eq!(r.sent(), vec![f]);
    assert_eq!(r.tx.take_used_raw(&r.mem), vec![(0, 0), (1, 0), (2, 0)]);
    assert_eq!(r.m().drops.guest_driver_error, 2);
}

#[test]
fn tx_indirect_descriptors_are_rejected_without_the_feature() {
    let mut r = rig();
    let f = frame(4, 300);
    let mut bytes = vec![0u8; NET_HDR_LEN];
    bytes.extend_from_slice(&f);
    let data = r.tx.slot_addr(0);
    r.mem.write_slice(&bytes, GuestAddress(data)).unwrap();
    // An indirect table holding one well-formed descriptor for the whole frame.
    let table = r.tx.indirect_addr(0);
    r.mem
        .write_obj(
            Descriptor::new(data, bytes.len() as u32, 0, 0),
            GuestAddress(table),
        )
        .unwrap();
    r.tx_desc(0, table, 16, INDIRECT, 0);
    r.tx.publish_raw(&r.mem, 0);
    // Nested: an indirect table whose entry is itself indirect.
    let outer = r.tx.indirect_addr(1);
    r.mem
        .write_obj(Descriptor::new(table, 16, INDIRECT, 0), GuestAddress(outer))
        .unwrap();
    r.tx_desc(1, outer, 16, INDIRECT, 0);
    r.tx.publish_raw(&r.mem, 1);
    let g = frame(5, 80);
    r.good_tx(2, &g);
    r.dev.process_tx().unwrap();
    assert_eq!(r.sent(), vec![g], "INDIRECT_DESC was never offered");
    assert_eq!(r.tx.take_used_raw(&r.mem), vec![(0, 0), (1, 0), (2, 0)]);
    assert_eq!(r.m().drops.guest_driver_error, 2);
    assert_eq!(
        DEVICE_FEATURES & (1 << 28),
        0,
        "INDIRECT_DESC is not offered"
    );
}

#[test]
fn rx_looped_and_indirect_chains_are_returned_empty_and_skipped() {
    let mut r = rig_on(common::memory(), DEVICE_FEATURES & !FEATURE_MRG_RXBUF);
    let a = r.rx.slot_addr(0);
    r.rx_desc(0, a, 56, WRITE | NEXT, 1);
    r.rx_desc(1, a + 56, 56, WRITE | NEXT, 0);
    r.rx.publish_raw(&r.mem, 0);
    let table = r.rx.indirect_addr(2);
    r.mem
        .write_obj(
            Descriptor::new(r.rx.slot_addr(2), 2048, WRITE, 0),
            GuestAddress(table),
        )
        .unwrap();
    r.rx_desc(2, table, 16, INDIRECT, 0);
    r.rx.publish_raw(&r.mem, 2);
    r.good_rx(3, 2048);
    let f = frame(6, 100);
    r.peer.send(&f).unwrap();
    r.dev.process_rx().unwrap();
    let len = (NET_HDR_LEN + f.len()) as u32;
    assert_eq!(r.rx.take_used_raw(&r.mem), vec![(0, 0), (2, 0), (3, len)]);
    assert_eq!(r.rx_frame(3, len), f);
    let m = r.m();
    assert_eq!((m.rejected_chains, m.drops.guest_driver_error), (2, 2));
}

/// Guest memory whose second region is a memfd mapping that the file no longer fully
/// backs (the front end shrank it after the memory table was set up).
#[cfg(target_os = "linux")]
fn memory_with_a_hole() -> (GuestMemoryMmap, u64) {
    const REGION: usize = 2 << 20;
    // SAFETY: a valid NUL-terminated name; the fd is owned by the File below.
    let fd = unsafe { libc::memfd_create(c"vnet-hostile".as_ptr(), 0) };
    assert!(fd >= 0);
    // SAFETY: fd is a fresh memfd nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(REGION as u64).unwrap();
    let base = common::MEM_END;
    let mem = GuestMemoryMmap::from_ranges_with_files([
        (GuestAddress(0), common::MEM_SIZE, None),
        (
            GuestAddress(base),
            REGION,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        ),
    ])
    .unwrap();
    file.set_len(REGION as u64 / 2).unwrap();
    (mem, base + REGION as u64 * 3 / 4)
}

#[cfg(target_os = "linux")]
#[test]
fn tx_buffer_past_the_end_of_its_backing_is_rejected_and_the_next_goes_out() {
    let (mem, hole) = memory_with_a_hole();
    let mut r = rig_on(mem, DEVICE_FEATURES);
    let hdr = r.tx.slot_addr(0);
    r.tx_desc(0, hdr, NET_HDR_LEN as u32, NEXT, 1);
    r.tx_desc(1, hole, 1000, 0, 0);
    r.tx.publish_raw(&r.mem, 0);
    let f = frame(7, 400);
    r.good_tx(2, &f);
    assert_eq!(r.dev.process_tx().unwrap(), TxPass::Idle);
    assert_eq!(r.sent(), vec![f]);
    assert_eq!(r.tx.take_used_raw(&r.mem), vec![(0, 0), (2, 0)]);
    let m = r.m();
    assert_eq!((m.rejected_chains, m.drops.guest_driver_error), (1, 1));
    assert_eq!(m.tx_frames, 1);
}

/// Guest memory in two regions that meet inside the TX descriptor table: the device
/// cannot see the table as one slice, reads each descriptor on its own, and still follows
/// chains across the seam and rejects a looped one.
#[test]
fn a_descriptor_table_split_across_two_regions_is_still_walked() {
    let tx_table = common::DriverQueue::new(1, QSIZE).queue_desc_addr();
    // Descriptors 0-7 in the first region, 8-15 in the second.
    let mut r = rig_on(
        common::memory_split_at(&[tx_table + 8 * 16]),
        DEVICE_FEATURES,
    );
    // Header in descriptor 6, frame in 9: one chain across the seam.
    let f = frame(1, 300);
    let hdr = r.tx.slot_addr(6);
    r.mem
        .write_slice(&[0u8; NET_HDR_LEN], GuestAddress(hdr))
        .unwrap();
    let body = r.tx.slot_addr(9);
    r.mem.write_slice(&f, GuestAddress(body)).unwrap();
    r.tx_desc(6, hdr, NET_HDR_LEN as u32, NEXT, 9);
    r.tx_desc(9, body, f.len() as u32, 0, 0);
    r.tx.publish_raw(&r.mem, 6);
    // A loop across the seam: 7 -> 10 -> 7.
    r.tx_desc(7, r.tx.slot_addr(7), 100, NEXT, 10);
    r.tx_desc(10, r.tx.slot_addr(10), 100, NEXT, 7);
    r.tx.publish_raw(&r.mem, 7);
    // And a one-descriptor chain wholly in the second region.
    let g = frame(2, 200);
    r.good_tx(12, &g);
    assert_eq!(r.dev.process_tx().unwrap(), TxPass::Idle);
    assert_eq!(r.sent(), vec![f, g]);
    assert_eq!(r.tx.take_used_raw(&r.mem), vec![(6, 0), (7, 0), (12, 0)]);
    let m = r.m();
    assert_eq!((m.rejected_chains, m.drops.guest_driver_error), (1, 1));
    assert_eq!(m.tx_frames, 2);
}

/// Guest memory in regions that meet inside both queues' avail and used rings (a used
/// element straddles a seam): the device cannot see a ring as one slice, takes chains and
/// uses them through vm-memory's general path, and every frame still goes through once,
/// in order, each way.
#[test]
fn rings_split_across_memory_regions_still_carry_every_frame() {
    let (rxq, txq) = (
        common::DriverQueue::new(0, QSIZE),
        common::DriverQueue::new(1, QSIZE),
    );
    // Avail entry 6 begins a region; used element 7 (bytes 60..68) straddles one.
    let mut seams = vec![];
    for q in [&rxq, &txq] {
        seams.push(q.avail_ring_addr() + 0x10);
        seams.push(q.used_ring_addr() + 0x40);
    }
    seams.sort();
    let mut r = rig_on(
        common::memory_split_at(&seams),
        DEVICE_FEATURES & !FEATURE_MRG_RXBUF,
    );
    let (tx_frames, rx_frames): (Vec<_>, Vec<_>) = (0..10)
        .map(|i| (frame(i, 300 + i as usize), frame(100 + i, 500)))
        .unzip();
    for (i, f) in tx_frames.iter().enumerate() {
        r.good_tx(i as u16, f);
    }
    assert_eq!(r.dev.process_tx().unwrap(), TxPass::Idle);
    assert_eq!(r.sent(), tx_frames);
    let used: Vec<u32> = r.tx.take_used_raw(&r.mem).iter().map(|u| u.0).collect();
    assert_eq!(used, (0..10).collect::<Vec<u32>>());
    for i in 0..10 {
        r.good_rx(i, 2048);
    }
    for f in &rx_frames {
        r.peer.send(f).unwrap();
    }
    assert_eq!(r.dev.process_rx().unwrap(), RxPass::Idle);
    let len = (NET_HDR_LEN + 500) as u32;
    let used = r.rx.take_used_raw(&r.mem);
    assert_eq!(used, (0..10).map(|i| (i, len)).collect::<Vec<_>>());
    for (i, f) in rx_frames.iter().enumerate() {
        assert_eq!(&r.rx_frame(i as u16, len), f, "RX buffer {i}");
    }
    let m = r.m();
    assert_eq!((m.tx_frames, m.rx_frames, m.rejected_chains), (10, 10, 0));
}
