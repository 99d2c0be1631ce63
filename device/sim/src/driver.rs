//! The guest side of a virtio 1.x split virtqueue, as a Linux driver runs it.
//!
//! The guest owns the descriptor table and the available ring, the device owns the used
//! ring. With VIRTIO_F_EVENT_IDX the driver publishes `used_event` (the used index after
//! which it wants an interrupt) at the end of the available ring, and reads `avail_event`
//! (the available index after which the device wants a kick) at the end of the used ring.
//! The same addresses build the device's `virtio_queue::Queue`, exactly what a vhost-user
//! front end hands over.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap,
};

use vnet_device::notify::Notifier;

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;
const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("guest memory access at {addr:#x}: {source}")]
    Memory {
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("queue size {0} is not a power of two between 1 and 32768")]
    BadSize(u16),
    #[error(
        "TX frame offset {0}: must be from 12 (the virtio header goes before the frame) to 4096"
    )]
    BadFrameOffset(u64),
    #[error("device returned descriptor {id} which is not the head of an outstanding chain")]
    BadUsedId { id: u32 },
    #[error("building the device queue: {0}")]
    Queue(#[from] virtio_queue::Error),
    #[error("queue notifier: {0}")]
    Notify(#[from] std::io::Error),
}

fn mem_err(addr: GuestAddress) -> impl FnOnce(vm_memory::GuestMemoryError) -> DriverError {
    move |source| DriverError::Memory {
        addr: addr.raw_value(),
        source,
    }
}

/// Where one queue's three parts live in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct RingLayout {
    pub size: u16,
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
}

impl RingLayout {
    /// Lays a queue out from `base` (page aligned, parts aligned as the spec wants);
    /// returns the layout and the first free address after it.
    pub fn at(base: GuestAddress, size: u16) -> Result<(RingLayout, GuestAddress), DriverError> {
        if size == 0 || size > 32768 || !size.is_power_of_two() {
            return Err(DriverError::BadSize(size));
        }
        let n = u64::from(size);
        let desc = base;
        let avail = GuestAddress(align(desc.0 + 16 * n, 2));
        // flags, idx, ring[size], used_event
        let used = GuestAddress(align(avail.0 + 6 + 2 * n, 4096));
        let end = GuestAddress(align(used.0 + 6 + 8 * n, 4096));
        Ok((
            RingLayout {
                size,
                desc,
                avail,
                used,
            },
            end,
        ))
    }

    /// Bytes the layout needs for a queue of `size` entries.
    pub fn footprint(size: u16) -> u64 {
        let n = u64::from(size);
        align(align(16 * n, 2) + 6 + 2 * n, 4096) + align(6 + 8 * n, 4096)
    }

    /// The device's view of the same ring: what a VMM would configure from the guest's
    /// MMIO/PCI writes, or a vhost-user front end from VHOST_USER_SET_VRING_ADDR.
    pub fn device_queue(&self, event_idx: bool) -> Result<Queue, DriverError> {
        let mut q = Queue::new(self.size)?;
        q.set_size(self.size);
        let lo = |a: GuestAddress| Some(a.0 as u32);
        let hi = |a: GuestAddress| Some((a.0 >> 32) as u32);
        q.set_desc_table_address(lo(self.desc), hi(self.desc));
        q.set_avail_ring_address(lo(self.avail), hi(self.avail));
        q.set_used_ring_address(lo(self.used), hi(self.used));
        q.set_event_idx(event_idx);
        q.set_ready(true);
        Ok(q)
    }

    fn used_event_addr(&self) -> GuestAddress {
        self.avail.unchecked_add(4 + 2 * u64::from(self.size))
    }

    fn avail_event_addr(&self) -> GuestAddress {
        self.used.unchecked_add(4 + 8 * u64::from(self.size))
    }
}

pub fn align(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// One buffer of a chain: guest address, length, and whether the device writes it.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    pub addr: GuestAddress,
    pub len: u32,
    pub device_writes: bool,
}

/// A chain the device gave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    pub head: u16,
    /// Bytes the device wrote into the chain (0 for TX).
    pub len: u32,
    /// What the caller attached when posting it.
    pub token: u32,
}

/// The driver's state for one queue.
pub struct GuestQueue {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    layout: RingLayout,
    event_idx: bool,
    kick: Notifier,
    call: Notifier,
    free: Vec<u16>,
    /// Per head: the descriptors of its chain and the caller's token.
    chains: Vec<Option<(Vec<u16>, u32)>>,
    next_avail: Wrapping<u16>,
    /// The avail index at the last kick decision (`old` in vring_need_event).
    kicked_avail: Wrapping<u16>,
    last_used: Wrapping<u16>,
    /// Kicks sent and kicks avoided thanks to avail_event or NO_NOTIFY.
    pub kicks: u64,
    pub kicks_suppressed: u64,
}

impl GuestQueue {
    /// Zeroes the rings and takes ownership of the notifiers. `kick` is what the guest
    /// signals (the device's queue eventfd), `call` what the device signals (the interrupt).
    pub fn new(
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        layout: RingLayout,
        event_idx: bool,
        kick: Notifier,
        call: Notifier,
    ) -> Result<GuestQueue, DriverError> {
        {
            let m = mem.memory();
            let zero = vec![0u8; (layout.avail.0 - layout.desc.0) as usize];
            m.write_slice(&zero, layout.desc)
                .map_err(mem_err(layout.desc))?;
            let n = u64::from(layout.size);
            m.write_slice(&vec![0u8; (6 + 2 * n) as usize], layout.avail)
                .map_err(mem_err(layout.avail))?;
            m.write_slice(&vec![0u8; (6 + 8 * n) as usize], layout.used)
                .map_err(mem_err(layout.used))?;
        }
        Ok(GuestQueue {
            mem,
            layout,
            event_idx,
            kick,
            call,
            // Popping from the end hands out 0, 1, 2... first, as a fresh Linux ring does.
            free: (0..layout.size).rev().collect(),
            chains: vec![None; usize::from(layout.size)],
            next_avail: Wrapping(0),
            kicked_avail: Wrapping(0),
            last_used: Wrapping(0),
            kicks: 0,
            kicks_suppressed: 0,
        })
    }

    pub fn size(&self) -> u16 {
        self.layout.size
    }

    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Chains posted and not yet returned.
    pub fn in_flight(&self) -> u16 {
        (self.next_avail - self.last_used).0
    }

    /// Writes a chain into the descriptor table and the next available slot (not yet
    /// visible to the device: see [`GuestQueue::publish`]). None when descriptors run out.
    pub fn add(&mut self, bufs: &[Buf], token: u32) -> Result<Option<u16>, DriverError> {
        if bufs.is_empty() || bufs.len() > self.free.len() {
            return Ok(None);
        }
        let ids: Vec<u16> = (0..bufs.len()).map(|_| self.free.pop().unwrap()).collect();
        let m = self.mem.memory();
        for (i, b) in bufs.iter().enumerate() {
            let mut flags = 0u16;
            if b.device_writes {
                flags |= VIRTQ_DESC_F_WRITE;
            }
            let next = if i + 1 < ids.len() {
                flags |= VIRTQ_DESC_F_NEXT;
                ids[i + 1]
            } else {
                0
            };
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&b.addr.0.to_le_bytes());
            d[8..12].copy_from_slice(&b.len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            let at = self.layout.desc.unchecked_add(16 * u64::from(ids[i]));
            m.write_slice(&d, at).map_err(mem_err(at))?;
        }
        let head = ids[0];
        let slot = self
            .layout
            .avail
            .unchecked_add(4 + 2 * u64::from(self.next_avail.0 % self.layout.size));
        m.write_obj(head.to_le(), slot).map_err(mem_err(slot))?;
        self.chains[usize::from(head)] = Some((ids, token));
        self.next_avail += Wrapping(1);
        Ok(Some(head))
    }

    /// Makes every added chain visible: the ring entries must be in memory before the
    /// index that covers them, hence the release store.
    pub fn publish(&mut self) -> Result<(), DriverError> {
        let at = self.layout.avail.unchecked_add(2);
        self.mem
            .memory()
            .store(self.next_avail.0.to_le(), at, Ordering::Release)
            .map_err(mem_err(at))
    }

    /// Kicks the device if it asked for it: with EVENT_IDX when the new avail index passed
    /// `avail_event` since the last decision (vring_need_event), else unless the device set
    /// VIRTQ_USED_F_NO_NOTIFY. Returns whether it kicked.
    pub fn kick_if_needed(&mut self) -> Result<bool, DriverError> {
        // The avail index store must be visible before we read the device's wish, or both
        // sides can decide the other will act (the classic lost-kick race).
        fence(Ordering::SeqCst);
        let m = self.mem.memory();
        let new = self.next_avail;
        let old = self.kicked_avail;
        if new == old {
            return Ok(false);
        }
        self.kicked_avail = new;
        let needed = if self.event_idx {
            let at = self.layout.avail_event_addr();
            let event: u16 = u16::from_le(m.load(at, Ordering::Acquire).map_err(mem_err(at))?);
            need_event(event, new.0, old.0)
        } else {
            let at = self.layout.used;
            let flags: u16 = u16::from_le(m.load(at, Ordering::Acquire).map_err(mem_err(at))?);
            flags & VIRTQ_USED_F_NO_NOTIFY == 0
        };
        if needed {
            self.kick.notify()?;
            self.kicks += 1;
        } else {
            self.kicks_suppressed += 1;
        }
        Ok(needed)
    }

    /// Takes the next used entry, returning its descriptors to the free list.
    pub fn pop_used(&mut self) -> Result<Option<Used>, DriverError> {
        let m = self.mem.memory();
        let at = self.layout.used.unchecked_add(2);
        let used_idx = Wrapping(u16::from_le(
            m.load(at, Ordering::Acquire).map_err(mem_err(at))?,
        ));
        if used_idx == self.last_used {
            return Ok(None);
        }
        let elem = self
            .layout
            .used
            .unchecked_add(4 + 8 * u64::from(self.last_used.0 % self.layout.size));
        let mut e = [0u8; 8];
        m.read_slice(&mut e, elem).map_err(mem_err(elem))?;
        let id = u32::from_le_bytes(e[0..4].try_into().unwrap());
        let len = u32::from_le_bytes(e[4..8].try_into().unwrap());
        let Some((ids, token)) = self.chains.get_mut(id as usize).and_then(|c| c.take()) else {
            return Err(DriverError::BadUsedId { id });
        };
        self.free.extend(ids.iter().rev());
        self.last_used += Wrapping(1);
        Ok(Some(Used {
            head: id as u16,
            len,
            token,
        }))
    }

    /// Asks for an interrupt once `delay` more chains are used (0 = the next one), then
    /// re-checks for entries that slipped in meanwhile: true means "don't sleep, reap".
    /// `delay > 0` is Linux's virtqueue_enable_cb_delayed for TX completions.
    pub fn enable_interrupts(&mut self, delay: u16) -> Result<bool, DriverError> {
        let m = self.mem.memory();
        if self.event_idx {
            let at = self.layout.used_event_addr();
            let event = self.last_used + Wrapping(delay);
            m.store(event.0.to_le(), at, Ordering::Release)
                .map_err(mem_err(at))?;
        } else {
            let at = self.layout.avail;
            m.store(0u16, at, Ordering::Release).map_err(mem_err(at))?;
        }
        fence(Ordering::SeqCst);
        let at = self.layout.used.unchecked_add(2);
        let used_idx: u16 = u16::from_le(m.load(at, Ordering::Acquire).map_err(mem_err(at))?);
        Ok(Wrapping(used_idx) != self.last_used)
    }

    /// Without EVENT_IDX, tells the device not to interrupt while we poll; with it,
    /// simply leaving used_event behind has that effect.
    pub fn disable_interrupts(&mut self) -> Result<(), DriverError> {
        if !self.event_idx {
            let at = self.layout.avail;
            self.mem
                .memory()
                .store(VIRTQ_AVAIL_F_NO_INTERRUPT.to_le(), at, Ordering::Release)
                .map_err(mem_err(at))?;
        }
        Ok(())
    }

    /// Waits for the device's interrupt; true when one came.
    pub fn wait(&self, timeout: Duration) -> Result<bool, DriverError> {
        let got = self.call.wait_timeout(timeout)?;
        if got {
            self.call.drain()?;
        }
        Ok(got)
    }

    pub fn call_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.call.as_fd()
    }

    /// Consumes a pending interrupt without blocking.
    pub fn drain_call(&self) -> Result<u64, DriverError> {
        Ok(self.call.drain()?)
    }
}

/// vring_need_event from the spec: has `new` passed `event` since `old`?
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_matches_the_spec_formula() {
        // Device wants a kick after avail idx 5; we moved 3 -> 7: yes.
        assert!(need_event(5, 7, 3));
        // Moved 3 -> 5: event 5 not passed (needs new > event).
        assert!(!need_event(5, 5, 3));
        assert!(need_event(4, 5, 3));
        // Wrap-around.
        assert!(need_event(65535, 1, 65534));
        assert!(!need_event(10, 1, 65534));
    }

    fn setup(
        size: u16,
    ) -> (
        GuestQueue,
        Queue,
        GuestMemoryAtomic<GuestMemoryMmap>,
        Notifier,
    ) {
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap(),
        );
        let (layout, _) = RingLayout::at(GuestAddress(0x1000), size).unwrap();
        let kick = Notifier::new().unwrap();
        let device_kick = kick.try_clone().unwrap();
        let call = Notifier::new().unwrap();
        let gq = GuestQueue::new(mem.clone(), layout, true, kick, call).unwrap();
        let dq = layout.device_queue(true).unwrap();
        (gq, dq, mem, device_kick)
    }

    /// The device side is virtio-queue's own `Queue`: what the guest posts must read back
    /// descriptor for descriptor, and used entries must come back with their tokens.
    #[test]
    fn chains_round_trip_through_virtio_queue() {
        let (mut gq, mut dq, mem, _) = setup(8);
        let m = mem.memory();
        assert!(dq.is_valid(&*m));
        let bufs = [
            Buf {
                addr: GuestAddress(0x8000),
                len: 12,
                device_writes: false,
            },
            Buf {
                addr: GuestAddress(0x800c),
                len: 100,
                device_writes: false,
            },
            Buf {
                addr: GuestAddress(0x9000),
                len: 4096,
                device_writes: true,
            },
        ];
        let head = gq.add(&bufs, 77).unwrap().unwrap();
        gq.publish().unwrap();
        let chain = dq.pop_descriptor_chain(&*m).expect("device sees the chain");
        assert_eq!(chain.head_index(), head);
        let got: Vec<(u64, u32, bool)> = chain
            .map(|d| (d.addr().0, d.len(), d.is_write_only()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0x8000, 12, false),
                (0x800c, 100, false),
                (0x9000, 4096, true)
            ]
        );
        assert_eq!(gq.free_descriptors(), 5);
        assert_eq!(gq.pop_used().unwrap(), None);
        dq.add_used(&*m, head, 1234).unwrap();
        assert_eq!(
            gq.pop_used().unwrap(),
            Some(Used {
                head,
                len: 1234,
                token: 77
            })
        );
        assert_eq!(gq.free_descriptors(), 8);
        assert_eq!(gq.in_flight(), 0);
        // Out of descriptors: add says so instead of overwriting.
        let many = vec![bufs[0]; 9];
        assert_eq!(gq.add(&many, 1).unwrap(), None);
    }

    /// EVENT_IDX both ways: the guest kicks only when the device's avail_event asks for
    /// it, and the device interrupts only past the guest's used_event.
    #[test]
    fn event_idx_suppresses_kicks_and_interrupts() {
        let (mut gq, mut dq, mem, device_kick) = setup(8);
        let m = mem.memory();
        let b = [Buf {
            addr: GuestAddress(0x8000),
            len: 64,
            device_writes: false,
        }];
        // avail_event starts at 0: the first publish (0 -> 1) must kick.
        gq.add(&b, 0).unwrap();
        gq.publish().unwrap();
        assert!(gq.kick_if_needed().unwrap());
        assert_eq!(device_kick.drain().unwrap(), 1);
        // The device has not re-armed (avail_event still 0): more chains, no kick.
        gq.add(&b, 1).unwrap();
        gq.publish().unwrap();
        assert!(!gq.kick_if_needed().unwrap());
        // The device consumes both and re-arms at its next_avail (2): the next one kicks.
        while dq.pop_descriptor_chain(&*m).is_some() {}
        assert!(!dq.enable_notification(&*m).unwrap());
        gq.add(&b, 2).unwrap();
        gq.publish().unwrap();
        assert!(gq.kick_if_needed().unwrap());
        // Interrupts: used_event = 0 means "after the first used entry".
        assert!(!gq.enable_interrupts(0).unwrap());
        dq.add_used(&*m, 0, 0).unwrap();
        assert!(dq.needs_notification(&*m).unwrap());
        // Guest reaps one and asks to hear only after two more (delayed callback).
        gq.pop_used().unwrap().unwrap();
        assert!(!gq.enable_interrupts(1).unwrap());
        dq.add_used(&*m, 1, 0).unwrap();
        assert!(
            !dq.needs_notification(&*m).unwrap(),
            "used_event not passed yet"
        );
        dq.add_used(&*m, 2, 0).unwrap();
        assert!(dq.needs_notification(&*m).unwrap());
    }

    #[test]
    fn layout_is_aligned_and_fits_footprint() {
        let (l, end) = RingLayout::at(GuestAddress(0x10000), 256).unwrap();
        assert_eq!(l.desc.0 % 16, 0);
        assert_eq!(l.avail.0 % 2, 0);
        assert_eq!(l.used.0 % 4, 0);
        assert!(l.avail.0 >= l.desc.0 + 16 * 256);
        assert!(l.used.0 >= l.avail.0 + 6 + 2 * 256);
        assert!(end.0 >= l.used.0 + 6 + 8 * 256);
        assert_eq!(end.0 - 0x10000, RingLayout::footprint(256));
        assert!(RingLayout::at(GuestAddress(0), 100).is_err());
    }
}
