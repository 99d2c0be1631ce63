//! One virtqueue as the device sees it: the ring and the interrupt that announces its
//! used entries.

use std::sync::atomic::{fence, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::DeviceError;
use crate::events::DeviceEvents;
use crate::net::used_event;
use crate::notify::Notifier;

pub(crate) struct Virtq {
    pub(crate) queue: Queue,
    call: Notifier,
    /// The queue's number (RX 0, TX 1): names it in errors, probes and logs.
    pub(crate) index: u16,
    /// The driver's avail index is more than a ring ahead of ours (it went backwards or
    /// jumped): reported once, until the index makes sense again or the ring is set up anew.
    avail_corrupt: bool,
    /// The used index when the last interrupt was decided on: the entries since are the
    /// ones EVENT_IDX asks about (`net::add_used` does not count them in the queue).
    signalled: u16,
}

impl Virtq {
    pub(crate) fn new(mut queue: Queue, call: Notifier, index: u16, event_idx: bool) -> Virtq {
        queue.set_event_idx(event_idx);
        Virtq {
            signalled: queue.next_used(),
            queue,
            call,
            index,
            avail_corrupt: false,
        }
    }

    /// Turns a ring access error into the device error naming this queue.
    pub(crate) fn err(&self) -> impl Fn(virtio_queue::Error) -> DeviceError {
        let queue = self.index;
        move |source| DeviceError::Queue { queue, source }
    }

    /// Interrupts the guest if the queue's EVENT_IDX state (or its absence) asks for it:
    /// virtio-queue's `needs_notification` (Linux's `vring_need_event`), over the used
    /// entries added since the last decision.
    pub(crate) fn signal(
        &mut self,
        mem: &GuestMemoryMmap,
        events: &DeviceEvents,
    ) -> Result<(), DeviceError> {
        if self.needs_interrupt(mem)? {
            self.call
                .notify()
                .map_err(|source| DeviceError::Interrupt { source })?;
            events.guest_irq(self.index);
        }
        Ok(())
    }

    /// Whether the used entries added since the last call call for an interrupt.
    fn needs_interrupt(&mut self, mem: &GuestMemoryMmap) -> Result<bool, DeviceError> {
        let used = self.queue.next_used();
        let old = std::mem::replace(&mut self.signalled, used);
        // The used entries written before the driver's used_event is read.
        fence(Ordering::SeqCst);
        if !self.queue.event_idx_enabled() {
            return Ok(true);
        }
        let event = used_event(&self.queue, mem).map_err(self.err())?;
        Ok(used.wrapping_sub(event).wrapping_sub(1) < used.wrapping_sub(old))
    }

    /// Asks for a kick on the guest's next buffer; true when one raced in already.
    ///
    /// virtio-queue answers "more work" whenever the driver's avail index differs from
    /// ours, while its iterator refuses an index more than a ring ahead: a driver that
    /// writes such an index (or moves it backwards) would have the device loop between the
    /// two forever. That is a guest driver error: counted, logged once, and the queue waits
    /// for the next kick with a sane index (or a new ring from a reset).
    pub(crate) fn enable_notification(
        &mut self,
        mem: &GuestMemoryMmap,
        events: &DeviceEvents,
    ) -> Result<bool, DeviceError> {
        if !self.queue.enable_notification(mem).map_err(self.err())? {
            self.avail_corrupt = false;
            return Ok(false);
        }
        let avail = self
            .queue
            .avail_idx(mem, Ordering::Acquire)
            .map_err(self.err())?
            .0;
        let next = self.queue.next_avail();
        let ahead = avail.wrapping_sub(next);
        if ahead <= self.queue.size() {
            self.avail_corrupt = false;
            return Ok(true);
        }
        if !self.avail_corrupt {
            self.avail_corrupt = true;
            events.avail_index_corrupt(self.index, avail, next, self.queue.size());
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{add_used, pop_avail, Rings};
    use proptest::prelude::*;
    use vm_memory::{Bytes, GuestAddress};

    const SIZE: u16 = 16;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    #[derive(Debug, Clone)]
    enum Op {
        /// The driver makes this many chains available, with these heads (an index more
        /// than a ring ahead included).
        Avail(Vec<u16>),
        Pop,
        Used {
            head: u16,
            len: u32,
        },
        UsedEvent(u16),
        Signal,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            prop::collection::vec(0..SIZE + 2, 0..20).prop_map(Op::Avail),
            Just(Op::Pop),
            (0..SIZE + 2, any::<u32>()).prop_map(|(head, len)| Op::Used { head, len }),
            any::<u16>().prop_map(Op::UsedEvent),
            Just(Op::Signal),
        ]
    }

    fn ring(mem: &GuestMemoryMmap) -> Queue {
        let mut q = Queue::new(SIZE).unwrap();
        q.set_size(SIZE);
        q.try_set_desc_table_address(GuestAddress(DESC)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
        q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        q.set_ready(true);
        assert!(q.is_valid(mem));
        q
    }

    proptest! {
        /// `net::pop_avail`, `net::add_used` (or one `net::Rings` view kept over all the
        /// operations, as a pass keeps it) and `needs_interrupt` against virtio-queue's
        /// `pop_descriptor_chain`, `add_used` and `needs_notification`, each on its own
        /// copy of guest memory: the same heads, the same used ring bytes, the same
        /// interrupt decisions, with EVENT_IDX and without, with the rings in one memory
        /// region and split across two (vm-memory's general path).
        #[test]
        fn ring_access_matches_virtio_queue(
            event_idx: bool,
            one_view: bool,
            split: bool,
            ops in prop::collection::vec(op(), 1..200),
        ) {
            // Seams at avail entry 6 and inside used element 7.
            let seams: &[u64] = if split { &[AVAIL + 0x10, USED + 0x40] } else { &[] };
            let mem = |_| {
                let mut ranges = vec![];
                let mut start = 0;
                for &end in seams.iter().chain(&[0x10000]) {
                    ranges.push((GuestAddress(start), (end - start) as usize));
                    start = end;
                }
                GuestMemoryMmap::from_ranges(&ranges).unwrap()
            };
            let (ma, mb): (GuestMemoryMmap, GuestMemoryMmap) = (mem(0), mem(1));
            let mut ours = Virtq::new(ring(&ma), Notifier::new().unwrap(), 0, event_idx);
            let mut theirs = ring(&mb);
            theirs.set_event_idx(event_idx);
            let view = Rings::new(&ours.queue, &ma);
            let mut avail = 0u16;
            for op in ops {
                match op {
                    Op::Avail(heads) => {
                        for (i, h) in heads.iter().enumerate() {
                            let slot = u64::from(avail.wrapping_add(i as u16) % SIZE);
                            for m in [&ma, &mb] {
                                m.write_obj(h.to_le(), GuestAddress(AVAIL + 4 + 2 * slot)).unwrap();
                            }
                        }
                        avail = avail.wrapping_add(heads.len() as u16);
                        for m in [&ma, &mb] {
                            m.write_obj(avail.to_le(), GuestAddress(AVAIL + 2)).unwrap();
                        }
                    }
                    Op::Pop => {
                        let a = if one_view {
                            view.pop_avail(&mut ours.queue)
                        } else {
                            pop_avail(&mut ours.queue, &ma)
                        };
                        let b = theirs.pop_descriptor_chain(&mb).map(|c| c.head_index());
                        prop_assert_eq!(a, b);
                        prop_assert_eq!(ours.queue.next_avail(), theirs.next_avail());
                    }
                    Op::Used { head, len } => {
                        let a = if one_view {
                            view.add_used(&mut ours.queue, head, len)
                        } else {
                            add_used(&mut ours.queue, &ma, head, len)
                        }
                        .is_ok();
                        let b = theirs.add_used(&mb, head, len).is_ok();
                        prop_assert_eq!(a, b);
                        let mut ua = vec![0u8; 4 + 8 * usize::from(SIZE)];
                        let mut ub = ua.clone();
                        ma.read_slice(&mut ua, GuestAddress(USED)).unwrap();
                        mb.read_slice(&mut ub, GuestAddress(USED)).unwrap();
                        prop_assert_eq!(ua, ub);
                    }
                    Op::UsedEvent(v) => {
                        let at = GuestAddress(AVAIL + 4 + 2 * u64::from(SIZE));
                        for m in [&ma, &mb] {
                            m.write_obj(v.to_le(), at).unwrap();
                        }
                    }
                    Op::Signal => {
                        let a = ours.needs_interrupt(&ma).unwrap();
                        let b = theirs.needs_notification(&mb).unwrap();
                        prop_assert_eq!(a, b);
                    }
                }
            }
        }
    }
}
