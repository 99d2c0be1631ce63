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

use vhost::vhost_user::message::{
    FrontendReq, VhostUserHeaderFlag, VhostUserU64, VhostUserVringState,
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
}

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

/// Waits up to `ms` for the socket to become readable.
fn readable(fd: i32, ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(n > 0)
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

/// Serves one connection until QEMU disconnects or `stop` is set.
pub fn serve(
    sock: UnixStream,
    handler: Arc<Mutex<VhostNetHandler>>,
    stop: &AtomicBool,
) -> Result<SessionEnd, SessionError> {
    let mut side = sock.try_clone()?;
    let mut req = BackendReqHandler::from_stream(sock, handler.clone());
    let mut warned_worker_gone = false;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(SessionEnd::Stopped);
        }
        if !readable(side.as_raw_fd(), 100)? {
            let h = handler.lock().unwrap_or_else(|e| e.into_inner());
            if h.worker_finished() && !warned_worker_gone {
                warned_worker_gone = true;
                tracing::error!("device worker ended (proxy gone?); still serving QEMU's requests");
            }
            continue;
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
        match hdr {
            Some(h) if h.code == FrontendReq::GET_PROTOCOL_FEATURES as u32 => {
                consume(&mut side, h)?;
                let features = handler
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_protocol_features()?;
                let body = VhostUserU64::new(features.bits());
                write_reply(
                    &mut side,
                    FrontendReq::GET_PROTOCOL_FEATURES,
                    body.as_slice(),
                )?;
            }
            Some(h) if early_enable => {
                let body = consume(&mut side, h)?;
                let mut state = VhostUserVringState::default();
                if body.len() != state.as_slice().len() {
                    return Err(SessionError::Protocol(VuError::InvalidMessage));
                }
                state.as_mut_slice().copy_from_slice(&body);
                let (index, num) = (state.index, state.num);
                let res = handler
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .set_vring_enable(index, num == 1);
                if h.flags & VhostUserHeaderFlag::NEED_REPLY.bits() != 0 {
                    let ack = VhostUserU64::new(u64::from(res.is_err()));
                    write_reply(&mut side, FrontendReq::SET_VRING_ENABLE, ack.as_slice())?;
                }
                res?;
            }
            _ => match req.handle_request() {
                Ok(()) => {}
                Err(VuError::Disconnected | VuError::PartialMessage) => {
                    return Ok(SessionEnd::Disconnected)
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
    if h.size as usize > vhost::vhost_user::message::MAX_MSG_SIZE {
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
