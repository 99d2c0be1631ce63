//! The request loop for one QEMU connection.
//!
//! Most requests go through the `vhost` crate's [`BackendReqHandler`], which parses them and
//! calls our [`VhostNetHandler`]. Two are answered here first, by peeking at the next
//! header on the socket:
//! - GET_PROTOCOL_FEATURES: the crate always adds REPLY_ACK to the reply; we must not
//!   offer it (without it QEMU never waits for an ack we could fail to send).
//! - SET_VRING_ENABLE before SET_FEATURES (QEMU 7.2 and 10.0 send it that early): the
//!   crate rejects it as "inactive feature" without telling the handler; we hand it to the
//!   handler, which keeps it until the features arrive.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    FrontendReq, VhostUserHeaderFlag, VhostUserU64, VhostUserVringState, MAX_MSG_SIZE,
};
use vhost::vhost_user::{BackendReqHandler, Error as VuError, VhostUserBackendReqHandlerMut};
use vm_memory::ByteValued;

use super::handler::VhostNetHandler;

const HEADER_LEN: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEnd {
    /// QEMU closed the socket (it exited or shut the device down).
    Disconnected,
    /// SIGINT/SIGTERM (or the stop flag) asked us to end.
    Stopped,
    /// The front end started a message and sent nothing more for the request timeout.
    FrontEndStalled,
}

/// How long a front end may take to finish a message once its first byte arrived. Idle time
/// between messages is unlimited (QEMU is silent while the guest runs).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("vhost-user socket: {0}")]
    Io(#[from] io::Error),
    #[error("vhost-user request failed: {0}")]
    Protocol(#[from] VuError),
}

/// A header as it sits on the wire (native endian, three u32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub code: u32,
    pub flags: u32,
    pub size: u32,
}

impl Header {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            code: word(0),
            flags: word(4),
            size: word(8),
        }
    }

    pub fn bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.code.to_ne_bytes());
        b[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        b[8..12].copy_from_slice(&self.size.to_ne_bytes());
        b
    }

    fn reply(code: FrontendReq, size: usize) -> Header {
        // Version 1 in the low bits, as every vhost-user message.
        Header {
            code: code as u32,
            flags: 0x1 | VhostUserHeaderFlag::REPLY.bits(),
            size: size as u32,
        }
    }
}

/// Waits up to `ms` for the socket; returns its poll events (0 on timeout or a signal).
fn poll_socket(fd: i32, ms: i32) -> io::Result<libc::c_short> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    Ok(if n > 0 { p.revents } else { 0 })
}

/// Peeks how many bytes of the next message are queued, up to `buf.len()`; `None` on EOF.
fn peek_len(sock: &UnixStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: buf is a valid, writable buffer of buf.len() bytes.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(Some(0)),
            io::ErrorKind::ConnectionReset => Ok(None),
            _ => Err(e),
        };
    }
    Ok((n > 0).then_some(n as usize))
}

/// What waiting for the rest of a message ended in.
enum MessageWait {
    Complete,
    Eof,
    Stop,
    Stalled { have: usize, want: usize },
}

/// A message has started to arrive: waits (in short sleeps, watching `stop`) until all of it,
/// header and body, is queued, so that the `vhost` crate's blocking reads never wait on the
/// front end. The bytes are readable all along, so poll() would return at once; sleeping
/// keeps this from spinning.
///
/// A peek stops at the end of a chunk that carried fds; a message whose fds came with its
/// header in one send and its body in another would look stalled. QEMU, DPDK and the
/// `vhost` crate send each message (header, body, fds) with one sendmsg().
fn wait_for_message(
    sock: &UnixStream,
    stop: &AtomicBool,
    timeout: Duration,
) -> io::Result<MessageWait> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; HEADER_LEN + MAX_MSG_SIZE];
    loop {
        let have = match peek_len(sock, &mut buf)? {
            None => return Ok(MessageWait::Eof),
            Some(n) => n,
        };
        // An oversized body is not waited for: the crate refuses such a header by itself.
        let want = match have {
            0..HEADER_LEN => HEADER_LEN,
            _ => match Header::parse(buf[..HEADER_LEN].try_into().expect("header length")).size
                as usize
            {
                size if size > MAX_MSG_SIZE => HEADER_LEN,
                size => HEADER_LEN + size,
            },
        };
        if have >= want {
            return Ok(MessageWait::Complete);
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(MessageWait::Stop);
        }
        // The peer closed mid-message: nothing more can come.
        if poll_socket(sock.as_raw_fd(), 0)? & (libc::POLLHUP | libc::POLLRDHUP) != 0
            && peek_len(sock, &mut buf)?.unwrap_or(0) == have
        {
            tracing::warn!(
                "vhost-user front end closed the socket {have} bytes into a {want}-byte message"
            );
            return Ok(MessageWait::Eof);
        }
        if Instant::now() >= deadline {
            return Ok(MessageWait::Stalled { have, want });
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Reads never block once the whole message is queued, but a front end that stops reading
/// our replies makes a write time out (SO_SNDTIMEO); SO_RCVTIMEO is a second bound on reads.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Bounds every blocking read and write on the socket: a front end that stops sending the
/// rest of a message, or stops reading our replies, costs at most `timeout`.
fn set_timeouts(sock: &UnixStream, timeout: Duration) -> io::Result<()> {
    let t = Some(timeout.max(Duration::from_millis(1)));
    sock.set_read_timeout(t)?;
    sock.set_write_timeout(t)
}

/// Peeks at the next header without consuming it; `None` on EOF, `Some(None)` when fewer
/// than a header's bytes are there yet.
fn peek_header(sock: &UnixStream) -> io::Result<Option<Option<Header>>> {
    let mut b = [0u8; HEADER_LEN];
    // SAFETY: b is a valid buffer of HEADER_LEN bytes.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            b.as_mut_ptr().cast(),
            HEADER_LEN,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(Some(None)),
            io::ErrorKind::ConnectionReset => Ok(None),
            _ => Err(e),
        };
    }
    Ok(match n as usize {
        0 => None,
        HEADER_LEN => Some(Some(Header::parse(&b))),
        _ => Some(None),
    })
}

/// Serves one connection until QEMU disconnects, `stop` is set, or the front end stalls
/// mid-message for `request_timeout`.
///
/// A stalled front end must neither hang the daemon nor keep SIGTERM from stopping it: a
/// request is handed to the `vhost` crate (which reads it with blocking calls) only once its
/// whole header is queued, and SO_RCVTIMEO bounds the body reads that follow.
pub fn serve(
    sock: UnixStream,
    handler: Arc<Mutex<VhostNetHandler>>,
    stop: &AtomicBool,
    request_timeout: Duration,
) -> Result<SessionEnd, SessionError> {
    set_timeouts(&sock, request_timeout)?;
    let mut side = sock.try_clone()?;
    let mut req = BackendReqHandler::from_stream(sock, handler.clone());
    let mut warned_worker_gone = false;
    let secs = request_timeout.as_secs_f64();
    let stalled = |what: String| {
        tracing::error!("vhost-user front end {what}; ending the session");
        Ok(SessionEnd::FrontEndStalled)
    };
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(SessionEnd::Stopped);
        }
        handler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check_memory_faults();
        if poll_socket(side.as_raw_fd(), 100)? == 0 {
            let h = handler.lock().unwrap_or_else(|e| e.into_inner());
            if h.worker_finished() && !warned_worker_gone {
                warned_worker_gone = true;
                tracing::error!("device worker ended (proxy gone?); still serving QEMU's requests");
            }
            continue;
        }
        match wait_for_message(&side, stop, request_timeout)? {
            MessageWait::Complete => {}
            MessageWait::Eof => return Ok(SessionEnd::Disconnected),
            MessageWait::Stop => return Ok(SessionEnd::Stopped),
            MessageWait::Stalled { have, .. } if have < HEADER_LEN => {
                return stalled(format!(
                    "sent {have} bytes of a {HEADER_LEN}-byte header, then nothing for {secs:.1} s"
                ))
            }
            MessageWait::Stalled { have, want } => {
                return stalled(format!(
                    "sent {have} bytes of a {want}-byte message (header and body), then nothing for {secs:.1} s"
                ))
            }
        }
        let hdr = match peek_header(&side)? {
            None => return Ok(SessionEnd::Disconnected),
            Some(h) => h,
        };
        let early_enable = hdr.is_some_and(|h| {
            h.code == FrontendReq::SET_VRING_ENABLE as u32
                && !handler
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .features_set()
        });
        let body_stall = |e: &io::Error| -> Option<Result<SessionEnd, SessionError>> {
            if stop.load(Ordering::SeqCst) {
                return Some(Ok(SessionEnd::Stopped));
            }
            is_timeout(e).then(|| {
                let (code, size) = hdr.map_or((0, 0), |h| (h.code, h.size));
                stalled(format!(
                    "stalled for {secs:.1} s in request {code} ({size}-byte body): \
                     it stopped reading our reply"
                ))
            })
        };
        match hdr {
            Some(h) if h.code == FrontendReq::GET_PROTOCOL_FEATURES as u32 => {
                if let Err(e) = consume(&mut side, h) {
                    return body_stall(&e).unwrap_or(Err(e.into()));
                }
                let features = handler
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_protocol_features()?;
                let body = VhostUserU64::new(features.bits());
                if let Err(e) = write_reply(
                    &mut side,
                    FrontendReq::GET_PROTOCOL_FEATURES,
                    body.as_slice(),
                ) {
                    return body_stall(&e).unwrap_or(Err(e.into()));
                }
            }
            Some(h) if early_enable => {
                let body = match consume(&mut side, h) {
                    Ok(b) => b,
                    Err(e) => return body_stall(&e).unwrap_or(Err(e.into())),
                };
                let mut state = VhostUserVringState::default();
                if body.len() != state.as_slice().len() {
                    // Consumed whole, so the stream is still in step: refuse and go on.
                    tracing::warn!(
                        "vhost-user request refused: SET_VRING_ENABLE with a {}-byte body",
                        body.len()
                    );
                    continue;
                }
                state.as_mut_slice().copy_from_slice(&body);
                let (index, num) = (state.index, state.num);
                let res = handler
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .set_vring_enable(index, num == 1);
                if h.flags & VhostUserHeaderFlag::NEED_REPLY.bits() != 0 {
                    let ack = VhostUserU64::new(u64::from(res.is_err()));
                    if let Err(e) =
                        write_reply(&mut side, FrontendReq::SET_VRING_ENABLE, ack.as_slice())
                    {
                        return body_stall(&e).unwrap_or(Err(e.into()));
                    }
                }
                if let Err(e) = res {
                    tracing::warn!("vhost-user request refused: {e}");
                }
            }
            _ => match req.handle_request() {
                Ok(()) => {}
                Err(VuError::Disconnected | VuError::PartialMessage) => {
                    return Ok(SessionEnd::Disconnected)
                }
                // A timed-out read or write (SO_RCVTIMEO/SO_SNDTIMEO), or one a signal
                // interrupted: the message is half handled and the stream cannot be
                // resynchronised, so the session ends either way.
                Err(VuError::SocketRetry(e)) => {
                    return body_stall(&e).unwrap_or(Err(SessionError::Io(e)))
                }
                Err(e @ (VuError::SocketBroken(_) | VuError::SocketError(_))) => {
                    return Err(e.into())
                }
                // A request we refused: QEMU learns it from the missing feature or reply.
                Err(e) => tracing::warn!("vhost-user request refused: {e}"),
            },
        }
    }
}

/// Reads one whole message (header and body) we peeked at; returns the body.
fn consume(sock: &mut UnixStream, h: Header) -> io::Result<Vec<u8>> {
    let mut hdr = [0u8; HEADER_LEN];
    sock.read_exact(&mut hdr)?;
    if h.size as usize > MAX_MSG_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {} bytes", h.size),
        ));
    }
    let mut body = vec![0u8; h.size as usize];
    sock.read_exact(&mut body)?;
    Ok(body)
}

fn write_reply(sock: &mut UnixStream, code: FrontendReq, body: &[u8]) -> io::Result<()> {
    let mut msg = Header::reply(code, body.len()).bytes().to_vec();
    msg.extend_from_slice(body);
    sock.write_all(&msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_reply_flags() {
        let h = Header {
            code: 18,
            flags: 0x9,
            size: 8,
        };
        assert_eq!(Header::parse(&h.bytes()), h);
        let r = Header::reply(FrontendReq::GET_PROTOCOL_FEATURES, 8);
        assert_eq!((r.code, r.flags, r.size), (15, 0x5, 8));
    }
}
