//! Real-proxy mode: the guest speaks Ethernet/ARP/IPv4/UDP (built and parsed with
//! `etherparse`) through a real proxy such as passt or gvproxy, to a UDP echo socket this
//! run opens on the host.
//!
//! The guest first resolves the gateway's MAC with ARP, then sends stamped UDP datagrams
//! to the gateway address (which the proxy maps to the host's loopback) on one source port
//! per stream; the echo socket returns every datagram to where it came from, and the guest
//! checks the stamps of what comes back. UDP may drop, so a missing echo is counted as
//! `udp_lost`, not as a device error; corruption, duplication and reordering still are.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, NetSlice, PacketBuilder, SlicedPacket,
    TransportSlice,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vnet_device::sockopt::{set_sock_buf, SockBuf};

use super::driver::DriverError;
use super::guest::{Framer, LearnedMac, GUEST_MAC};
use super::integrity::{write_stamp, Kind, Payload, Stamp, STAMP_LEN};
use super::workload::Next;

/// Addresses of the guest's view of the network.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub guest_ip: Ipv4Addr,
    /// The gateway: where ARP goes and where the echo datagrams are addressed.
    pub gateway_ip: Ipv4Addr,
    /// Where the echo socket binds on the host.
    pub echo_bind: Ipv4Addr,
    /// First guest UDP source port; stream s uses base + s. 0 = pick free host ports
    /// ([`free_port_run`]): passt binds the guest's source ports on the host, so two runs
    /// at once (parallel tests, other worktrees) with fixed ports steal each other's echoes.
    pub src_port_base: u16,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            guest_ip: Ipv4Addr::new(10, 0, 2, 15),
            gateway_ip: Ipv4Addr::new(10, 0, 2, 2),
            echo_bind: Ipv4Addr::LOCALHOST,
            src_port_base: 0,
        }
    }
}

/// The UDP echo socket on the host: returns every datagram to its sender.
pub struct EchoServer {
    pub port: u16,
    pub echoed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl EchoServer {
    pub fn start(bind: Ipv4Addr) -> io::Result<EchoServer> {
        let sock = UdpSocket::bind(SocketAddr::from((bind, 0)))?;
        // The default (~200 KB, about 90 MTU datagrams by skb truesize) overflows when the
        // echo thread is descheduled for a few ms on a loaded machine; the kernel caps
        // the request at net.core.rmem_max/wmem_max, which is fine: best effort.
        for which in [SockBuf::Recv, SockBuf::Send] {
            let _ = set_sock_buf(sock.as_fd(), which, ECHO_SOCK_BUF);
        }
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let port = sock.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let thread = {
            let stop = stop.clone();
            let echoed = echoed.clone();
            std::thread::Builder::new()
                .name("sim-udp-echo".into())
                .spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while !stop.load(Ordering::Acquire) {
                        match sock.recv_from(&mut buf) {
                            Ok((n, from)) => {
                                // A full host socket buffer is a UDP drop, which the
                                // guest counts; it must not end the echo loop.
                                let _ = sock.send_to(&buf[..n], from);
                                echoed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock
                                        | io::ErrorKind::TimedOut
                                        | io::ErrorKind::Interrupted
                                ) => {}
                            // ICMP port unreachable from an earlier send shows up here.
                            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                })?
        };
        Ok(EchoServer {
            port,
            echoed,
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("echo thread panicked")),
            None => Ok(()),
        }
    }
}

/// The first of `n` consecutive UDP ports free on the host right now (probed by binding
/// them on the wildcard address, then released for the proxy to bind). The kernel's
/// random ephemeral choice keeps concurrent runs apart.
pub fn free_port_run(n: u16) -> io::Result<u16> {
    let mut last_err = None;
    for _ in 0..100 {
        let first = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
        let base = first.local_addr()?.port();
        if u32::from(base) + u32::from(n) > 65535 {
            continue;
        }
        let rest: io::Result<Vec<UdpSocket>> = (1..n)
            .map(|i| UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, base + i))))
            .collect();
        match rest {
            Ok(_) => return Ok(base),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no free run of UDP ports")))
}

const ECHO_SOCK_BUF: usize = 4 << 20;

/// Frames for a real network: ARP until the gateway answers, then UDP to the echo port.
pub struct UdpFramer {
    net: NetConfig,
    echo_port: u16,
    gateway_mac: LearnedMac,
    last_arp: Option<Instant>,
    payloads: std::collections::HashMap<usize, Payload>,
    scratch: Vec<u8>,
    region: Vec<u8>,
    /// ARP requests sent.
    pub arps: Arc<AtomicU64>,
}

/// Ethernet + IPv4 + UDP header bytes in front of the stamp.
pub const UDP_OVERHEAD: usize = 14 + 20 + 8;

impl UdpFramer {
    pub fn new(net: NetConfig, echo_port: u16, gateway_mac: LearnedMac) -> UdpFramer {
        UdpFramer {
            net,
            echo_port,
            gateway_mac,
            last_arp: None,
            payloads: Default::default(),
            scratch: Vec::with_capacity(65600),
            region: Vec::with_capacity(65600),
            arps: Arc::new(AtomicU64::new(0)),
        }
    }

    fn arp_request(&self) -> Vec<u8> {
        let arp = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REQUEST,
            &GUEST_MAC,
            &self.net.guest_ip.octets(),
            &[0u8; 6],
            &self.net.gateway_ip.octets(),
        )
        .expect("ARP addresses have matching lengths");
        let mut out = Vec::new();
        PacketBuilder::ethernet2(GUEST_MAC, [0xff; 6])
            .arp(arp)
            .write(&mut out)
            .expect("writing to a Vec cannot fail");
        out
    }

    fn gateway(&self) -> Option<[u8; 6]> {
        *self.gateway_mac.lock().unwrap()
    }

    /// Parses a received frame: learns the gateway MAC from ARP replies, and returns the
    /// UDP payload of echoes addressed to us.
    pub fn parse<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        let p = SlicedPacket::from_ethernet(frame).ok()?;
        match p.net? {
            NetSlice::Arp(a) => {
                let a = a.to_packet().try_eth_ipv4().ok()?;
                if a.operation == ArpOperation::REPLY
                    && a.sender_ipv4 == self.net.gateway_ip.octets()
                {
                    *self.gateway_mac.lock().unwrap() = Some(a.sender_mac);
                }
                None
            }
            NetSlice::Ipv4(_) => match p.transport? {
                TransportSlice::Udp(u) if u.source_port() == self.echo_port => Some(u.payload()),
                _ => None,
            },
            _ => None,
        }
    }
}

impl Framer for UdpFramer {
    fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        n: &Next,
        _same_len_before: bool,
    ) -> Result<usize, DriverError> {
        let gw = self.gateway().expect("write is only called once ready");
        let region_len = n.len - UDP_OVERHEAD;
        let payload = self
            .payloads
            .entry(region_len)
            .or_insert_with(|| Payload::new(region_len - STAMP_LEN));
        self.region.clear();
        self.region.resize(STAMP_LEN, 0);
        self.region.extend_from_slice(payload.bytes());
        let stamp = Stamp {
            stream: n.stream,
            kind: if n.ack { Kind::Ack } else { Kind::Data },
            seq: n.seq,
            len: region_len as u32,
        };
        write_stamp(&mut self.region[..STAMP_LEN], &stamp, payload);
        self.scratch.clear();
        PacketBuilder::ethernet2(GUEST_MAC, gw)
            .ipv4(self.net.guest_ip.octets(), self.net.gateway_ip.octets(), 64)
            .udp(self.net.src_port_base + n.stream, self.echo_port)
            .write(&mut self.scratch, &self.region)
            .expect("writing to a Vec cannot fail");
        mem.write_slice(&self.scratch, addr)
            .map_err(|source| DriverError::Memory {
                addr: addr.0,
                source,
            })?;
        Ok(self.scratch.len())
    }

    fn region<'a>(&mut self, frame: &'a [u8]) -> Option<(&'a [u8], Option<u16>)> {
        self.parse(frame).map(|r| (r, None))
    }

    fn control(&mut self) -> Option<Vec<u8>> {
        if self.gateway().is_some() {
            return None;
        }
        // Re-ask every 200 ms: the proxy may not be listening for the guest yet.
        if self
            .last_arp
            .is_some_and(|t| t.elapsed() < Duration::from_millis(200))
        {
            return None;
        }
        self.last_arp = Some(Instant::now());
        self.arps.fetch_add(1, Ordering::Relaxed);
        Some(self.arp_request())
    }

    fn ready(&self) -> bool {
        self.gateway().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn arp_request_parses_and_reply_teaches_the_gateway_mac() {
        let mac: LearnedMac = Arc::new(Mutex::new(None));
        let mut f = UdpFramer::new(NetConfig::default(), 7777, mac.clone());
        let req = f.control().unwrap();
        let p = SlicedPacket::from_ethernet(&req).unwrap();
        assert!(matches!(p.net, Some(NetSlice::Arp(_))));
        assert!(f.control().is_none(), "no second ARP within 200 ms");
        let gw = [2, 0, 0, 0, 0, 9];
        let reply = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REPLY,
            &gw,
            &[10, 0, 2, 2],
            &GUEST_MAC,
            &[10, 0, 2, 15],
        )
        .unwrap();
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(gw, GUEST_MAC)
            .arp(reply)
            .write(&mut frame)
            .unwrap();
        assert!(f.region(&frame).is_none());
        assert_eq!(*mac.lock().unwrap(), Some(gw));
        assert!(f.ready());
    }

    #[test]
    fn echoed_udp_payload_is_found() {
        let mac: LearnedMac = Arc::new(Mutex::new(Some([2, 0, 0, 0, 0, 9])));
        let mut f = UdpFramer::new(NetConfig::default(), 7777, mac);
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], GUEST_MAC)
            .ipv4([10, 0, 2, 2], [10, 0, 2, 15], 64)
            .udp(7777, 40000)
            .write(&mut frame, b"hello")
            .unwrap();
        assert_eq!(f.region(&frame), Some((&b"hello"[..], None)));
        let mut other = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], GUEST_MAC)
            .ipv4([10, 0, 2, 2], [10, 0, 2, 15], 64)
            .udp(53, 40000)
            .write(&mut other, b"dns")
            .unwrap();
        assert_eq!(f.region(&other), None);
    }
}
