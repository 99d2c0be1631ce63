//! The TX direction: guest chains out to the proxy, one deferred frame at a time.
//!
//! A chain's frame is sent straight from guest memory (one gathered sendmsg; a chain with
//! too many pieces is copied into `copy` first). A send that does not complete keeps the
//! frame deferred: the chain is neither re-queued nor used, so the guest sees it
//! outstanding (its buffers stay the frame's until the chain is used), and nothing else is
//! sent before it (frames stay in order). A write event, a TX kick or the one-shot timer
//! retries it, as the retry policy (`crate::retry_policy`) says; a bounded policy drops it
//! after its last allowed failed send.

use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::virtq::Virtq;
use super::{DeviceError, TxPass, BATCH};
use crate::backend::{Backend, WriteStatus};
use crate::episode::Episode;
use crate::events::DeviceEvents;
use crate::net::{ChainError, ChainWalk, Rejected, TxChain};
use crate::probes::DropReason;

/// The frame waiting for the proxy; its pieces are in `TxVirtio::chain`.
#[derive(Debug, Clone, Copy)]
struct Deferred {
    head: u16,
    len: usize,
    /// The frame is in `copy` (it had more pieces than one send gathers).
    copied: bool,
    /// Part of it is already in a stream socket: it can no longer be dropped without
    /// breaking the stream's framing, so no retry policy gives up on it.
    started: bool,
}

pub(crate) struct TxVirtio {
    pub(crate) vq: Virtq,
    chain: TxChain,
    copy: Vec<u8>,
    deferred: Option<Deferred>,
    episode: Episode,
    /// Failed sends after which the deferred frame is dropped (`RetryPolicy::Bounded`).
    max_failed_sends: Option<u32>,
}

impl TxVirtio {
    pub(crate) fn new(vq: Virtq) -> TxVirtio {
        TxVirtio {
            vq,
            chain: TxChain::default(),
            copy: Vec::new(),
            deferred: None,
            episode: Episode::default(),
            max_failed_sends: None,
        }
    }

    pub(crate) fn set_max_failed_sends(&mut self, max: Option<u32>) {
        self.max_failed_sends = max;
    }

    /// Length of the deferred frame, if one waits.
    pub(crate) fn deferred_len(&self) -> Option<usize> {
        self.deferred.map(|d| d.len)
    }

    /// Failed sends of the deferred frame so far.
    pub(crate) fn failures(&self) -> u32 {
        self.episode.failures()
    }

    pub(crate) fn deferred(&self) -> bool {
        self.deferred.is_some()
    }

    /// Sends the deferred frame, then every chain the guest made available, until the
    /// proxy pushes back, the ring is empty or the batch is done.
    pub(crate) fn process(
        &mut self,
        mem: &GuestMemoryMmap,
        backend: &mut dyn Backend,
        events: &DeviceEvents,
    ) -> Result<TxPass, DeviceError> {
        let mut done = 0;
        let mut used = false;
        let result = loop {
            if let Some(mut d) = self.deferred {
                let sent = if d.copied {
                    Ok(backend.write_bytes(&self.copy))
                } else {
                    match self.chain.gather(mem) {
                        Ok(Some(frame)) => Ok(backend.write_frame(&frame)),
                        Ok(None) => self.chain.copy_to(mem, &mut self.copy).map(|()| {
                            d.copied = true;
                            self.deferred = Some(d);
                            events.tx_copied();
                            backend.write_bytes(&self.copy)
                        }),
                        Err(error) => Err(error),
                    }
                };
                let status = match sent {
                    Ok(status) => status?,
                    // The memory map changed under the deferred frame: it no longer lies
                    // inside guest memory.
                    Err(error) => {
                        self.deferred = None;
                        self.reject(mem, d.head, error, events)?;
                        used = true;
                        continue;
                    }
                };
                match status {
                    WriteStatus::Sent => {
                        self.deferred = None;
                        self.vq
                            .queue
                            .add_used(mem, d.head, 0)
                            .map_err(self.vq.err())?;
                        used = true;
                        self.episode.on_success(events);
                        events.frame_sent(d.len);
                        done += 1;
                    }
                    WriteStatus::Unreadable => {
                        // The guest's buffers are not all backed by memory: nothing (or,
                        // on a stream, zero padding that keeps the framing) went out.
                        self.deferred = None;
                        self.episode.abandon(events);
                        self.reject(mem, d.head, ChainError::Unreadable, events)?;
                        used = true;
                        continue;
                    }
                    WriteStatus::Blocked { errno, partial } => {
                        if partial {
                            events.partial_write();
                            d.started = true;
                            self.deferred = Some(d);
                        }
                        self.episode.on_failure(events, d.len, errno);
                        if !d.started
                            && self
                                .max_failed_sends
                                .is_some_and(|max| self.episode.failures() >= max)
                        {
                            // The policy gives up: the chain goes back used, as a sent
                            // frame's does, and the ring moves on.
                            self.deferred = None;
                            self.episode.give_up(events, d.len);
                            self.vq
                                .queue
                                .add_used(mem, d.head, 0)
                                .map_err(self.vq.err())?;
                            used = true;
                            // Counts toward the batch, so a policy that drops at once
                            // cannot keep the loop from RX.
                            done += 1;
                        } else {
                            // EVENT_IDX: ask for a kick on the guest's next chain, so a
                            // kick can retry the frame (the ring's state itself is left
                            // alone).
                            self.vq.enable_notification(mem, events)?;
                            break TxPass::Blocked;
                        }
                    }
                }
                if done >= BATCH {
                    break TxPass::More;
                }
            }
            let Some(chain) = self.vq.queue.pop_descriptor_chain(mem) else {
                // Re-arm kicks (EVENT_IDX: avail_event = next_avail); a chain that raced
                // in before that shows up here.
                if self.vq.enable_notification(mem, events)? {
                    continue;
                }
                break TxPass::Idle;
            };
            let head = chain.head_index();
            match self
                .chain
                .parse(mem, ChainWalk::new(mem, &self.vq.queue, head))
            {
                Ok(_) => {
                    self.deferred = Some(Deferred {
                        head,
                        len: self.chain.len(),
                        copied: false,
                        started: false,
                    })
                }
                Err(error) => {
                    self.reject(mem, head, error, events)?;
                    used = true;
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
            self.vq
                .queue
                .add_used(mem, head, 0)
                .map_err(self.vq.err())?;
        }
        events.chain_rejected(self.vq.index, Rejected { head, error });
        Ok(())
    }

    /// The proxy went away: the deferred frame will never be sent.
    pub(crate) fn peer_gone(&mut self, events: &DeviceEvents) {
        if let Some(d) = self.deferred.take() {
            events.frame_dropped(d.len, DropReason::PeerGone);
        }
    }
}
