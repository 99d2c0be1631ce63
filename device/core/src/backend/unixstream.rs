//! Stream backend: each frame behind a 4-byte big-endian length (passt, socket_vmnet,
//! QEMU `-netdev stream`).
//!
//! Writes resume exactly where a short write stopped (the backend keeps the offset; the
//! worker offers the same frame again). Reads are assembled in an internal buffer across
//! as many `read` calls as it takes, never blocking.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::stream_tx::{StreamTx, PREFIX};
use super::{
    no_sigpipe, size_buf, socket_failure, Backend, BackendError, BackendOptions, BatchWrite,
    DirectRead, FrameRef, Frames, ReadStatus, SyscallCounts, WriteStatus, MAX_BATCH_FRAMES,
};
use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};

use crate::bufsize::{stream_plan, Os};
use crate::frame::{IovBuf, MAX_FRAME};
use crate::sockopt::SockBuf;

pub struct UnixStreamBackend {
    sock: UnixStream,
    /// The sending half: batches of frames and the partly written one.
    tx: StreamTx,
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    /// Bytes still to discard of an oversized frame.
    skip: usize,
    /// The proxy closed its end (read returned 0) while frames read before it were still
    /// being handed out: the next read reports it.
    eof: bool,
    /// The frame announced by [`ReadStatus::Direct`], read straight into the caller's
    /// buffers.
    direct: Option<DirectFrame>,
    /// The iovecs of one direct read, reused from call to call.
    riov: IovBuf,
    /// Frames parsed since the last large one, counting down from [`LARGE_RECENT`]: while
    /// above zero, a read asks for at most [`DIRECT_TAIL`] bytes, so a large frame
    /// arrives prefix first and goes straight into the guest (a read of everything the
    /// socket holds would bring whole large frames into our buffer, to be copied twice).
    large_recent: u8,
    /// Where in `rbuf` each frame the current `read_frames` batch reported as
    /// [`ReadStatus::Held`] lies, by its index among the batch's statuses (`None` for the
    /// others). `rbuf` keeps those bytes in place until the next `read_frames` call.
    held: Vec<Option<(usize, usize)>>,
    calls: SyscallCounts,
    /// `BackendOptions::one_frame_per_call`: one frame per `sendmsg`.
    one_per_call: bool,
}

/// A frame read straight into the caller's buffers: its length, and bytes of it read.
#[derive(Debug, Clone, Copy)]
struct DirectFrame {
    len: usize,
    done: usize,
}

/// Frames at least this large whose payload is still on its way are read straight into
/// the guest's buffers (copy-free); smaller ones are copied out of the bytes a read
/// brought in, which batches many of them per call.
pub const DIRECT_MIN: usize = 2048;

/// Most bytes past a direct frame one read brings into the internal buffer: enough for
/// the next length prefix, little enough that a following large frame is mostly read
/// straight into the guest too.
const DIRECT_TAIL: usize = 4096;

/// Most reads one [`Backend::read_frames`] call makes without completing a frame (1 MiB
/// of an oversize frame's body at a time): then it returns, so the worker sees stops and
/// kicks. Whole frames need far fewer (the largest fits one read, or goes direct).
const MAX_READS_WITHOUT_FRAME: u32 = 8;

/// How many frames after a large one the reads stay short (small frames in between, such
/// as ACKs, do not end a run of large ones).
const LARGE_RECENT: u8 = 8;

impl UnixStreamBackend {
    pub fn connect(proxy: &Path, opts: &BackendOptions) -> Result<UnixStreamBackend, BackendError> {
        let sock = UnixStream::connect(proxy).map_err(|source| BackendError::Setup {
            op: "connect to proxy",
            path: proxy.to_path_buf(),
            source,
        })?;
        UnixStreamBackend::from_socket(sock, opts)
    }

    pub fn from_socket(
        sock: UnixStream,
        opts: &BackendOptions,
    ) -> Result<UnixStreamBackend, BackendError> {
        sock.set_nonblocking(true)
            .map_err(|source| BackendError::SockOpt {
                opt: "O_NONBLOCK",
                source,
            })?;
        // A stream carries a frame in pieces, so no size is too small to work (floor 0):
        // only slow. Unless told otherwise, macOS gets libkrun's 16 MiB (see `bufsize`).
        let plan = stream_plan(Os::CURRENT);
        if let Some(n) = opts.sndbuf.or(plan.sndbuf) {
            size_buf(sock.as_fd(), SockBuf::Send, n, 0)?;
        }
        if let Some(n) = opts.rcvbuf.or(plan.rcvbuf) {
            size_buf(sock.as_fd(), SockBuf::Recv, n, 0)?;
        }
        no_sigpipe(sock.as_fd())?;
        Ok(UnixStreamBackend {
            sock,
            tx: StreamTx::default(),
            // Room for two maximal frames so a read can pull in more than one at a time.
            rbuf: vec![0u8; 2 * (PREFIX + MAX_FRAME)].into_boxed_slice(),
            rstart: 0,
            rend: 0,
            skip: 0,
            eof: false,
            direct: None,
            riov: IovBuf::default(),
            large_recent: 0,
            held: Vec::with_capacity(MAX_BATCH_FRAMES),
            calls: SyscallCounts::default(),
            one_per_call: opts.one_frame_per_call,
        })
    }

    /// Bytes of a partially written frame (0 between frames).
    pub fn write_offset(&self) -> usize {
        self.tx.offset()
    }

    /// For tests: a handle through which the socket is made to take at most N more bytes
    /// (store N) and then refuse one send with EAGAIN, as a full socket does, so a test
    /// can stop a batch at any byte. `usize::MAX`, the initial value, is no limit.
    pub fn send_limit(&mut self) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
        self.tx.send_limit()
    }
}

impl Backend for UnixStreamBackend {
    fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn kind(&self) -> &'static str {
        "unixstream"
    }

    fn syscalls(&self) -> SyscallCounts {
        self.calls
    }

    fn write_frame(&mut self, frame: FrameRef<'_>) -> Result<WriteStatus, BackendError> {
        let fd = self.sock.as_raw_fd();
        let out = self.tx.write(fd, 1, |_| frame, &mut self.calls.sends)?;
        Ok(out.stopped.unwrap_or(WriteStatus::Sent))
    }

    fn batch_limit(&self) -> usize {
        if self.one_per_call {
            1
        } else {
            MAX_BATCH_FRAMES
        }
    }

    /// Several length-prefixed frames per `sendmsg` (see `stream_tx`).
    fn write_frames(&mut self, frames: Frames<'_>) -> Result<BatchWrite, BackendError> {
        let fd = self.sock.as_raw_fd();
        self.tx
            .write(fd, frames.len(), |i| frames.get(i), &mut self.calls.sends)
    }

    fn read_frame(&mut self, buf: &mut [u8]) -> Result<ReadStatus, BackendError> {
        loop {
            if let Some(status) = self.parse(buf, Parse::Copy) {
                return Ok(status);
            }
            if self.eof {
                return Err(self.closed());
            }
            match self.fill()? {
                Fill::Got { .. } => {}
                Fill::WouldBlock => return Ok(ReadStatus::WouldBlock),
                Fill::Eof => return Err(self.closed()),
            }
        }
    }

    /// As many frames as `bufs` holds out of as few reads as it takes: one read pulls in
    /// whatever the socket has (up to two maximal frames), parsed here into frames, which
    /// stay where the read put them ([`ReadStatus::Held`]: the caller copies each once,
    /// into the guest, not first into `bufs`). A frame of at least [`DIRECT_MIN`] bytes
    /// whose payload has not all arrived yet ends the batch as [`ReadStatus::Direct`]:
    /// the caller reads it into its own buffers.
    fn read_frames(
        &mut self,
        bufs: &mut [Box<[u8]>],
        got: &mut Vec<ReadStatus>,
    ) -> Result<(), BackendError> {
        got.clear();
        // The last batch's held frames are done with: their bytes may go.
        self.held.clear();
        self.release();
        if self.eof {
            return Err(self.closed());
        }
        let mut i = 0;
        // Reads since the last frame: a peer that sends an oversize frame's body (up to
        // 4 GiB) as fast as we discard it must not hold this call for all of it.
        let mut reads = 0;
        // The last read of this call emptied the socket (it returned fewer bytes than
        // asked for). Another read would only find it empty: whatever arrives after that
        // read raises a new readable event (the worker's poller is edge-triggered, and
        // the event is not taken until it waits again). Trusted within this call only: a
        // later call may come after the worker took that event without reading (see
        // `RxVirtio::process`), so it reads before it says the socket is empty.
        let mut drained = false;
        while i < bufs.len() {
            if let Some(status) = self.parse(&mut bufs[i], Parse::Hold) {
                if !matches!(status, ReadStatus::Held(_)) {
                    self.held.push(None);
                }
                got.push(status);
                if let ReadStatus::Direct(_) = status {
                    return Ok(());
                }
                i += 1;
                reads = 0;
                continue;
            }
            if drained {
                got.push(ReadStatus::WouldBlock);
                return Ok(());
            }
            if reads == MAX_READS_WITHOUT_FRAME {
                return Ok(());
            }
            reads += 1;
            // No room left behind the held frames: the batch ends with them, and the next
            // call, which may move bytes, reads on.
            if self.rend == self.rbuf.len() && self.held.iter().any(Option::is_some) {
                return Ok(());
            }
            match self.fill()? {
                Fill::Got { drained: d } => drained = d,
                Fill::WouldBlock => {
                    got.push(ReadStatus::WouldBlock);
                    return Ok(());
                }
                // The close is reported by the next call, after these frames (without a
                // WouldBlock, which would have the caller wait for an event that never
                // comes).
                Fill::Eof if !got.is_empty() => {
                    self.eof = true;
                    return Ok(());
                }
                Fill::Eof => return Err(self.closed()),
            }
        }
        Ok(())
    }

    unsafe fn read_direct(&mut self, dst: &[libc::iovec]) -> Result<DirectRead, BackendError> {
        let fd = self.sock.as_raw_fd();
        let Some(mut d) = self.direct.take() else {
            return Err(BackendError::Protocol {
                fd,
                detail: "read_direct without a frame announced by ReadStatus::Direct".into(),
            });
        };
        // The payload's first bytes came in with the length prefix.
        let avail = self.rend - self.rstart;
        if avail > 0 && d.done < d.len {
            let n = avail.min(d.len - d.done);
            // SAFETY: the caller promises dst is writable for the call.
            unsafe {
                copy_to_iovecs(&self.rbuf[self.rstart..self.rstart + n], dst, d.done);
            }
            self.rstart += n;
            d.done += n;
        }
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        }
        while d.done < d.len {
            if self.eof {
                self.direct = Some(d);
                return Err(self.closed());
            }
            // The rest of the payload into the caller's buffers, and what follows it (the
            // next length prefix, at most DIRECT_TAIL bytes) into ours: one call per frame.
            self.riov.clear();
            crate::frame::iovecs_from(dst, d.done, &mut self.riov);
            let tail_end = (self.rend + DIRECT_TAIL).min(self.rbuf.len());
            let tail = &mut self.rbuf[self.rend..tail_end];
            self.riov.push(libc::iovec {
                iov_base: tail.as_mut_ptr().cast(),
                iov_len: tail.len(),
            });
            let asked = d.len - d.done + tail.len();
            // SAFETY: a zeroed msghdr is valid (no name, no control data).
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = self.riov.as_mut_ptr();
            msg.msg_iovlen = self.riov.len() as _;
            self.calls.recvs += 1;
            // SAFETY: the iovecs cover the rest of dst (writable, as the caller promises)
            // and the free end of our buffer.
            let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
            if n > 0 {
                let n = n as usize;
                let k = n.min(d.len - d.done);
                d.done += k;
                self.rend += n - k;
                // Fewer bytes than asked for: the socket is empty, and the rest of the
                // frame raises a readable event when it comes (see `read_frames`).
                if n < asked && d.done < d.len {
                    self.direct = Some(d);
                    return Ok(DirectRead::WouldBlock);
                }
                continue;
            }
            if n == 0 {
                self.eof = true;
                self.direct = Some(d);
                return Err(self.closed());
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error().unwrap_or(0) {
                libc::EINTR => {}
                libc::EAGAIN => {
                    self.direct = Some(d);
                    return Ok(DirectRead::WouldBlock);
                }
                _ => {
                    self.direct = Some(d);
                    return Err(socket_failure(fd, "recvmsg", err));
                }
            }
        }
        Ok(DirectRead::Done)
    }

    fn held_frame(&self, i: usize) -> Option<&[u8]> {
        let (at, len) = (*self.held.get(i)?)?;
        self.rbuf.get(at..at + len)
    }

    fn skip_direct(&mut self) {
        if let Some(d) = self.direct.take() {
            let left = d.len - d.done;
            let n = left.min(self.rend - self.rstart);
            self.rstart += n;
            self.skip = left - n;
        }
    }
}

/// What [`UnixStreamBackend::parse`] does with a whole frame.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parse {
    /// Copies it into the caller's buffer ([`ReadStatus::Frame`]).
    Copy,
    /// Leaves it in `rbuf` ([`ReadStatus::Held`]), and announces a large frame whose
    /// payload is still on its way ([`ReadStatus::Direct`]).
    Hold,
}

/// How one read into the internal buffer went.
enum Fill {
    /// Bytes came in; `drained`: fewer than asked for, so the socket had no more.
    Got {
        drained: bool,
    },
    WouldBlock,
    Eof,
}

impl UnixStreamBackend {
    /// The next frame out of the bytes already read, without a system call: `None` when
    /// they do not hold one. With [`Parse::Hold`], a whole frame stays in `rbuf` (recorded
    /// in `held`) and a large frame whose payload is still on its way is announced as
    /// [`ReadStatus::Direct`] (its prefix consumed).
    fn parse(&mut self, buf: &mut [u8], how: Parse) -> Option<ReadStatus> {
        loop {
            let avail = self.rend - self.rstart;
            if self.skip > 0 {
                if avail == 0 {
                    return None;
                }
                let n = self.skip.min(avail);
                self.skip -= n;
                self.rstart += n;
                continue;
            }
            if avail < PREFIX {
                return None;
            }
            let p = &self.rbuf[self.rstart..self.rstart + PREFIX];
            let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
            if avail >= PREFIX + len || len >= DIRECT_MIN {
                // A frame is handed out (or skipped) now: count it.
                self.large_recent = if len >= DIRECT_MIN {
                    LARGE_RECENT
                } else {
                    self.large_recent.saturating_sub(1)
                };
            }
            if len > buf.len() || len > MAX_FRAME {
                // Discard the frame's bytes as they arrive; the stream stays in sync.
                self.rstart += PREFIX;
                self.skip = len;
                return Some(ReadStatus::Oversize(len));
            }
            if avail >= PREFIX + len {
                let s = self.rstart + PREFIX;
                self.rstart = s + len;
                if how == Parse::Hold && len > 0 {
                    // Not moved or overwritten before the next `read_frames` call: only
                    // `release` (at its start) and `fill` (not with frames held) move
                    // bytes, and reads land after `rend`.
                    self.held.push(Some((s, len)));
                    return Some(ReadStatus::Held(len));
                }
                buf[..len].copy_from_slice(&self.rbuf[s..s + len]);
                self.release();
                return Some(ReadStatus::Frame(len));
            }
            if how == Parse::Hold && len >= DIRECT_MIN {
                self.rstart += PREFIX;
                self.direct = Some(DirectFrame { len, done: 0 });
                return Some(ReadStatus::Direct(len));
            }
            return None;
        }
    }

    /// Rewinds `rbuf` when all of it was handed out, or moves a small rest (the start of
    /// a frame) to the front once less than a maximal frame's room is left behind it, so
    /// reads keep their room. Larger rests stay: `fill` moves them when it must. Only
    /// when no frame is held.
    fn release(&mut self) {
        let rest = self.rend - self.rstart;
        if rest == 0 {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rstart > 0
            && rest <= DIRECT_TAIL
            && self.rbuf.len() - self.rend < PREFIX + MAX_FRAME
        {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend = rest;
            self.rstart = 0;
        }
    }

    /// One read from the socket into the free end of the internal buffer (a short one
    /// while large frames come, see `large_recent`).
    fn fill(&mut self) -> Result<Fill, BackendError> {
        let fd = self.sock.as_raw_fd();
        // Make room at the end first.
        if self.rend == self.rbuf.len() {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        // Bytes being discarded (an oversize frame's) go nowhere: read them in full
        // buffers, not in the short reads meant to land a large frame in the guest.
        let end = if self.large_recent > 0 && self.skip == 0 {
            (self.rend + DIRECT_TAIL).min(self.rbuf.len())
        } else {
            self.rbuf.len()
        };
        loop {
            let room = &mut self.rbuf[self.rend..end];
            let asked = room.len();
            self.calls.recvs += 1;
            match recv(fd, room, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return Ok(Fill::Eof),
                Ok(n) => {
                    self.rend += n;
                    return Ok(Fill::Got { drained: n < asked });
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Ok(Fill::WouldBlock),
                Err(e) => return Err(socket_failure(fd, "recv", e.into())),
            }
        }
    }

    /// The error for a proxy that closed its end, saying whether it stopped mid-frame.
    fn closed(&mut self) -> BackendError {
        self.eof = true;
        let pending = self.rend - self.rstart;
        let detail = if let Some(d) = self.direct {
            format!(
                "proxy closed the stream in the middle of a frame ({} of its {} bytes received)",
                d.done, d.len
            )
        } else if self.skip > 0 {
            format!(
                "proxy closed the stream while an oversize frame was being discarded ({} of its bytes never came)",
                self.skip
            )
        } else if pending > 0 {
            format!(
                "proxy closed the stream in the middle of a frame ({pending} bytes of it received)"
            )
        } else {
            "proxy closed the stream".to_string()
        };
        BackendError::PeerGone {
            fd: self.sock.as_raw_fd(),
            detail,
        }
    }
}

/// Copies `src` into the memory `dst` describes, starting `offset` bytes into it.
///
/// # Safety
/// Every iovec of `dst` must be writable memory, not overlapping `src`.
unsafe fn copy_to_iovecs(mut src: &[u8], dst: &[libc::iovec], mut offset: usize) {
    for v in dst {
        if src.is_empty() {
            return;
        }
        if offset >= v.iov_len {
            offset -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - offset).min(src.len());
        // SAFETY: the caller promises v is writable; offset + n <= iov_len.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), (v.iov_base as *mut u8).add(offset), n);
        }
        src = &src[n..];
        offset = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::TxFrame;
    use std::io::{Read, Write};

    fn pair() -> (UnixStreamBackend, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (
            UnixStreamBackend::from_socket(a, &BackendOptions::default()).unwrap(),
            b,
        )
    }

    #[test]
    fn one_frame_per_call_offers_the_device_no_batch() {
        let (a, _peer) = UnixStream::pair().unwrap();
        let opts = BackendOptions {
            one_frame_per_call: true,
            ..Default::default()
        };
        assert_eq!(
            UnixStreamBackend::from_socket(a, &opts)
                .unwrap()
                .batch_limit(),
            1
        );
        assert_eq!(pair().0.batch_limit(), MAX_BATCH_FRAMES);
    }

    #[test]
    fn frames_carry_big_endian_length() {
        let (mut be, mut peer) = pair();
        assert_eq!(be.write_bytes(&[0xab; 300]).unwrap(), WriteStatus::Sent);
        let mut got = [0u8; 304];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[..4], &[0, 0, 1, 44]);
        assert!(got[4..].iter().all(|&b| b == 0xab));
    }

    #[test]
    fn reads_assemble_across_partial_arrivals() {
        let (mut be, mut peer) = pair();
        let mut buf = vec![0u8; MAX_FRAME];
        let mut wire = Vec::new();
        for (i, len) in [60usize, 1514, 9000].iter().enumerate() {
            wire.extend_from_slice(&(*len as u32).to_be_bytes());
            wire.extend(std::iter::repeat_n(i as u8 + 1, *len));
        }
        let mut got = Vec::new();
        // Dribble the bytes in uneven pieces (splitting prefixes too); read after each one.
        let sizes = [1usize, 3, 777, 2, 5000];
        let (mut pos, mut i) = (0, 0);
        while pos < wire.len() {
            let n = sizes[i % sizes.len()].min(wire.len() - pos);
            peer.write_all(&wire[pos..pos + n]).unwrap();
            pos += n;
            i += 1;
            while let ReadStatus::Frame(n) = be.read_frame(&mut buf).unwrap() {
                got.push(buf[..n].to_vec());
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(
            got.iter().map(|f| f.len()).collect::<Vec<_>>(),
            [60, 1514, 9000]
        );
        for (i, f) in got.iter().enumerate() {
            assert!(f.iter().all(|&b| b == i as u8 + 1));
        }
    }

    /// A read that returns fewer bytes than asked for emptied the socket: the batch ends
    /// there without a read that would find it empty. The next call reads again whatever
    /// that read said (it may come after the readable event for new bytes was taken).
    #[test]
    fn a_short_read_ends_the_batch_and_the_next_call_reads_again() {
        let (mut be, mut peer) = pair();
        let mut bufs: Vec<Box<[u8]>> = (0..8)
            .map(|_| vec![0u8; MAX_FRAME].into_boxed_slice())
            .collect();
        let mut got = Vec::new();
        let mut wire = Vec::new();
        for (i, len) in [60usize, 1514, 700].iter().enumerate() {
            wire.extend_from_slice(&(*len as u32).to_be_bytes());
            wire.extend(std::iter::repeat_n(i as u8 + 1, *len));
        }
        peer.write_all(&wire).unwrap();
        be.read_frames(&mut bufs, &mut got).unwrap();
        assert_eq!(
            got,
            [
                ReadStatus::Held(60),
                ReadStatus::Held(1514),
                ReadStatus::Held(700),
                ReadStatus::WouldBlock
            ]
        );
        for (i, len) in [60, 1514, 700].into_iter().enumerate() {
            assert_eq!(be.held_frame(i), Some(&vec![i as u8 + 1; len][..]));
        }
        assert_eq!(be.held_frame(3), None, "the WouldBlock holds nothing");
        assert_eq!(be.syscalls().recvs, 1, "one read for the three frames");
        // Half a frame: the read takes it, finds no whole frame, and stops.
        peer.write_all(&[0, 0, 0, 100, 9, 9]).unwrap();
        be.read_frames(&mut bufs, &mut got).unwrap();
        assert_eq!(got, [ReadStatus::WouldBlock]);
        assert_eq!(be.syscalls().recvs, 2);
        // Bytes that came after that read are read by the next call.
        peer.write_all(&[9; 98]).unwrap();
        be.read_frames(&mut bufs, &mut got).unwrap();
        assert_eq!(got, [ReadStatus::Held(100), ReadStatus::WouldBlock]);
        assert_eq!(be.held_frame(0), Some(&[9; 100][..]));
        assert_eq!(be.syscalls().recvs, 3);
        // Nothing came: the call reads (EAGAIN) rather than trust the last one.
        be.read_frames(&mut bufs, &mut got).unwrap();
        assert_eq!(got, [ReadStatus::WouldBlock]);
        assert_eq!(be.syscalls().recvs, 4);
    }

    /// Frames held in the internal buffer stay intact until the next call, while the
    /// batch that reported them read on behind them: a peer streaming far more than the
    /// buffer holds, read in batches of 32 that end anywhere in the buffer (a full end
    /// included), every frame checked by its bytes, once and in order.
    #[test]
    fn held_frames_stay_intact_until_the_next_call() {
        let (mut be, peer) = pair();
        // Far more queued than the internal buffer takes, so reads fill it to its end.
        crate::sockopt::set_sock_buf(peer.as_fd(), SockBuf::Send, 4 << 20).unwrap();
        let sizes = |i: u32| 1 + (i as usize * 7919) % (DIRECT_MIN - 1);
        let n = 3000u32;
        let writer = std::thread::spawn(move || {
            let mut peer = peer;
            for i in 0..n {
                let mut w = (sizes(i) as u32).to_be_bytes().to_vec();
                w.extend((0..sizes(i)).map(|k| (i as usize * 31 + k) as u8));
                peer.write_all(&w).unwrap();
            }
        });
        let mut bufs: Vec<Box<[u8]>> = (0..32)
            .map(|_| vec![0u8; MAX_FRAME].into_boxed_slice())
            .collect();
        let mut got = Vec::new();
        let mut next = 0u32;
        let mut spins = 0u64;
        std::thread::sleep(std::time::Duration::from_millis(50));
        while next < n {
            spins += 1;
            assert!(spins < 10_000_000, "{next} of {n} frames");
            be.read_frames(&mut bufs, &mut got).unwrap();
            for (i, status) in got.iter().enumerate() {
                match *status {
                    ReadStatus::Held(len) => {
                        let f = be.held_frame(i).expect("a held frame lends its bytes");
                        assert_eq!(len, sizes(next), "frame {next}");
                        let want = (0..len).map(|k| (next as usize * 31 + k) as u8);
                        assert!(f.iter().copied().eq(want), "frame {next} intact");
                        next += 1;
                    }
                    ReadStatus::WouldBlock => {}
                    other => panic!("frame {next}: {other:?}"),
                }
            }
        }
        writer.join().unwrap();
    }

    #[test]
    fn oversize_frame_is_skipped_and_stream_stays_in_sync() {
        let (mut be, mut peer) = pair();
        let big = MAX_FRAME + 10;
        peer.write_all(&(big as u32).to_be_bytes()).unwrap();
        let mut buf = vec![0u8; MAX_FRAME];
        assert_eq!(be.read_frame(&mut buf).unwrap(), ReadStatus::Oversize(big));
        let writer = std::thread::spawn(move || {
            peer.write_all(&vec![5u8; big]).unwrap();
            peer.write_all(&[0, 0, 0, 2, 8, 9]).unwrap();
            peer
        });
        let mut frames = Vec::new();
        while frames.is_empty() {
            if let ReadStatus::Frame(n) = be.read_frame(&mut buf).unwrap() {
                frames.push(buf[..n].to_vec());
            }
        }
        assert_eq!(frames[0], vec![8, 9]);
        drop(writer.join().unwrap());
    }

    #[test]
    fn peer_closing_mid_frame_is_a_clear_error() {
        let (mut be, mut peer) = pair();
        peer.write_all(&[0, 0, 0, 100, 1, 2, 3]).unwrap();
        drop(peer);
        let mut buf = vec![0u8; MAX_FRAME];
        let e = be.read_frame(&mut buf).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, BackendError::PeerGone { .. }), "{msg}");
        assert!(
            msg.contains("middle of a frame") && msg.contains("7 bytes"),
            "{msg}"
        );
    }

    #[test]
    fn peer_closing_during_an_oversize_discard_says_so() {
        let (mut be, mut peer) = pair();
        peer.write_all(&[0xff; 4]).unwrap();
        peer.write_all(&[7; 1000]).unwrap();
        drop(peer);
        let mut buf = vec![0u8; MAX_FRAME];
        assert_eq!(
            be.read_frame(&mut buf).unwrap(),
            ReadStatus::Oversize(0xffff_ffff)
        );
        let e = be.read_frame(&mut buf).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, BackendError::PeerGone { .. }), "{msg}");
        let left = 0xffff_ffffu64 - 1000;
        assert!(
            msg.contains("oversize") && msg.contains(&format!("{left} of its bytes")),
            "{msg}"
        );
    }

    /// Guest memory that faults halfway through a frame the stream already started: the
    /// rest goes out as zeros, the frame is reported unreadable, and the next frame is
    /// framed correctly.
    #[test]
    fn a_frame_that_faults_midway_is_padded_and_the_stream_stays_in_sync() {
        use vm_memory::VolatileSlice;
        let (a, mut peer) = UnixStream::pair().unwrap();
        let opts = BackendOptions {
            sndbuf: Some(4096),
            ..Default::default()
        };
        let mut be = UnixStreamBackend::from_socket(a, &opts).unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).unwrap();
            all
        });
        let mut good = vec![0xabu8; 16384];
        // SAFETY: an anonymous mapping nobody else uses; PROT_NONE makes every access fault.
        let bad = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(bad, libc::MAP_FAILED);
        let mut frame = TxFrame::new();
        // SAFETY: both slices stay mapped for the whole test; the kernel only reads them.
        let (ok, fault) = unsafe {
            (
                VolatileSlice::new(good.as_mut_ptr(), good.len()),
                VolatileSlice::new(bad.cast::<u8>(), 4096),
            )
        };
        frame.push_volatile(&ok).unwrap();
        frame.push_volatile(&fault).unwrap();
        let status = loop {
            match be.write_frame(frame.as_frame()).unwrap() {
                WriteStatus::Blocked { .. } => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                other => break other,
            }
        };
        assert_eq!(status, WriteStatus::Unreadable);
        loop {
            match be.write_bytes(b"next").unwrap() {
                WriteStatus::Blocked { .. } => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                other => break assert_eq!(other, WriteStatus::Sent),
            }
        }
        drop(be);
        let wire = reader.join().unwrap();
        let total = 16384 + 4096;
        assert_eq!(wire.len(), 4 + total + 4 + 4);
        assert_eq!(wire[..4], (total as u32).to_be_bytes());
        // Whatever of the good piece went out before the fault, then zeros to the end.
        let body = &wire[4..4 + total];
        let cut = body.iter().position(|&b| b != 0xab).unwrap_or(total);
        assert!(body[cut..].iter().all(|&b| b == 0), "padding is zeros");
        assert_eq!(&wire[4 + total..], b"\0\0\0\x04next");
        // SAFETY: unmapping the page mapped above.
        unsafe { libc::munmap(bad, 4096) };
    }
}
