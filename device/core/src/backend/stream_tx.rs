//! The sending half of the stream backend: several length-prefixed frames per `sendmsg`,
//! and the state of a frame the socket took only part of.
//!
//! One call carries the rest of the first frame (after a short write, from exactly where
//! it stopped) and then whole frames, each behind its 4-byte big-endian length. The
//! caller bounds a batch by frames and bytes (`MAX_BATCH_FRAMES`, `MAX_BATCH_BYTES`: many
//! large frames per call cost more than single sends). When the socket takes only part of
//! the batch, the call is repeated with the rest until the socket refuses (EAGAIN); the
//! batch then stops at frame k, the frame the refused bytes belong to: frames before it
//! went out whole, frame k is the caller's deferred frame (partly written when some of its
//! bytes went out, and then resumed exactly there), frames after it were not sent at all.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{
    is_peer_gone, BackendError, BatchWrite, FrameRef, WriteStatus, MAX_BATCH_FRAMES, SEND_FLAGS,
};
use crate::frame::IovBuf;

/// Bytes of the length prefix in front of every frame.
pub(super) const PREFIX: usize = 4;

/// Most iovecs one `sendmsg` takes (Linux UIO_MAXIOV, macOS IOV_MAX).
const IOV_LIMIT: usize = 1024;

/// Most iovecs of zero padding one send carries.
const ZERO_IOVS: usize = 32;

/// Source of the padding that completes a frame whose guest memory faulted mid-send.
static ZEROS: [u8; 4096] = [0; 4096];

#[derive(Default)]
pub(super) struct StreamTx {
    /// Bytes of the first frame (prefix included) already written; 0 between frames.
    woff: usize,
    /// Length of that frame, to catch a caller that changes it mid-frame.
    wlen: usize,
    /// The frame's memory faulted (EFAULT) after part of it went out: the rest is sent as
    /// zeros, so the proxy still finds the next length prefix where it expects it.
    zero_fill: bool,
    /// The iovecs and length prefixes of one call, reused from call to call.
    iov: IovBuf,
    prefixes: Vec<[u8; PREFIX]>,
    /// Tests: the socket takes at most this many more bytes, then refuses once.
    limit: Option<Arc<AtomicUsize>>,
}

/// Appends `bytes` to `out` as one iovec (nothing when empty).
fn push_bytes(bytes: &[u8], out: &mut Vec<libc::iovec>) {
    if !bytes.is_empty() {
        out.push(libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        });
    }
}

/// Appends `zeros` bytes of padding (at most [`ZERO_IOVS`] pieces of it) to `out`.
fn push_zeros(zeros: usize, out: &mut Vec<libc::iovec>) {
    let mut left = zeros;
    let mut k = 0;
    while left > 0 && k < ZERO_IOVS {
        let n = left.min(ZEROS.len());
        push_bytes(&ZEROS[..n], out);
        left -= n;
        k += 1;
    }
}

/// A send that takes at most `left` bytes of `iov` and counts them off `limit`; with none
/// left it refuses with EAGAIN, without a system call, and lifts the limit.
fn limited_send(
    fd: RawFd,
    iov: &[libc::iovec],
    left: usize,
    limit: &AtomicUsize,
    sends: &mut u64,
) -> io::Result<usize> {
    if left == 0 {
        limit.store(usize::MAX, Ordering::Relaxed);
        return Err(io::Error::from_raw_os_error(libc::EAGAIN));
    }
    let mut cut = Vec::with_capacity(iov.len());
    let mut room = left;
    for v in iov {
        if room == 0 {
            break;
        }
        let n = v.iov_len.min(room);
        cut.push(libc::iovec {
            iov_base: v.iov_base,
            iov_len: n,
        });
        room -= n;
    }
    let n = send_iovecs(fd, &cut, sends)?;
    limit.store(left - n, Ordering::Relaxed);
    Ok(n)
}

/// One `sendmsg` of `iov` (readable for the call); `sends` counts it.
fn send_iovecs(fd: RawFd, iov: &[libc::iovec], sends: &mut u64) -> io::Result<usize> {
    // SAFETY: a zeroed msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    *sends += 1;
    // SAFETY: msg points at the caller's iovecs, all readable for the call.
    let n = unsafe { libc::sendmsg(fd, &msg, SEND_FLAGS) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl StreamTx {
    /// Bytes of a partially written frame (0 between frames).
    pub(super) fn offset(&self) -> usize {
        self.woff
    }

    /// See [`super::UnixStreamBackend::send_limit`].
    pub(super) fn send_limit(&mut self) -> Arc<AtomicUsize> {
        self.limit
            .get_or_insert_with(|| Arc::new(AtomicUsize::new(usize::MAX)))
            .clone()
    }

    /// Writes frames `0..count` (frame i is `frame(i)`) in as few `sendmsg` calls as the
    /// socket allows; `sends` counts the calls. See the module's comment for where a batch
    /// stops.
    pub(super) fn write<'a>(
        &mut self,
        fd: RawFd,
        count: usize,
        frame: impl Fn(usize) -> FrameRef<'a>,
        sends: &mut u64,
    ) -> Result<BatchWrite, BackendError> {
        let limit = self.limit.clone();
        self.write_with(fd, count, frame, &mut |iov| {
            if let Some(limit) = &limit {
                let left = limit.load(Ordering::Relaxed);
                if left != usize::MAX {
                    return limited_send(fd, iov, left, limit, sends);
                }
            }
            send_iovecs(fd, iov, sends)
        })
    }

    /// [`StreamTx::write`] through `send`, which stands for one `sendmsg` of the iovecs
    /// it is given (tests pass a socket that takes any number of bytes they choose).
    fn write_with<'a>(
        &mut self,
        fd: RawFd,
        count: usize,
        frame: impl Fn(usize) -> FrameRef<'a>,
        send: &mut dyn FnMut(&[libc::iovec]) -> io::Result<usize>,
    ) -> Result<BatchWrite, BackendError> {
        if count == 0 {
            return Ok(BatchWrite {
                sent: 0,
                stopped: None,
            });
        }
        let first = frame(0).len();
        if self.woff == 0 {
            self.wlen = first;
        } else if first != self.wlen {
            return Err(BackendError::Protocol {
                fd,
                detail: format!(
                    "resumed a {}-byte frame with a {}-byte one",
                    self.wlen, first
                ),
            });
        }
        // Frames of this call that went out whole.
        let mut sent = 0;
        // One frame per call: padding a faulted frame, or finding which frame faulted.
        let mut single = self.zero_fill;
        while sent < count {
            let upto = if single {
                sent + 1
            } else {
                count.min(sent + MAX_BATCH_FRAMES)
            };
            // The prefixes first: the iovecs point into this vector, which must not move.
            self.prefixes.clear();
            self.prefixes
                .extend((sent..upto).map(|i| (frame(i).len() as u32).to_be_bytes()));
            self.iov.clear();
            for i in sent..upto {
                let f = frame(i);
                if i > sent && self.iov.len() + 1 + f.iovecs().len() > IOV_LIMIT {
                    break;
                }
                let off = if i == sent { self.woff } else { 0 };
                let prefix = &self.prefixes[i - sent];
                push_bytes(&prefix[off.min(PREFIX)..], &mut self.iov);
                if i == sent && self.zero_fill {
                    push_zeros(PREFIX + f.len() - off.max(PREFIX), &mut self.iov);
                } else {
                    f.iovecs_from(off.saturating_sub(PREFIX), &mut self.iov);
                }
            }
            // The iovecs cover the prefixes above, the static zeros and the frames'
            // pieces, all readable for the call.
            let result = send(&self.iov);
            if let Ok(n) = result {
                // Walk the frames the bytes covered: whole ones are sent, the one the
                // count ends in keeps its offset.
                let mut n = n;
                while n > 0 {
                    let left = PREFIX + frame(sent).len() - self.woff;
                    if n < left {
                        self.woff += n;
                        break;
                    }
                    n -= left;
                    self.woff = 0;
                    if std::mem::take(&mut self.zero_fill) {
                        // The padded frame is complete: done with, but not sent.
                        return Ok(BatchWrite {
                            sent,
                            stopped: Some(WriteStatus::Unreadable),
                        });
                    }
                    sent += 1;
                    if sent < count {
                        self.wlen = frame(sent).len();
                    }
                }
                continue;
            }
            let err = result.expect_err("Ok handled above");
            let errno = err.raw_os_error().unwrap_or(0);
            match errno {
                libc::EINTR => continue,
                libc::EAGAIN | libc::ENOBUFS => {
                    return Ok(BatchWrite {
                        sent,
                        stopped: Some(WriteStatus::Blocked {
                            errno,
                            partial: self.woff > 0,
                        }),
                    })
                }
                // Some frame of the call faulted, and nothing went out: find which by
                // sending one frame per call from here.
                libc::EFAULT if !single && upto - sent > 1 => single = true,
                libc::EFAULT if self.woff == 0 => {
                    return Ok(BatchWrite {
                        sent,
                        stopped: Some(WriteStatus::Unreadable),
                    })
                }
                libc::EFAULT if !self.zero_fill => {
                    self.zero_fill = true;
                    single = true;
                }
                // Frames of this call already went out: report them; the next call, which
                // starts at frame `sent`, meets the error itself (an error means nothing
                // of a call went out).
                _ if sent > 0 => {
                    return Ok(BatchWrite {
                        sent,
                        stopped: None,
                    })
                }
                e if is_peer_gone(e) => {
                    let detail = if self.woff > 0 {
                        format!(
                            "send after {} of {} bytes of a frame: {err}",
                            self.woff,
                            PREFIX + frame(sent).len()
                        )
                    } else {
                        format!("send: {err}")
                    };
                    return Err(BackendError::PeerGone { fd, detail });
                }
                _ => {
                    return Err(BackendError::Io {
                        op: "sendmsg",
                        fd,
                        source: err,
                    })
                }
            }
        }
        Ok(BatchWrite {
            sent,
            stopped: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::TxFrame;

    /// A socket that takes the bytes of each call up to a budget per call (then refuses
    /// with EAGAIN), appending them to `wire`.
    struct Budget {
        wire: Vec<u8>,
        budgets: Vec<usize>,
        calls: usize,
    }

    impl Budget {
        fn send(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
            let Some(&budget) = self.budgets.get(self.calls) else {
                return Err(io::Error::from_raw_os_error(libc::EAGAIN));
            };
            self.calls += 1;
            if budget == 0 {
                return Err(io::Error::from_raw_os_error(libc::EAGAIN));
            }
            let mut took = 0;
            for v in iov {
                // SAFETY: the iovecs point into the test's live buffers.
                let b = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
                let n = b.len().min(budget - took);
                self.wire.extend_from_slice(&b[..n]);
                took += n;
            }
            Ok(took)
        }
    }

    fn wire_of(frames: &[Vec<u8>]) -> Vec<u8> {
        frames
            .iter()
            .flat_map(|f| (f.len() as u32).to_be_bytes().into_iter().chain(f.clone()))
            .collect()
    }

    /// A batch whose socket takes any number of bytes, from 0 to all of them, then
    /// refuses: the frames wholly taken are sent, the frame the bytes stop in is the
    /// stopped one (partly written unless the bytes end at its start), nothing after it
    /// went out; resuming from there completes the wire exactly, each frame once.
    #[test]
    fn a_batch_stopping_at_every_byte_resumes_exactly_there() {
        let frames: Vec<Vec<u8>> = [1usize, 60, 7, 1514, 3]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|b| (b * 7 + i) as u8).collect())
            .collect();
        let wire = wire_of(&frames);
        // Each frame in two pieces, so resuming inside a piece and between pieces is met.
        let mut two = Vec::new();
        for f in &frames {
            let (a, b) = f.split_at(f.len() / 2);
            let mut t = TxFrame::new();
            for piece in [a, b] {
                if !piece.is_empty() {
                    // SAFETY: the test's buffers outlive the frame; the test only reads them.
                    let s = unsafe {
                        vm_memory::VolatileSlice::new(piece.as_ptr() as *mut u8, piece.len())
                    };
                    t.push_volatile(&s).unwrap();
                }
            }
            two.push(t);
        }
        let mut list = crate::frame::TxList::new();
        for t in &two {
            list.push_frame(t.as_frame());
        }
        let all = list.frames();
        let ends: Vec<usize> = frames
            .iter()
            .scan(0, |pos, f| {
                *pos += PREFIX + f.len();
                Some(*pos)
            })
            .collect();
        for cut in 0..=wire.len() {
            let mut tx = StreamTx::default();
            let mut sock = Budget {
                wire: Vec::new(),
                budgets: vec![cut],
                calls: 0,
            };
            let out = tx
                .write_with(-1, all.len(), |i| all.get(i), &mut |iov| sock.send(iov))
                .unwrap();
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(sock.wire, wire[..cut], "cut {cut}");
            assert_eq!(out.sent, whole, "cut {cut}");
            let start = if whole == 0 { 0 } else { ends[whole - 1] };
            if whole == frames.len() {
                assert_eq!(out.stopped, None, "cut {cut}");
            } else {
                assert_eq!(
                    out.stopped,
                    Some(WriteStatus::Blocked {
                        errno: libc::EAGAIN,
                        partial: cut > start
                    }),
                    "cut {cut}"
                );
            }
            assert_eq!(tx.offset(), cut - start, "cut {cut}");
            // Resume with the stopped frame first; the socket takes a few bytes per call
            // and then everything: one write finishes the batch.
            let rest = all.range(whole..all.len());
            sock.budgets = vec![3, 1, 700, usize::MAX];
            sock.calls = 0;
            let out = tx
                .write_with(-1, rest.len(), |i| rest.get(i), &mut |iov| sock.send(iov))
                .unwrap();
            assert_eq!(
                out,
                BatchWrite {
                    sent: rest.len(),
                    stopped: None
                },
                "cut {cut}"
            );
            assert_eq!(sock.wire, wire, "cut {cut}");
            assert_eq!(tx.offset(), 0);
        }
    }

    #[test]
    fn a_frame_resumed_with_another_length_is_a_protocol_error() {
        let a = [1u8; 100];
        let b = [2u8; 50];
        let mut tx = StreamTx::default();
        let mut sock = Budget {
            wire: Vec::new(),
            budgets: vec![10],
            calls: 0,
        };
        let fa = TxFrame::from_slice(&a);
        let out = tx
            .write_with(-1, 1, |_| fa.as_frame(), &mut |iov| sock.send(iov))
            .unwrap();
        assert_eq!(out.sent, 0);
        let fb = TxFrame::from_slice(&b);
        let e = tx
            .write_with(-1, 1, |_| fb.as_frame(), &mut |iov| sock.send(iov))
            .unwrap_err();
        assert!(matches!(e, BackendError::Protocol { .. }), "{e}");
    }
}
