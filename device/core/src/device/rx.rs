//! The RX direction: frames from the proxy into guest buffers.
//!
//! A frame read from the proxy waits in `frame` until the guest has buffers for it; until
//! then the socket is not read (the proxy's queue is the buffer), and the next RX kick
//! resumes.

use vm_memory::GuestMemoryMmap;

use super::virtq::Virtq;
use super::{DeviceError, RxPass, BATCH};
use crate::backend::{Backend, ReadStatus};
use crate::events::DeviceEvents;
use crate::frame::MAX_FRAME;
use crate::net::{Rejected, RxBuffers, RxOutcome};
use crate::probes::DropReason;

pub(crate) struct RxVirtio {
    pub(crate) vq: Virtq,
    /// VIRTIO_NET_F_MRG_RXBUF: a frame may span several guest buffers.
    mergeable: bool,
    frame: Box<[u8]>,
    /// Length of the frame in `frame` that waits for guest buffers.
    pending: Option<usize>,
    buffers: RxBuffers,
    /// The guest had no buffers for the pending frame; an RX kick resumes.
    waiting: bool,
    /// Reused list of chains the last delivery rejected.
    rejected: Vec<Rejected>,
}

impl RxVirtio {
    pub(crate) fn new(vq: Virtq, mergeable: bool) -> RxVirtio {
        RxVirtio {
            vq,
            mergeable,
            frame: vec![0u8; MAX_FRAME].into_boxed_slice(),
            pending: None,
            buffers: RxBuffers::default(),
            waiting: false,
            rejected: Vec::new(),
        }
    }

    pub(crate) fn waiting(&self) -> bool {
        self.waiting
    }

    /// Reads frames from the proxy and writes them into guest RX buffers.
    pub(crate) fn process(
        &mut self,
        mem: &GuestMemoryMmap,
        backend: &mut dyn Backend,
        events: &DeviceEvents,
    ) -> Result<RxPass, DeviceError> {
        let mut done = 0;
        let mut used = false;
        let result = loop {
            let len = match self.pending {
                Some(len) => len,
                None => {
                    if done >= BATCH {
                        break RxPass::More;
                    }
                    match backend.read_frame(&mut self.frame)? {
                        ReadStatus::WouldBlock => break RxPass::Idle,
                        ReadStatus::Oversize(len) => {
                            events.frame_dropped(len, DropReason::RxOversize);
                            continue;
                        }
                        ReadStatus::Frame(0) => {
                            events.frame_dropped(0, DropReason::RxEmpty);
                            continue;
                        }
                        ReadStatus::Frame(len) => {
                            events.frame_received(len);
                            self.pending = Some(len);
                            len
                        }
                    }
                }
            };
            let outcome = self
                .buffers
                .deliver(
                    &mut self.vq.queue,
                    mem,
                    &self.frame[..len],
                    self.mergeable,
                    &mut self.rejected,
                )
                .map_err(self.vq.err());
            used |= !self.rejected.is_empty();
            for r in self.rejected.drain(..) {
                events.chain_rejected(self.vq.index, r);
            }
            match outcome? {
                RxOutcome::Delivered { .. } => {
                    self.pending = None;
                    self.waiting = false;
                    used = true;
                    done += 1;
                }
                RxOutcome::NoRoom => {
                    self.pending = None;
                    events.frame_dropped(len, DropReason::RxNoRoom);
                }
                RxOutcome::NoBuffers => {
                    // Ask for a kick when buffers arrive; if some raced in, use them now.
                    if self.vq.enable_notification(mem, events)? {
                        continue;
                    }
                    if !self.waiting {
                        self.waiting = true;
                        events.rx_no_buffers(len);
                    }
                    break RxPass::NoBuffers;
                }
            }
        };
        if used {
            self.vq.signal(mem, events)?;
        }
        Ok(result)
    }

    /// The proxy went away: the frame waiting for buffers will never be delivered.
    pub(crate) fn peer_gone(&mut self, events: &DeviceEvents) {
        if let Some(len) = self.pending.take() {
            events.frame_dropped(len, DropReason::PeerGone);
        }
    }
}
