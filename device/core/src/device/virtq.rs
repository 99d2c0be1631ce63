//! One virtqueue as the device sees it: the ring and the interrupt that announces its
//! used entries.

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
}

impl Virtq {
    pub(crate) fn new(mut queue: Queue, call: Notifier, index: u16, event_idx: bool) -> Virtq {
        queue.set_event_idx(event_idx);
        Virtq { queue, call, index }
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
    pub(crate) fn enable_notification(
        &mut self,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, DeviceError> {
        self.queue.enable_notification(mem).map_err(self.err())
    }
}
