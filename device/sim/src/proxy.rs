//! The built-in proxy peer: the other end of the device's socket, as gvproxy or passt
//! would be, consuming the guest's frames (and checking them) and producing its own.
//!
//! Datagrams: like gvproxy and vmnet-helper, the proxy binds its own path, never connects
//! back, and replies with sendto to the device's bound path. That matters on Linux: a
//! datagram receiver whose peer is the sender itself (a socketpair, or a proxy connected
//! back) is exempt from `net.unix.max_dgram_qlen`, so the device would never meet a full
//! queue; an unconnected proxy gets the real limit and the device real EAGAIN episodes.
//!
//! More backpressure on demand: a small SO_RCVBUF, a delay per frame read, or periodic
//! pauses, so the device meets a full socket (EAGAIN on Linux, ENOBUFS on macOS) like it
//! does under a busy proxy.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::guest::{
    counts_as_received, sim_region, udp_csum_ok, Shared, SimFramer, GUEST_MAC, PROXY_MAC,
};
use super::integrity::{Checker, Kind};
use super::workload::{Idle, Scheduler, Workload};
use vnet_device::notify::Notifier;
use vnet_device::sockopt::{set_sock_buf, size_proxy_dgram, SockBuf};

/// The proxy's end of the connection.
pub enum PeerSocket {
    /// A datagram socket and where replies go: `None` when it is connected (one end of a
    /// socketpair), the device's bound path when the proxy only bound its own.
    Gram(UnixDatagram, Option<PathBuf>),
    Stream(UnixStream),
}

impl PeerSocket {
    fn try_clone(&self) -> io::Result<PeerSocket> {
        Ok(match self {
            PeerSocket::Gram(s, to) => PeerSocket::Gram(s.try_clone()?, to.clone()),
            PeerSocket::Stream(s) => PeerSocket::Stream(s.try_clone()?),
        })
    }

    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        match self {
            PeerSocket::Gram(s, _) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
            PeerSocket::Stream(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            PeerSocket::Gram(s, _) => s.as_fd(),
            PeerSocket::Stream(s) => s.as_fd(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ProxyOptions {
    /// SO_RCVBUF for the proxy's socket (a datagram proxy's must hold the largest frame:
    /// at least `bufsize::MIN_DGRAM_RCVBUF`).
    pub rcvbuf: Option<usize>,
    /// Sleep after each frame read.
    pub read_delay: Duration,
    /// Stop reading for this long...
    pub pause: Duration,
    /// ...every this often.
    pub pause_every: Duration,
    /// Hash every payload (off only for the throughput benchmark's sink).
    pub verify_crc: bool,
}

pub struct BuiltinProxy {
    reader: JoinHandle<io::Result<Checker>>,
    writer: JoinHandle<io::Result<()>>,
    wake: Notifier,
    /// Keeps the connection open after both threads finish, until the run has stopped the
    /// device: a closed peer would look like a proxy crash to it.
    _keep: PeerSocket,
}

/// How long a blocking socket call waits before the thread re-checks the stop flag.
const POLL: Duration = Duration::from_millis(20);

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

impl BuiltinProxy {
    pub fn spawn(
        sock: PeerSocket,
        workload: &Workload,
        opts: &ProxyOptions,
        shared: Arc<Shared>,
        start: Instant,
    ) -> io::Result<BuiltinProxy> {
        match &sock {
            // A datagram peer needs room for the largest frame: macOS's defaults (2 KiB
            // send, 4 KiB receive) hold none, so it is sized like gvproxy there.
            PeerSocket::Gram(..) => size_proxy_dgram(sock.fd(), opts.rcvbuf)?,
            PeerSocket::Stream(_) => {
                if let Some(bytes) = opts.rcvbuf {
                    set_sock_buf(sock.fd(), SockBuf::Recv, bytes)?;
                }
            }
        }
        sock.set_timeouts(POLL)?;
        let wake = Notifier::new()?;
        let reader = {
            let sock = sock.try_clone()?;
            let shared = shared.clone();
            let opts = opts.clone();
            let wake = wake.try_clone()?;
            let ack_every = if workload.ack_size > 0 {
                workload.ack_every.max(1)
            } else {
                0
            };
            std::thread::Builder::new()
                .name("sim-proxy-rx".into())
                .spawn(move || read_loop(sock, opts, shared, wake, ack_every))?
        };
        let keep = sock.try_clone()?;
        let writer = {
            let shared = shared.clone();
            let sched = Scheduler::new(workload, false, start);
            let wake = wake.try_clone()?;
            std::thread::Builder::new()
                .name("sim-proxy-tx".into())
                .spawn(move || write_loop(sock, sched, shared, wake))?
        };
        Ok(BuiltinProxy {
            reader,
            writer,
            wake,
            _keep: keep,
        })
    }

    /// Both threads have left: everything the guest sent was read, everything the proxy
    /// meant to send was written (or the run was stopped).
    pub fn is_finished(&self) -> bool {
        self.reader.is_finished() && self.writer.is_finished()
    }

    /// Waits for both threads (they leave on completion or on `shared.stop`).
    pub fn join(self) -> io::Result<Checker> {
        let _ = self.wake.notify();
        let w = self
            .writer
            .join()
            .map_err(|_| io::Error::other("proxy writer panicked"))?;
        let r = self
            .reader
            .join()
            .map_err(|_| io::Error::other("proxy reader panicked"))?;
        w?;
        r
    }
}

/// Reads whole frames from either socket kind; a stream read that times out mid-frame
/// keeps what it has.
struct FrameReader {
    buf: Vec<u8>,
    have: usize,
}

impl FrameReader {
    fn new() -> FrameReader {
        FrameReader {
            buf: vec![0u8; 4 + vnet_device::net::MAX_FRAME + 4096],
            have: 0,
        }
    }

    /// Next frame's length and the frame in `self.buf[off..off+len]`, or None on timeout.
    fn next(&mut self, sock: &mut PeerSocket) -> io::Result<Option<(usize, usize)>> {
        match sock {
            PeerSocket::Gram(s, _) => match s.recv(&mut self.buf) {
                Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed")),
                // The vfkit handshake announces the device; it is no frame.
                Ok(n) if &self.buf[..n] == vnet_device::backend::unixgram::VFKT_MAGIC => Ok(None),
                Ok(n) => Ok(Some((0, n))),
                Err(e) if is_timeout(&e) => Ok(None),
                Err(e) => Err(e),
            },
            // Reads exactly the 4-byte length, then exactly the frame, as a proxy does:
            // never past the frame, so nothing has to be moved afterwards. A timeout keeps
            // what was read and resumes there.
            PeerSocket::Stream(s) => loop {
                let want = if self.have < 4 {
                    4
                } else {
                    let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                    if len + 4 > self.buf.len() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("stream frame length {len} exceeds the largest frame"),
                        ));
                    }
                    if self.have == 4 + len {
                        return Ok(Some((4, len)));
                    }
                    4 + len
                };
                match s.read(&mut self.buf[self.have..want]) {
                    Ok(0) => {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed"))
                    }
                    Ok(n) => self.have += n,
                    Err(e) if is_timeout(&e) => return Ok(None),
                    Err(e) => return Err(e),
                }
            },
        }
    }

    /// Drops the frame just returned.
    fn consume(&mut self) {
        self.have = 0;
    }
}

fn read_loop(
    mut sock: PeerSocket,
    opts: ProxyOptions,
    shared: Arc<Shared>,
    wake: Notifier,
    ack_every: u64,
) -> io::Result<Checker> {
    let mut checker = Checker::new(opts.verify_crc);
    let mut reader = FrameReader::new();
    let mut last_pause = Instant::now();
    while !shared.stopping() {
        if shared.proxy_rx_complete() {
            break;
        }
        if !opts.pause.is_zero() && last_pause.elapsed() >= opts.pause_every {
            std::thread::sleep(opts.pause);
            last_pause = Instant::now();
        }
        let Some((off, len)) = (match reader.next(&mut sock) {
            Ok(f) => f,
            // The device went away: whatever did not arrive is counted as lost at finish.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }) else {
            shared.check_proxy_rx_data();
            continue;
        };
        let frame = &reader.buf[off..off + len];
        // A UDP checksum is there only when the device completed it (`--offload-csum`).
        match udp_csum_ok(frame) {
            Some(true) => {
                shared.udp_csum_checked.fetch_add(1, Ordering::Relaxed);
            }
            Some(false) => {
                shared.udp_csum_checked.fetch_add(1, Ordering::Relaxed);
                shared.udp_csum_bad.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
        // Anything not shaped like our frames is damage here: only the device sends.
        let (verdict, stamp) = match sim_region(frame) {
            Some((region, order)) => checker.observe(region, len, Some(order)),
            None => checker.observe(&[], 0, None),
        };
        reader.consume();
        shared
            .proxy_rx_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        if counts_as_received(verdict) {
            if let Some(s) = &stamp {
                shared.tx_latency.arrived(s);
            }
            shared.proxy_received.fetch_add(1, Ordering::AcqRel);
            if matches!(stamp, Some(s) if s.kind == Kind::Ack) {
                let _ = wake.notify();
            }
            if matches!(stamp, Some(s) if s.kind == Kind::Data) {
                let n = shared.proxy_received_data.fetch_add(1, Ordering::AcqRel) + 1;
                if ack_every > 0 && n % ack_every == 0 {
                    shared.proxy_acks_owed.fetch_add(1, Ordering::AcqRel);
                    let _ = wake.notify();
                }
            }
        }
        if shared.check_proxy_rx_data() {
            let _ = wake.notify();
        }
        if !opts.read_delay.is_zero() {
            std::thread::sleep(opts.read_delay);
        }
    }
    let _ = wake.notify();
    Ok(checker)
}

fn write_loop(
    mut sock: PeerSocket,
    mut sched: Scheduler,
    shared: Arc<Shared>,
    wake: Notifier,
) -> io::Result<()> {
    let mut framer = SimFramer::new(PROXY_MAC, GUEST_MAC);
    let mut frame = Vec::with_capacity(vnet_device::net::MAX_FRAME + 4);
    let mut out = Vec::with_capacity(vnet_device::net::MAX_FRAME + 4);
    let mut final_ack = false;
    while !shared.stopping() {
        let owed = shared.proxy_acks_owed.load(Ordering::Acquire);
        let got = shared.proxy_received.load(Ordering::Acquire);
        let acks_in =
            got - shared.proxy_received_data.load(Ordering::Acquire).min(got) + shared.tx_dropped();
        match sched.next(owed, acks_in) {
            Ok(n) => {
                framer.build(&mut frame, &n);
                shared.rx_latency.sent(&super::guest::stamp_for(&n));
                let sent = match &mut sock {
                    PeerSocket::Gram(s, to) => send_gram(s, to.as_deref(), &frame, &shared)?,
                    PeerSocket::Stream(s) => {
                        out.clear();
                        out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
                        out.extend_from_slice(&frame);
                        send_stream(s, &out, &shared)?
                    }
                };
                if !sent {
                    break;
                }
                sched.sent(&n);
                if n.ack {
                    shared.proxy_acks_owed.fetch_sub(1, Ordering::AcqRel);
                    shared.proxy_sent.acks.fetch_add(1, Ordering::AcqRel);
                } else {
                    shared.proxy_sent.data.fetch_add(1, Ordering::AcqRel);
                }
            }
            Err(Idle::Paced(d)) => {
                let _ = wake.wait_timeout(d.min(POLL));
                let _ = wake.drain();
            }
            // The reader wakes us when an ACK arrives.
            Err(Idle::Window) => {
                let _ = wake.wait_timeout(POLL);
                let _ = wake.drain();
            }
            Err(Idle::DataDone) => {
                shared.proxy_sent.data_done.store(true, Ordering::Release);
                // The delayed ACK's timer: a trailing odd frame is acknowledged too.
                if !final_ack && shared.check_proxy_rx_data() {
                    final_ack = true;
                    let every = sched.ack_every();
                    let got = shared.proxy_received_data.load(Ordering::Acquire);
                    if every > 0 && got % every != 0 {
                        shared.proxy_acks_owed.fetch_add(1, Ordering::AcqRel);
                        continue;
                    }
                }
                if shared.check_proxy_rx_data()
                    && shared.proxy_acks_owed.load(Ordering::Acquire) == 0
                {
                    shared.proxy_sent.acks_done.store(true, Ordering::Release);
                    break;
                }
                let _ = wake.wait_timeout(POLL);
                let _ = wake.drain();
            }
        }
    }
    Ok(())
}

/// Sends one datagram, retrying while the device's receive queue is full. False on stop.
fn send_gram(
    s: &UnixDatagram,
    to: Option<&std::path::Path>,
    frame: &[u8],
    shared: &Shared,
) -> io::Result<bool> {
    loop {
        let r = match to {
            Some(path) => s.send_to(frame, path),
            None => s.send(frame),
        };
        match r {
            Ok(_) => return Ok(true),
            Err(e) if is_timeout(&e) || e.raw_os_error() == Some(libc::ENOBUFS) => {
                if shared.stopping() {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(false),
            // The device's bound path is gone: it has stopped.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// Writes a length-prefixed frame, resuming after timeouts. False on stop.
fn send_stream(s: &mut UnixStream, buf: &[u8], shared: &Shared) -> io::Result<bool> {
    let mut off = 0;
    while off < buf.len() {
        match s.write(&buf[off..]) {
            Ok(n) => off += n,
            Err(e) if is_timeout(&e) => {
                if shared.stopping() {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
