//! One virtqueue as the device sees it: the ring and the interrupt that announces its
//! used entries.

use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::DeviceError;
use crate::events::DeviceEvents;
use crate::notify::Notifier;

pub(crate) struct Virtq {
    pub(crate) queue: Queue,
    call: Notifier,
    /// The queue's number (RX 0, TX 1): names it in errors, probes and logs.
    pub(crate) index: u16,
    /// The driver's avail index is more than a ring ahead of ours (it went backwards or
    /// jumped): reported once, until the index makes sense again or the ring is set up anew.
    avail_corrupt: bool,
}

impl Virtq {
    pub(crate) fn new(mut queue: Queue, call: Notifier, index: u16, event_idx: bool) -> Virtq {
        queue.set_event_idx(event_idx);
        Virtq {
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

    /// Interrupts the guest if the queue's EVENT_IDX state (or its absence) asks for it.
    pub(crate) fn signal(
        &mut self,
        mem: &GuestMemoryMmap,
        events: &DeviceEvents,
    ) -> Result<(), DeviceError> {
        if self.queue.needs_notification(mem).map_err(self.err())? {
            self.call
                .notify()
                .map_err(|source| DeviceError::Interrupt { source })?;
            events.guest_irq(self.index);
        }
        Ok(())
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
