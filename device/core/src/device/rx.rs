//! The RX direction: frames from the proxy into guest buffers.
//!
//! Frames are read in batches, no more than the guest has posted buffers for; a frame read
//! from the proxy waits in its batch buffer until the guest has buffers for it; until then
//! the socket is not read (the proxy's queue is the buffer), and the next RX kick resumes.

use std::sync::atomic::Ordering;

use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::virtq::Virtq;
use super::{DeviceError, RxPass, BATCH};
use crate::backend::{lent_frame, Backend, DirectRead, ReadStatus, MAX_BATCH_FRAMES};
use crate::events::DeviceEvents;
use crate::frame::{IovBuf, MAX_FRAME};
use crate::net::{Rejected, RxBuffers, RxOutcome, HDR_F_DATA_VALID};
use crate::probes::DropReason;

/// Most receive calls [`RxVirtio::peer_gone`] makes to count the frames a departed proxy
/// left unread: a socket buffer's worth many times over, and a bound should the "gone"
/// peer (one that only shut down its reading side) keep writing.
const MAX_READS_TO_COUNT: u64 = 512;

pub(crate) struct RxVirtio {
    pub(crate) vq: Virtq,
    /// VIRTIO_NET_F_MRG_RXBUF: a frame may span several guest buffers.
    mergeable: bool,
    /// Frame buffers for one batched read, `MAX_FRAME` bytes each (grown on demand).
    bufs: Vec<Box<[u8]>>,
    /// What the last read returned, status i for `bufs[i]`; `got[next..]` is still to
    /// deliver (a frame there waits for guest buffers).
    got: Vec<ReadStatus>,
    next: usize,
    buffers: RxBuffers,
    /// The guest had no buffers for the waiting frame; an RX kick resumes.
    waiting: bool,
    /// Reused list of chains the last delivery rejected.
    rejected: Vec<Rejected>,
    /// The guest memory a direct frame is read into (reused).
    iov: IovBuf,
}

impl RxVirtio {
    /// `data_valid`: VIRTIO_NET_F_GUEST_CSUM was negotiated, so every frame's header says
    /// VIRTIO_NET_HDR_F_DATA_VALID and the guest does not verify its TCP/UDP checksum.
    /// That is true of every frame delivered here: the proxy (passt, gvproxy, ...) built
    /// it in its own memory, from data the host's network stack already checked or
    /// produced itself, and handed it over a Unix socket, which copies bytes between
    /// processes and cannot corrupt them; there is no wire in between whose errors a
    /// checksum would catch. (A host kernel's tap device says the same of the frames it
    /// hands a VMM with a virtio_net_hdr.) A frame whose checksum the proxy got wrong
    /// would be accepted, as it would from a NIC that validated it.
    pub(crate) fn new(vq: Virtq, mergeable: bool, data_valid: bool) -> RxVirtio {
        let mut buffers = RxBuffers::default();
        buffers.set_header_flags(if data_valid { HDR_F_DATA_VALID } else { 0 });
        RxVirtio {
            vq,
            mergeable,
            bufs: Vec::new(),
            got: Vec::new(),
            next: 0,
            buffers,
            waiting: false,
            rejected: Vec::new(),
            iov: IovBuf::default(),
        }
    }

    pub(crate) fn waiting(&self) -> bool {
        self.waiting
    }

    /// Chains the guest has posted that the device has not filled: each takes at most
    /// one frame, so no more frames than this are read at once (at least one, which then
    /// waits for buffers as before).
    fn posted(&self, mem: &GuestMemoryMmap) -> Result<usize, DeviceError> {
        let avail = self
            .vq
            .queue
            .avail_idx(mem, Ordering::Acquire)
            .map_err(self.vq.err())?;
        let new = avail.0.wrapping_sub(self.vq.queue.next_avail());
        Ok(usize::from(new) + self.buffers.reserved())
    }

    /// Reads frames from the proxy, as many per backend call as the guest has buffers
    /// for (Linux datagrams: one `recvmmsg`), and writes them into guest RX buffers in
    /// the order read.
    pub(crate) fn process(
        &mut self,
        mem: &GuestMemoryMmap,
        backend: &mut dyn Backend,
        events: &DeviceEvents,
    ) -> Result<RxPass, DeviceError> {
        let mut done = 0;
        let mut used = false;
        // A `WouldBlock` after a short batch says the socket was empty when this pass read
        // it; a later pass cannot trust it (the readable event for what came since may
        // already be spent), so it reads again.
        let mut read_in_this_pass = false;
        let result = loop {
            if self.next == self.got.len() {
                if done >= BATCH {
                    break RxPass::More;
                }
                let want = self
                    .posted(mem)?
                    .clamp(1, MAX_BATCH_FRAMES)
                    .min(BATCH - done);
                while self.bufs.len() < want {
                    self.bufs.push(vec![0u8; MAX_FRAME].into_boxed_slice());
                }
                self.next = 0;
                backend.read_frames(&mut self.bufs[..want], &mut self.got)?;
                read_in_this_pass = true;
                // The backend read its share without completing a frame (see
                // `Backend::read_frames`): more may be waiting unannounced, so the
                // worker comes back after a look at its other events.
                if self.got.is_empty() {
                    break RxPass::More;
                }
                // Each frame is reported once, when read (it may then wait for buffers).
                for status in &self.got {
                    match *status {
                        ReadStatus::WouldBlock => {}
                        ReadStatus::Oversize(len) => {
                            events.frame_dropped(len, DropReason::RxOversize);
                        }
                        ReadStatus::Frame(0) => events.frame_dropped(0, DropReason::RxEmpty),
                        ReadStatus::Frame(len)
                        | ReadStatus::Direct(len)
                        | ReadStatus::Held(len) => events.frame_received(len),
                    }
                }
            }
            let direct = matches!(self.got[self.next], ReadStatus::Direct(_));
            let (len, outcome) = match self.got[self.next] {
                ReadStatus::WouldBlock => {
                    self.next = self.got.len();
                    if read_in_this_pass {
                        break RxPass::Idle;
                    }
                    continue;
                }
                // A dropped frame counts toward the pass's batch like a delivered one: a
                // proxy flooding frames that are all dropped must not keep one pass (and
                // the worker, deaf to stops and kicks) going for as long as it sends.
                ReadStatus::Frame(0) | ReadStatus::Oversize(_) => {
                    self.next += 1;
                    done += 1;
                    continue;
                }
                status @ (ReadStatus::Frame(len) | ReadStatus::Held(len)) => {
                    let frame = match status {
                        ReadStatus::Held(_) => lent_frame(&*backend, self.next)?,
                        _ => &self.bufs[self.next][..len],
                    };
                    (
                        len,
                        self.buffers
                            .deliver(
                                &mut self.vq.queue,
                                mem,
                                frame,
                                self.mergeable,
                                &mut self.rejected,
                            )
                            .map_err(self.vq.err()),
                    )
                }
                ReadStatus::Direct(len) => match self.direct(mem, backend, len)? {
                    Some(outcome) => (len, Ok(outcome)),
                    // The rest of the frame has not arrived: the next readable event
                    // resumes it, into the same buffers.
                    None => break RxPass::Idle,
                },
            };
            used |= !self.rejected.is_empty();
            for r in self.rejected.drain(..) {
                events.chain_rejected(self.vq.index, r);
            }
            match outcome? {
                RxOutcome::Delivered { .. } => {
                    if direct {
                        events.rx_direct();
                    }
                    self.next += 1;
                    self.waiting = false;
                    used = true;
                    done += 1;
                }
                RxOutcome::NoRoom => {
                    self.next += 1;
                    done += 1;
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

    /// A frame announced by [`ReadStatus::Direct`]: reserves guest buffers for it and has
    /// the backend read its payload straight into them (no copy in user space). `None`:
    /// part of it is still on its way (its buffers stay reserved); otherwise where it
    /// went (`NoBuffers`: the guest has none yet; nothing of it was read).
    fn direct(
        &mut self,
        mem: &GuestMemoryMmap,
        backend: &mut dyn Backend,
        len: usize,
    ) -> Result<Option<RxOutcome>, DeviceError> {
        let q = &mut self.vq.queue;
        let take = match self
            .buffers
            .reserve(q, mem, len, self.mergeable, &mut self.rejected)
            .map_err(self.vq.err())?
        {
            Ok(take) => take,
            Err(RxOutcome::NoRoom) => {
                backend.skip_direct();
                return Ok(Some(RxOutcome::NoRoom));
            }
            Err(outcome) => return Ok(Some(outcome)),
        };
        self.iov.clear();
        if let Err(why) = self.buffers.payload_iovecs(mem, take, len, &mut self.iov) {
            backend.skip_direct();
            let q = &mut self.vq.queue;
            let outcome = self
                .buffers
                .abandon(q, mem, take, why, &mut self.rejected)
                .map_err(self.vq.err())?;
            return Ok(Some(outcome));
        }
        // SAFETY: the iovecs cover guest RX buffers the device has reserved (checked
        // device-writable and inside guest memory), mapped while `mem` is borrowed.
        match unsafe { backend.read_direct(&self.iov) }? {
            DirectRead::WouldBlock => Ok(None),
            DirectRead::Done => {
                let q = &mut self.vq.queue;
                let outcome = self
                    .buffers
                    .complete(q, mem, take, len, &mut self.rejected)
                    .map_err(self.vq.err())?;
                Ok(Some(outcome))
            }
        }
    }

    /// The proxy went away: frames read and not delivered never will be, nor will the
    /// whole frames it sent that are still unread (the guest had no buffers for them, so
    /// RX had stopped reading): those are read now, only to be counted, so every frame
    /// the proxy sent is either delivered or in `drops`. The peer is gone, so what is
    /// left is finite; the reads are capped anyway.
    pub(crate) fn peer_gone(&mut self, backend: &mut dyn Backend, events: &DeviceEvents) {
        for status in self.got.drain(self.next..) {
            if let ReadStatus::Frame(len @ 1..) | ReadStatus::Direct(len) | ReadStatus::Held(len) =
                status
            {
                events.frame_dropped(len, DropReason::PeerGone);
            }
        }
        self.next = 0;
        // A frame announced for reading straight into the guest is dropped above; the
        // backend skips its payload so the reads below start at the next frame.
        backend.skip_direct();
        while self.bufs.len() < MAX_BATCH_FRAMES {
            self.bufs.push(vec![0u8; MAX_FRAME].into_boxed_slice());
        }
        let start = backend.syscalls().recvs;
        // Calls are capped too: a backend may not count its reads.
        for _ in 0..MAX_READS_TO_COUNT {
            if backend.syscalls().recvs - start >= MAX_READS_TO_COUNT {
                break;
            }
            if backend.read_frames(&mut self.bufs, &mut self.got).is_err() {
                break;
            }
            let mut more = true;
            for status in self.got.drain(..) {
                match status {
                    ReadStatus::WouldBlock => more = false,
                    ReadStatus::Frame(0) => events.frame_dropped(0, DropReason::RxEmpty),
                    ReadStatus::Oversize(len) => events.frame_dropped(len, DropReason::RxOversize),
                    ReadStatus::Frame(len) | ReadStatus::Held(len) => {
                        events.frame_dropped(len, DropReason::PeerGone)
                    }
                    ReadStatus::Direct(len) => {
                        backend.skip_direct();
                        events.frame_dropped(len, DropReason::PeerGone);
                    }
                }
            }
            if !more {
                break;
            }
        }
    }
}
