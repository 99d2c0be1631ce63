//! The TX direction: guest chains out to the proxy in batches, one deferred frame at a time.
//!
//! A chain's frame is sent straight from guest memory (gathered by the kernel; a chain with
//! too many pieces is copied into `copy` first and sent alone). Ready chains go to the
//! backend together (Linux datagrams: one `sendmmsg`), at most `MAX_BATCH_FRAMES` frames
//! and `MAX_BATCH_BYTES` bytes per call. A send that does not complete keeps the
//! frame deferred: the chain is neither re-queued nor used, so the guest sees it
//! outstanding (its buffers stay the frame's until the chain is used), and nothing else is
//! sent before it (frames stay in order). A write event, a TX kick or the one-shot timer
//! retries it. The chains popped behind it stay popped and parsed (`TxVirtio::popped`) and
//! follow it in the next batch: a datagram batch stopped by a full peer queue would
//! otherwise give most of itself back to the ring and parse it all again.
//!
//! Except under `small-first` (`look_ahead`, datagram backends only): while a frame is
//! deferred, `send_ahead` walks the chains behind it and sends those of *other* flows
//! (`crate::flow`) that the socket takes; their used entries go back out of ring order,
//! which virtio allows. A frame that cannot go (same flow as a frame still waiting before
//! it, no flow known, or refused) waits in `behind`, in ring order, and those go one by one
//! once the deferred frame has left, before anything new is popped. Nothing of this runs
//! while no frame is deferred.

use std::collections::VecDeque;

use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::virtq::Virtq;
use super::{DeviceError, TxPass, BATCH};
use crate::backend::{Backend, WriteStatus, MAX_BATCH_BYTES, MAX_BATCH_FRAMES};
use crate::episode::Episode;
use crate::events::{DeviceEvents, SentFrame};
use crate::flow::{classify, FlowKey, HEADER_PREFIX};
use crate::frame::TxList;
use crate::net::{
    add_used, pop_avail, ChainError, ChainWalk, Rejected, Rings, TxChain, TxOffloads,
};
use crate::probes::DropReason;

/// A chain popped from the ring and parsed, in the batch being sent.
#[derive(Default)]
struct Popped {
    head: u16,
    len: usize,
    /// The frame is in `TxVirtio::copy` (it had more pieces than one send gathers).
    copied: bool,
    /// Part of it is already in a stream socket: it can no longer be dropped without
    /// breaking the stream's framing, so no retry policy gives up on it.
    started: bool,
    chain: TxChain,
    /// Frames of the chain already sent: a GSO chain's segments go out over several
    /// sends, and a deferred one resumes at the first segment not sent.
    sent: usize,
    /// Frames of the chain in the batch's list now.
    listed: usize,
}

impl Popped {
    /// Length of the chain's next frame to send (its segment `sent`).
    fn next_len(&self) -> usize {
        self.chain.frame_len(self.sent)
    }

    /// Reports the frames of the chain not sent yet as dropped for `reason`, but for the
    /// first `skip` of them (reported already).
    fn drop_rest(&self, events: &DeviceEvents, reason: DropReason, skip: usize) {
        for i in self.sent + skip..self.chain.frames() {
            events.frame_dropped(self.chain.frame_len(i), reason);
        }
    }
}

/// Most chains `small-first` holds behind a deferred frame (fewer on a smaller ring): the
/// look-ahead's memory and work per pass stay bounded.
const LOOK_AHEAD: usize = 64;

/// A chain popped behind the deferred frame that has not gone out (`small-first`).
struct Behind {
    popped: Popped,
    flow: Option<FlowKey>,
}

pub(crate) struct TxVirtio {
    pub(crate) vq: Virtq,
    /// The batch: chains popped and parsed, in ring order (storage reused across passes).
    batch: Vec<Popped>,
    /// `batch[..popped]` are popped from the ring and not used yet, in ring order: what a
    /// batch did not send waits there for the next one. Under `small-first` (whose
    /// look-ahead pops the chains behind the deferred frame itself) only the deferred
    /// frame stays; the rest go back to the ring.
    popped: usize,
    /// `batch[0]` is a frame popped earlier and not sent yet: the deferred frame.
    held: bool,
    copy: Vec<u8>,
    /// The batch's frames as the backend sends them (storage reused across batches).
    list: TxList,
    episode: Episode,
    /// Failed sends after which the deferred frame is dropped (`RetryPolicy::Bounded`).
    max_failed_sends: Option<u32>,
    /// `RetryPolicy::SmallFirst` on a backend whose sends are all-or-nothing.
    look_ahead: bool,
    /// Chains popped behind the deferred frame, in ring order (empty unless `look_ahead`
    /// and a frame is deferred, or the frames before them are still going out).
    behind: VecDeque<Behind>,
    /// A frame's first bytes, read for its flow.
    head_buf: [u8; HEADER_PREFIX],
    /// The offloads negotiated: with CSUM headers are read and NEEDS_CSUM checksums
    /// completed, with HOST_TSO4/6 GSO chains cut into segments (`TxChain::parse`).
    offload: TxOffloads,
}

impl TxVirtio {
    pub(crate) fn new(vq: Virtq, offload: TxOffloads) -> TxVirtio {
        TxVirtio {
            vq,
            batch: Vec::new(),
            popped: 0,
            held: false,
            copy: Vec::new(),
            list: TxList::new(),
            episode: Episode::default(),
            max_failed_sends: None,
            look_ahead: false,
            behind: VecDeque::new(),
            head_buf: [0; HEADER_PREFIX],
            offload,
        }
    }

    pub(crate) fn set_look_ahead(&mut self, on: bool) {
        self.look_ahead = on;
    }

    pub(crate) fn looks_ahead(&self) -> bool {
        self.look_ahead
    }

    pub(crate) fn set_max_failed_sends(&mut self, max: Option<u32>) {
        self.max_failed_sends = max;
    }

    /// Length of the deferred frame, if one waits (of a GSO chain, the segment it
    /// resumes at).
    pub(crate) fn deferred_len(&self) -> Option<usize> {
        self.held.then(|| self.batch[0].next_len())
    }

    /// Failed sends of the deferred frame so far.
    pub(crate) fn failures(&self) -> u32 {
        self.episode.failures()
    }

    pub(crate) fn deferred(&self) -> bool {
        self.held
    }

    /// Gives the last `k` chains popped back to the ring: they were not sent and come
    /// first in a later batch (popped and parsed again), so frames stay in ring order and
    /// the guest sees the ring as it was.
    fn unpop(&mut self, k: usize) {
        if k > 0 {
            let q = &mut self.vq.queue;
            q.set_next_avail(q.next_avail().wrapping_sub(k as u16));
        }
    }

    /// Takes the first `k` popped chains out of the batch (used, or rejected).
    fn retire(&mut self, k: usize) {
        // Those left move to the front (the chains used go behind them as spare storage).
        if k < self.popped {
            self.batch[..self.popped].rotate_left(k);
        }
        self.popped -= k;
    }

    /// Gives the popped chains but the first `keep` back to the ring.
    fn give_back(&mut self, keep: usize) {
        if self.popped > keep {
            self.unpop(self.popped - keep);
            self.popped = keep;
        }
    }

    /// Under `small-first`, [`TxVirtio::give_back`]; otherwise the chains stay for the
    /// next batch (see [`TxVirtio::popped`]).
    fn give_back_unless_kept(&mut self, keep: usize) {
        if self.look_ahead {
            self.give_back(keep);
        }
    }

    /// EVENT_IDX: asks for a kick on the guest's next chain after the deferred frame, as
    /// if the chains popped behind it were still in the ring. The guest published those
    /// already, so it kicks exactly as it would had they been given back: while they wait,
    /// not at all. The ring's state itself is left alone.
    fn rearm_behind_deferred(
        &mut self,
        mem: &GuestMemoryMmap,
        events: &DeviceEvents,
    ) -> Result<(), DeviceError> {
        let behind = (self.popped - 1) as u16;
        let q = &mut self.vq.queue;
        q.set_next_avail(q.next_avail().wrapping_sub(behind));
        let armed = self.vq.enable_notification(mem, events);
        let q = &mut self.vq.queue;
        q.set_next_avail(q.next_avail().wrapping_add(behind));
        armed.map(|_| ())
    }

    /// Sends the deferred frame, then every chain the guest made available, in batches
    /// (one backend call each), until the proxy pushes back, the ring is empty or the pass
    /// has sent [`BATCH`] frames.
    ///
    /// A batch that stops at frame k sent frames 0..k, which are used and reported one by
    /// one; frame k becomes the deferred frame (an episode begins at its first refusal,
    /// and only its own refused sends count as the episode's retries); the chains after it
    /// go back to the ring.
    pub(crate) fn process(
        &mut self,
        mem: &GuestMemoryMmap,
        backend: &mut dyn Backend,
        events: &DeviceEvents,
    ) -> Result<TxPass, DeviceError> {
        let mut done = 0;
        let mut used = false;
        // The rings' places in memory, looked up once for the pass.
        let rings = Rings::new(&self.vq.queue, mem);
        let result = loop {
            if done >= BATCH {
                break TxPass::More;
            }
            self.next_from_behind();
            // No more frames than the backend sends in one call: the rest would be
            // popped and parsed only to wait for the next call.
            let frame_cap = backend.batch_limit().clamp(1, MAX_BATCH_FRAMES);
            // Frames waiting behind the deferred one go before anything new, one at a time.
            let limit = if self.behind.is_empty() { frame_cap } else { 1 };
            // The batch: the chains popped earlier (the deferred frame first), then new
            // chains, while the limits allow. `planned` counts the frames still to send
            // (a GSO chain has several).
            let (mut n, mut bytes, mut planned) = (0, 0, 0);
            while n < self.popped {
                let p = &self.batch[n];
                if n > 0
                    && (planned >= limit || done + n >= BATCH || bytes + p.len > MAX_BATCH_BYTES)
                {
                    break;
                }
                bytes += p.len;
                planned += p.chain.frames() - p.sent;
                n += 1;
            }
            // New chains only behind all those popped, so the ring's order holds.
            while n == self.popped && planned < limit && done + n < BATCH {
                let Some(head) = rings.pop_avail(&mut self.vq.queue) else {
                    // Re-arm kicks (EVENT_IDX: avail_event = next_avail); a chain that
                    // raced in before that shows up here.
                    if n == 0 && self.vq.enable_notification(mem, events)? {
                        continue;
                    }
                    break;
                };
                if self.batch.len() == n {
                    self.batch.push(Popped::default());
                }
                let slot = &mut self.batch[n];
                match slot
                    .chain
                    .parse(mem, ChainWalk::new(mem, &self.vq.queue, head), self.offload)
                {
                    Ok(_) => {
                        slot.head = head;
                        slot.len = slot.chain.len();
                        slot.copied = false;
                        slot.started = false;
                        slot.sent = 0;
                        slot.listed = 0;
                        self.popped += 1;
                        if n > 0 && bytes + slot.len > MAX_BATCH_BYTES {
                            // Too big for this call: it opens the next.
                            break;
                        }
                        bytes += slot.len;
                        planned += slot.chain.frames();
                        n += 1;
                    }
                    // Rejected in ring order: after the frames before it are sent.
                    Err(_) if n > 0 => {
                        self.unpop(1);
                        break;
                    }
                    Err(error) => {
                        self.reject(mem, head, error, events)?;
                        used = true;
                    }
                }
            }
            if n == 0 {
                break TxPass::Idle;
            }
            // The frames as the backend sends them, straight from guest memory. A frame
            // that cannot be gathered ends the batch before it (it comes first in the
            // next); only a first frame is copied (and then goes alone) or rejected. A
            // GSO chain adds its segments from the first not sent, as many as the
            // backend's call takes; one that does not fit whole ends the list.
            self.list.clear();
            let mut listed = 0;
            let mut first_error = None;
            let mut copy_first = self.batch[0].copied;
            if !copy_first {
                for (i, p) in self.batch[..n].iter_mut().enumerate() {
                    let room = frame_cap - self.list.len();
                    let list_bytes = self.list.bytes();
                    if room == 0 || (i > 0 && list_bytes + p.next_len() > MAX_BATCH_BYTES) {
                        break;
                    }
                    let got = if p.chain.is_gso() {
                        p.chain.gather_segments(
                            mem,
                            &mut self.list,
                            p.sent,
                            room,
                            MAX_BATCH_BYTES.saturating_sub(list_bytes),
                            None,
                        )
                    } else {
                        p.chain.gather_into(mem, &mut self.list).map(usize::from)
                    };
                    match got {
                        Ok(k) if k > 0 => {
                            p.listed = k;
                            listed += 1;
                            if p.sent + k < p.chain.frames() {
                                break;
                            }
                        }
                        Ok(_) if i == 0 => {
                            copy_first = true;
                            break;
                        }
                        Err(error) if i == 0 => {
                            first_error = Some(error);
                            break;
                        }
                        _ => break,
                    }
                }
            }
            if copy_first && !self.batch[0].copied {
                match self.batch[0].chain.copy_to(mem, &mut self.copy) {
                    Ok(()) => {
                        self.batch[0].copied = true;
                        events.tx_copied();
                    }
                    Err(error) => first_error = Some(error),
                }
            }
            if let Some(error) = first_error {
                // The memory map changed under the frame: it no longer lies inside guest
                // memory. Dropped, and its episode (if any) with it.
                self.held = false;
                self.episode.abandon(events);
                // (A GSO chain's segments already sent stay sent; the chain is one
                // rejected chain, as any other.)
                self.reject(mem, self.batch[0].head, error, events)?;
                self.retire(1);
                self.give_back_unless_kept(0);
                used = true;
                continue;
            }
            if copy_first {
                let p = &mut self.batch[0];
                p.listed = if p.chain.is_gso() {
                    // From the device's copy: two pieces per segment, never too many.
                    p.chain
                        .gather_segments(
                            mem,
                            &mut self.list,
                            p.sent,
                            frame_cap,
                            MAX_BATCH_BYTES,
                            Some(&self.copy),
                        )
                        // Only guest memory can fail, and none is read here.
                        .unwrap_or(0)
                } else {
                    self.list.push_slice(&self.copy);
                    1
                };
                listed = 1;
            }
            // The list points into `mem`, borrowed for this whole pass.
            let out = backend.write_frames(self.list.frames());
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    // Nothing of this call went out: the first frame stays deferred (a
                    // dying proxy's drop report counts it), the rest go back.
                    self.held = true;
                    self.give_back(1);
                    return Err(e.into());
                }
            };
            // The frames sent, chain by chain: a chain all of whose frames are out is
            // used; the first that is not stops the walk.
            let mut left = out.sent;
            let mut finished = 0;
            for i in 0..listed {
                let p = &mut self.batch[i];
                let k = p.listed.min(left);
                left -= k;
                if k > 0 {
                    if i == 0 {
                        // Only the first chain can have been deferred: its frame (segment)
                        // that was refused went out.
                        self.episode.on_success(events);
                    }
                    p.started = false;
                    for f in p.sent..p.sent + k {
                        events.frame_sent(sent_frame(&p.chain, f));
                    }
                    p.sent += k;
                    done += k;
                }
                if p.sent < p.chain.frames() {
                    break;
                }
                rings
                    .add_used(&mut self.vq.queue, p.head, 0)
                    .map_err(self.vq.err())?;
                used = true;
                if p.chain.is_gso() {
                    events.tx_gso_chain();
                }
                finished += 1;
            }
            self.retire(finished);
            if finished == listed {
                self.held = false;
                self.give_back_unless_kept(0);
                continue;
            }
            // Chain `finished` did not go out whole: it is the deferred chain now, to
            // resume at its first frame not sent.
            self.held = true;
            self.give_back_unless_kept(1);
            let stopped = match out.stopped {
                Some(status) => status,
                // Not tried: it goes first in the next batch.
                None if out.sent > 0 => continue,
                // A backend that neither sent nor refused: treat it as a full socket
                // rather than spin.
                None => WriteStatus::Blocked {
                    errno: libc::EAGAIN,
                    partial: false,
                },
            };
            match stopped {
                WriteStatus::Sent => continue,
                WriteStatus::Unreadable => {
                    // The guest's buffers are not all backed by memory: nothing (or, on a
                    // stream, zero padding that keeps the framing) went out.
                    self.held = false;
                    self.episode.abandon(events);
                    self.reject(mem, self.batch[0].head, ChainError::Unreadable, events)?;
                    self.retire(1);
                    used = true;
                }
                WriteStatus::Blocked { errno, partial } => {
                    if partial {
                        events.partial_write();
                        self.batch[0].started = true;
                    }
                    let (head, len) = (self.batch[0].head, self.batch[0].next_len());
                    self.episode.on_failure(events, len, errno);
                    if !self.batch[0].started
                        && self
                            .max_failed_sends
                            .is_some_and(|max| self.episode.failures() >= max)
                    {
                        // The policy gives up: the chain goes back used, as a sent
                        // frame's does, and the ring moves on.
                        self.held = false;
                        self.episode.give_up(events, len);
                        // A GSO chain's later segments go with it.
                        self.batch[0].drop_rest(events, DropReason::RetryExhausted, 1);
                        rings
                            .add_used(&mut self.vq.queue, head, 0)
                            .map_err(self.vq.err())?;
                        self.retire(1);
                        used = true;
                        // Counts toward the batch, so a policy that drops at once
                        // cannot keep the loop from RX.
                        done += 1;
                    } else {
                        // EVENT_IDX: ask for a kick on the guest's next chain, so a
                        // kick can retry the frame.
                        if self.look_ahead {
                            used |= self.send_ahead(mem, backend, events)?;
                            // A chain that raced in before the kick was asked for.
                            if self.vq.enable_notification(mem, events)? {
                                used |= self.send_ahead(mem, backend, events)?;
                            }
                        } else {
                            self.rearm_behind_deferred(mem, events)?;
                        }
                        break TxPass::Blocked;
                    }
                }
            }
        };
        if used {
            self.vq.signal(mem, events)?;
        }
        Ok(result)
    }

    /// Returns a malformed chain to the guest unsent (the caller signals the used ring).
    fn reject(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        error: ChainError,
        events: &DeviceEvents,
    ) -> Result<(), DeviceError> {
        if error.returnable() {
            add_used(&mut self.vq.queue, mem, head, 0).map_err(self.vq.err())?;
        }
        events.chain_rejected(self.vq.index, Rejected { head, error });
        Ok(())
    }

    /// The proxy went away: the deferred frame and those behind it will never be sent.
    /// Chains popped behind it and never tried go back to the ring, as the guest had
    /// them.
    pub(crate) fn peer_gone(&mut self, events: &DeviceEvents) {
        self.give_back(usize::from(self.held));
        if std::mem::take(&mut self.held) {
            self.batch[0].drop_rest(events, DropReason::PeerGone, 0);
        }
        self.popped = 0;
        for b in self.behind.drain(..) {
            b.popped.drop_rest(events, DropReason::PeerGone, 0);
        }
    }

    /// With no frame deferred, the first frame waiting behind (`small-first`) becomes the
    /// frame to send first: the ring order resumes where the look-ahead left it.
    fn next_from_behind(&mut self) {
        if self.held {
            return;
        }
        if let Some(b) = self.behind.pop_front() {
            // Under `small-first` nothing stays popped but a deferred frame.
            debug_assert_eq!(self.popped, 0);
            if self.batch.is_empty() {
                self.batch.push(Popped::default());
            }
            self.batch[0] = b.popped;
            self.popped = 1;
            self.held = true;
        }
    }

    /// The flow of a parsed chain's frame (`None`: unknown, or its headers unreadable).
    fn flow_of(&mut self, mem: &GuestMemoryMmap, chain: &TxChain) -> Option<FlowKey> {
        if chain.is_gso() {
            // A GSO chain goes out over several sends, in ring order: it neither passes
            // nor is passed.
            return None;
        }
        let n = chain.read_prefix(mem, &mut self.head_buf).ok()?;
        classify(&self.head_buf[..n], chain.len())
    }

    /// Whether a frame of `flow` may go ahead of the deferred frame (flow `deferred`) and
    /// of the first `upto` frames behind it: all of them have a known flow other than its
    /// own. A frame of unknown flow neither passes nor is passed.
    fn may_pass(&self, flow: Option<FlowKey>, deferred: FlowKey, upto: usize) -> bool {
        let Some(flow) = flow else {
            return false;
        };
        flow != deferred
            && self
                .behind
                .iter()
                .take(upto)
                .all(|b| b.flow.is_some_and(|f| f != flow))
    }

    /// `small-first`, with `batch[0]` deferred: sends the frames behind it that may go
    /// ahead (see [`TxVirtio::may_pass`]), are smaller than it and the socket takes,
    /// first those already waiting, then new chains from the ring until [`LOOK_AHEAD`]
    /// wait. After a refusal only still smaller frames are tried in this pass (a datagram
    /// that did not fit tells nothing about a smaller one, but one of the same size or
    /// larger would not fit either). Returns whether any chain was used.
    fn send_ahead(
        &mut self,
        mem: &GuestMemoryMmap,
        backend: &mut dyn Backend,
        events: &DeviceEvents,
    ) -> Result<bool, DeviceError> {
        let chain = std::mem::take(&mut self.batch[0].chain);
        let deferred = self.flow_of(mem, &chain);
        self.batch[0].chain = chain;
        let Some(deferred) = deferred else {
            return Ok(false);
        };
        let mut used = false;
        // Only frames smaller than the deferred one: one as large would not have fitted
        // either a moment ago, and if the proxy has just made room, the deferred frame
        // is owed it (else a flow of large frames could starve it).
        let mut refused_len = self.batch[0].len;
        let mut i = 0;
        while i < self.behind.len() {
            let b = &self.behind[i];
            if b.flow.is_none() {
                // Nothing after a frame of unknown flow may pass it.
                break;
            }
            if b.popped.len < refused_len && self.may_pass(b.flow, deferred, i) {
                let b = self.behind.remove(i).expect("index in range");
                match self.try_ahead(mem, backend, events, b)? {
                    Ahead::Sent => {
                        used = true;
                        continue;
                    }
                    Ahead::Waits(b) => {
                        refused_len = refused_len.min(b.popped.len);
                        self.behind.insert(i, b);
                    }
                }
            }
            i += 1;
        }
        let cap = LOOK_AHEAD.min(usize::from(self.vq.queue.size()));
        while self.behind.len() < cap {
            let Some(head) = pop_avail(&mut self.vq.queue, mem) else {
                break;
            };
            let mut p = Popped {
                head,
                ..Popped::default()
            };
            if let Err(error) =
                p.chain
                    .parse(mem, ChainWalk::new(mem, &self.vq.queue, head), self.offload)
            {
                // Dropped either way, so it reorders nothing by going back now.
                self.reject(mem, head, error, events)?;
                used = true;
                continue;
            }
            p.len = p.chain.len();
            let flow = self.flow_of(mem, &p.chain);
            let b = Behind { popped: p, flow };
            if b.popped.len >= refused_len || !self.may_pass(flow, deferred, self.behind.len()) {
                self.behind.push_back(b);
                continue;
            }
            match self.try_ahead(mem, backend, events, b)? {
                Ahead::Sent => used = true,
                Ahead::Waits(b) => {
                    refused_len = b.popped.len;
                    self.behind.push_back(b);
                }
            }
        }
        Ok(used)
    }

    /// One send of a frame going ahead of the deferred one. A refused frame comes back to
    /// wait; one whose memory cannot be read is rejected (dropped), as in ring order.
    fn try_ahead(
        &mut self,
        mem: &GuestMemoryMmap,
        backend: &mut dyn Backend,
        events: &DeviceEvents,
        mut b: Behind,
    ) -> Result<Ahead, DeviceError> {
        let head = b.popped.head;
        self.list.clear();
        match b.popped.chain.gather_into(mem, &mut self.list) {
            Ok(true) => {}
            // Too many pieces to send in place: it waits its turn (then it is copied).
            Ok(false) => return Ok(Ahead::Waits(b)),
            Err(error) => {
                self.reject(mem, head, error, events)?;
                return Ok(Ahead::Sent);
            }
        }
        let out = backend.write_frames(self.list.frames());
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                // Counted with the others if the proxy is gone.
                self.behind.push_back(b);
                return Err(e.into());
            }
        };
        if out.sent == 1 {
            add_used(&mut self.vq.queue, mem, head, 0).map_err(self.vq.err())?;
            events.frame_sent_ahead(sent_frame(&b.popped.chain, 0));
            return Ok(Ahead::Sent);
        }
        match out.stopped {
            Some(WriteStatus::Unreadable) => {
                self.reject(mem, head, ChainError::Unreadable, events)?;
                Ok(Ahead::Sent)
            }
            _ => {
                events.ahead_refused();
                Ok(Ahead::Waits(b))
            }
        }
    }
}

/// Frame `i` of `chain` as it went out: its length and what the device did to it.
fn sent_frame(chain: &TxChain, i: usize) -> SentFrame {
    SentFrame {
        len: chain.frame_len(i),
        csum_completed: chain.offloads_csum(),
        gso_header_added: chain
            .is_gso()
            .then(|| if i > 0 { chain.gso_header_len() } else { 0 }),
    }
}

/// What became of a frame offered ahead of the deferred one.
// A value that lives for one call: boxing the waiting chain would allocate per refusal.
#[allow(clippy::large_enum_variant)]
enum Ahead {
    /// Gone: sent, or rejected back to the guest; its chain is used.
    Sent,
    /// Not sent: it waits behind the deferred frame.
    Waits(Behind),
}
