//! The RX direction: frames from the proxy into guest buffers.
//!
//! Frames are read in batches, no more than the guest has posted buffers for; a frame read
//! from the proxy waits in its batch buffer until the guest has buffers for it; until then
//! the socket is not read (the proxy's queue is the buffer), and the next RX kick resumes.
//!
//! With GUEST_TSO4/6 negotiated, consecutive frames of a batch that are segments of one
//! TCP stream are merged while they are copied into the guest: one GSO frame, one
//! header (`crate::gro`). A merge never reorders (a frame of anything else ends it) and
//! never waits for buffers a smaller merge would not need: it shrinks to what the guest
//! has posted, down to the single frame, which then waits as any frame does.

use std::sync::atomic::Ordering;

use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::virtq::Virtq;
use super::{DeviceError, RxPass, BATCH};
use crate::backend::{lent_frame, Backend, DirectRead, ReadStatus, MAX_BATCH_FRAMES};
use crate::events::DeviceEvents;
use crate::frame::{IovBuf, MAX_FRAME};
use crate::gro::{self, Allow};
use crate::net::{rx_gso_header, Rejected, Rings, RxBuffers, RxOutcome, HDR_F_DATA_VALID};
use crate::probes::DropReason;

/// Most receive calls [`RxVirtio::peer_gone`] makes to count the frames a departed proxy
/// left unread: a socket buffer's worth many times over, and a bound should the "gone"
/// peer (one that only shut down its reading side) keep writing.
const MAX_READS_TO_COUNT: u64 = 512;

/// Most proxy frames one GSO frame carries: a batch's worth.
const MAX_MERGE: usize = MAX_BATCH_FRAMES;

/// Frame `i` of the batch, if it is one (a frame copied into `bufs` or held by the
/// backend); `None` for every other status.
fn batch_frame<'a>(
    bufs: &'a [Box<[u8]>],
    got: &[ReadStatus],
    backend: &'a dyn Backend,
    i: usize,
) -> Option<&'a [u8]> {
    match got.get(i)? {
        ReadStatus::Frame(len @ 1..) => bufs.get(i)?.get(..*len),
        ReadStatus::Held(_) => backend.held_frame(i),
        _ => None,
    }
}

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
    /// Which TCP segments may be merged into GSO frames (GUEST_TSO4/6, with GUEST_CSUM).
    gro: Allow,
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
    ///
    /// `gro`: the guest takes GSO frames of those IP versions (see [`RxVirtio::merge`]).
    pub(crate) fn new(vq: Virtq, mergeable: bool, data_valid: bool, gro: Allow) -> RxVirtio {
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
            gro,
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
        // The rings' places in memory, looked up once for the pass.
        let rings = Rings::new(&self.vq.queue, mem);
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
            // `count`: frames of the batch the outcome is for (more than one: merged, into
            // a frame of `len` bytes).
            let (len, count, outcome) = match self.got[self.next] {
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
                    if let Some((count, merged, outcome)) = self.merge(&rings, &*backend)? {
                        (merged, count, Ok(outcome))
                    } else {
                        let frame = match status {
                            ReadStatus::Held(_) => lent_frame(&*backend, self.next)?,
                            _ => &self.bufs[self.next][..len],
                        };
                        (
                            len,
                            1,
                            self.buffers
                                .deliver(
                                    &mut self.vq.queue,
                                    &rings,
                                    frame,
                                    self.mergeable,
                                    &mut self.rejected,
                                )
                                .map_err(self.vq.err()),
                        )
                    }
                }
                ReadStatus::Direct(len) => match self.direct(&rings, backend, len)? {
                    Some(outcome) => (len, 1, Ok(outcome)),
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
                    if count > 1 {
                        let parts = self.got[self.next..self.next + count].iter();
                        let read: usize = parts
                            .map(|s| match *s {
                                ReadStatus::Frame(n) | ReadStatus::Held(n) => n,
                                _ => 0,
                            })
                            .sum();
                        events.rx_coalesced(count, read.saturating_sub(len));
                    }
                    self.next += count;
                    self.waiting = false;
                    used = true;
                    done += count;
                }
                // A merged frame only meets this when guest memory went away under its
                // buffers: each of its frames is dropped, as a lone one would be.
                RxOutcome::NoRoom if count > 1 => {
                    for status in &self.got[self.next..self.next + count] {
                        if let ReadStatus::Frame(n) | ReadStatus::Held(n) = *status {
                            events.frame_dropped(n, DropReason::RxNoRoom);
                        }
                    }
                    self.next += count;
                    done += count;
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

    /// Merges the segments of one TCP stream at the front of the batch (`gro::plan`) into
    /// one GSO frame and delivers it: `Some((frames merged, its length, outcome))`, the
    /// outcome `Delivered`, or `NoRoom` if guest memory went away under the buffers.
    /// `None`: fewer than two frames merge, so the first goes as it is. A merged frame
    /// is as large as the buffers the guest has posted take (all of them, or the first
    /// without MRG_RXBUF): when it needs more, fewer segments go now rather than all of
    /// them waiting for a kick.
    fn merge(
        &mut self,
        rings: &Rings<'_, GuestMemoryMmap>,
        backend: &dyn Backend,
    ) -> Result<Option<(usize, usize, RxOutcome)>, DeviceError> {
        if !self.gro.any() {
            return Ok(None);
        }
        let mut cap = MAX_FRAME;
        loop {
            let (bufs, got, at) = (&self.bufs, &self.got, self.next);
            let frames = (at..got.len()).map(|i| batch_frame(bufs, got, backend, i));
            let Some(m) = gro::plan(frames, self.gro, cap, MAX_MERGE) else {
                return Ok(None);
            };
            if m.count < 2 {
                return Ok(None);
            }
            let q = &mut self.vq.queue;
            let take = match self
                .buffers
                .reserve(q, rings, m.len, self.mergeable, &mut self.rejected)
                .map_err(self.vq.err())?
            {
                Ok(take) => take,
                Err(_) => {
                    // Strictly smaller each time: ends at one frame, at worst.
                    cap = self.buffers.room(self.mergeable).min(m.len - 1);
                    continue;
                }
            };
            let Some(first) = batch_frame(bufs, got, backend, at) else {
                return Ok(None);
            };
            let mut head = [0u8; gro::MAX_HDR];
            let (hl, gso) = gro::merged_header(first, &m, &mut head);
            let vhdr = rx_gso_header(take as u16, &gso);
            let mut parts: [&[u8]; MAX_MERGE + 2] = [&[]; MAX_MERGE + 2];
            parts[0] = &vhdr;
            parts[1] = &head[..hl];
            for (k, part) in parts[2..2 + m.count].iter_mut().enumerate() {
                // Every planned frame is there, its headers `hl` bytes long.
                *part = batch_frame(bufs, got, backend, at + k)
                    .and_then(|f| f.get(hl..))
                    .unwrap_or_default();
            }
            let q = &mut self.vq.queue;
            let outcome = self
                .buffers
                .write_parts(
                    q,
                    rings,
                    &mut parts[..2 + m.count],
                    take,
                    &mut self.rejected,
                )
                .map_err(self.vq.err())?;
            return Ok(Some((m.count, m.len, outcome)));
        }
    }

    /// A frame announced by [`ReadStatus::Direct`]: reserves guest buffers for it and has
    /// the backend read its payload straight into them (no copy in user space). `None`:
    /// part of it is still on its way (its buffers stay reserved); otherwise where it
    /// went (`NoBuffers`: the guest has none yet; nothing of it was read).
    fn direct(
        &mut self,
        rings: &Rings<'_, GuestMemoryMmap>,
        backend: &mut dyn Backend,
        len: usize,
    ) -> Result<Option<RxOutcome>, DeviceError> {
        let q = &mut self.vq.queue;
        let take = match self
            .buffers
            .reserve(q, rings, len, self.mergeable, &mut self.rejected)
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
        if let Err(why) = self
            .buffers
            .payload_iovecs(rings.mem(), take, len, &mut self.iov)
        {
            backend.skip_direct();
            let q = &mut self.vq.queue;
            let outcome = self
                .buffers
                .abandon(q, rings, take, why, &mut self.rejected)
                .map_err(self.vq.err())?;
            return Ok(Some(outcome));
        }
        // SAFETY: the iovecs cover guest RX buffers the device has reserved (checked
        // device-writable and inside guest memory), mapped while the pass borrows the memory.
        match unsafe { backend.read_direct(&self.iov) }? {
            DirectRead::WouldBlock => Ok(None),
            DirectRead::Done => {
                let q = &mut self.vq.queue;
                let outcome = self
                    .buffers
                    .complete(q, rings, take, len, &mut self.rejected)
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
