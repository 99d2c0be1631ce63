//! The `vnet-vhost` binary against a hostile vhost-user front end: one that stalls
//! mid-message, and one whose memory table lies about its memfds. Each must end with the
//! daemon alive (or exiting cleanly), a summary printed and the trace flushed.

#![cfg(target_os = "linux")]

mod daemon_support;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use daemon_support::{start, Dir};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};
use vmm_sys_util::eventfd::EventFd;
use vnet_device::net::NET_HDR_LEN;

/// A vhost-user header (native endian: code, flags with version 1, body size).
fn header(code: u32, size: u32) -> Vec<u8> {
    [code, 0x1, size]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect()
}

const SET_OWNER: u32 = 3;
const SET_FEATURES: u32 = 2;
const GET_FEATURES: u32 = 1;

#[test]
fn a_partial_header_then_silence_ends_the_session_after_the_timeout() {
    let dir = Dir::new("stall-hdr");
    let d = start(&dir.0, &["--request-timeout", "0.5"]);
    let mut fe = d.connect();
    fe.write_all(&header(SET_OWNER, 0)[..5]).unwrap();
    let end = d.finish();
    assert_eq!(end.status.code(), Some(1), "{}", end.stderr);
    assert_eq!(end.summary["end"], "front_end_stalled");
    assert!(
        end.stderr
            .contains("sent 5 bytes of a 12-byte header, then nothing for 0.5 s"),
        "{}",
        end.stderr
    );
    trace_flushed(&dir);
}

#[test]
fn a_header_without_its_body_ends_the_session_after_the_timeout() {
    let dir = Dir::new("stall-body");
    let d = start(&dir.0, &["--request-timeout", "0.5"]);
    let mut fe = d.connect();
    let mut msg = header(SET_FEATURES, 8);
    msg.extend_from_slice(&[1, 2]);
    fe.write_all(&msg).unwrap();
    let end = d.finish();
    assert_eq!(end.status.code(), Some(1), "{}", end.stderr);
    assert_eq!(end.summary["end"], "front_end_stalled");
    assert!(
        end.stderr.contains("sent 14 bytes of a 20-byte message"),
        "{}",
        end.stderr
    );
}

#[test]
fn sigterm_stops_a_daemon_stuck_on_a_partial_header() {
    let dir = Dir::new("stall-term");
    // The default timeout (5 s): the signal must end the run well before it.
    let d = start(&dir.0, &[]);
    let mut fe = d.connect();
    fe.write_all(&header(SET_OWNER, 0)[..5]).unwrap();
    thread::sleep(Duration::from_millis(300));
    d.signal(libc::SIGTERM);
    let end = d.finish_within(Duration::from_secs(5));
    assert!(end.status.success(), "{}", end.stderr);
    assert_eq!(end.summary["end"], "stopped");
    assert!(
        end.exit_wait < Duration::from_secs(3),
        "{:?}",
        end.exit_wait
    );
    trace_flushed(&dir);
}

#[test]
fn a_front_end_closing_mid_header_is_a_disconnect() {
    let dir = Dir::new("close-hdr");
    let d = start(&dir.0, &["--request-timeout", "600"]);
    let mut fe = d.connect();
    fe.write_all(&header(SET_OWNER, 0)[..7]).unwrap();
    drop(fe);
    let end = d.finish_within(Duration::from_secs(5));
    assert!(end.status.success(), "{}", end.stderr);
    assert_eq!(end.summary["end"], "disconnected");
}

/// The trace was flushed: its two header lines are there.
fn trace_flushed(dir: &Dir) {
    let text = std::fs::read_to_string(dir.0.join("trace.csv")).unwrap();
    assert!(text.starts_with("# clock mono_ns="), "{text}");
    assert!(text.contains("\nts_ns,tid,probe,"), "{text}");
}

#[test]
fn a_header_announcing_an_oversized_body_is_refused_without_waiting_for_it() {
    let dir = Dir::new("huge-body");
    let d = start(&dir.0, &["--request-timeout", "600"]);
    let mut fe = d.connect();
    fe.write_all(&header(SET_FEATURES, u32::MAX)).unwrap();
    // Still in step and serving: GET_FEATURES (1) gets its 8-byte reply.
    fe.write_all(&header(GET_FEATURES, 0)).unwrap();
    fe.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = [0u8; 20];
    fe.read_exact(&mut reply).unwrap();
    assert_eq!(reply[..4], GET_FEATURES.to_ne_bytes());
    assert_eq!(reply[8..12], 8u32.to_ne_bytes());
    drop(fe);
    let end = d.finish();
    assert!(end.status.success(), "{}", end.stderr);
    assert_eq!(end.summary["end"], "disconnected");
    assert!(end.stderr.contains("refused"), "{}", end.stderr);
}

// ---- guest memory that lies (item: SIGBUS) ----

const MEM: usize = 1 << 20;
const QSIZE: u16 = 16;
const TXQ: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;

fn memfd(size: u64, flags: libc::c_uint) -> File {
    // SAFETY: a NUL-terminated name; memfd_create returns a fresh fd or -1.
    let fd = unsafe { libc::memfd_create(c"vnet-hostile".as_ptr(), libc::MFD_CLOEXEC | flags) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd was just created and is owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).unwrap();
    f
}

/// Our own mapping of `file`, as QEMU has its guest RAM mapped.
fn map(file: &File) -> GuestMemoryMmap {
    let region =
        MmapRegion::<()>::from_file(FileOffset::new(file.try_clone().unwrap(), 0), MEM).unwrap();
    GuestMemoryMmap::from_regions(vec![GuestRegionMmap::new(region, GuestAddress(0)).unwrap()])
        .unwrap()
}

fn region(mem: &GuestMemoryMmap, file: &File, size: u64) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: mem.get_host_address(GuestAddress(0)).unwrap() as u64,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    }
}

/// Features and protocol features, as QEMU negotiates them.
fn negotiate(fe: &mut Frontend) {
    negotiate_acking(fe, !0);
}

/// [`negotiate`], acking only the offered features in `mask`.
fn negotiate_acking(fe: &mut Frontend, mask: u64) {
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    let proto = fe.get_protocol_features().unwrap();
    fe.set_protocol_features(proto).unwrap();
    fe.set_features(features & mask).unwrap();
}

/// Both rings (RX empty) and their eventfds; the worker starts after the enables.
fn rings(
    fe: &mut Frontend,
    mem: &GuestMemoryMmap,
    txq: &MockSplitQueue<'_, GuestMemoryMmap>,
    rxq: &MockSplitQueue<'_, GuestMemoryMmap>,
) -> Vec<EventFd> {
    let fds: Vec<EventFd> = (0..4).map(|_| EventFd::new(0).unwrap()).collect();
    let host = |gpa: GuestAddress| mem.get_host_address(gpa).unwrap() as u64;
    for (i, q) in [(0, rxq), (1, txq)] {
        fe.set_vring_num(i, QSIZE).unwrap();
        fe.set_vring_base(i, 0).unwrap();
        let cfg = VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: host(q.desc_table_addr()),
            used_ring_addr: host(q.used_addr()),
            avail_ring_addr: host(q.avail_addr()),
            log_addr: None,
        };
        fe.set_vring_addr(i, &cfg).unwrap();
        fe.set_vring_kick(i, &fds[i]).unwrap();
        fe.set_vring_call(i, &fds[2 + i]).unwrap();
        fe.set_vring_enable(i, true).unwrap();
    }
    fds
}

/// Puts one TX frame in the ring, kicks, and reads it at the proxy (bounded).
fn send_frame(
    mem: &GuestMemoryMmap,
    txq: &MockSplitQueue<'_, GuestMemoryMmap>,
    kick: &EventFd,
    proxy: &mut UnixStream,
    payload: &[u8],
    slot: u64,
) {
    let at = DATA + slot * 0x1000;
    mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(at))
        .unwrap();
    mem.write_slice(payload, GuestAddress(at + NET_HDR_LEN as u64))
        .unwrap();
    txq.add_desc_chains(
        &[RawDescriptor::from(Descriptor::new(
            at,
            (NET_HDR_LEN + payload.len()) as u32,
            0,
            0,
        ))],
        slot as u16,
    )
    .unwrap();
    kick.write(1).unwrap();
    proxy
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut len = [0u8; 4];
    proxy.read_exact(&mut len).unwrap();
    let mut got = vec![0u8; u32::from_be_bytes(len) as usize];
    proxy.read_exact(&mut got).unwrap();
    assert_eq!(got, payload);
}

#[test]
fn regions_past_the_end_of_their_memfd_are_refused_and_the_session_goes_on() {
    let dir = Dir::new("mem-beyond");
    let d = start(&dir.0, &[]);
    let (mut proxy, _) = d.proxy.accept().unwrap();
    let mut fe = Frontend::from_stream(d.connect(), 2);
    negotiate(&mut fe);

    // 1 MiB declared on a 64 KiB memfd, then 64 TiB on a 1 MiB one: both refused.
    let small = memfd(64 << 10, 0);
    let small_map = map(&memfd(MEM as u64, 0));
    fe.set_mem_table(&[region(&small_map, &small, MEM as u64)])
        .unwrap();
    let file = memfd(MEM as u64, 0);
    let mem = map(&file);
    fe.set_mem_table(&[region(&mem, &file, 64 << 40)]).unwrap();
    // An offset that wraps offset + size around u64.
    let mut wrap = region(&mem, &file, MEM as u64);
    wrap.mmap_offset = u64::MAX - 0xfff;
    fe.set_mem_table(&[wrap]).unwrap();
    fe.get_features().unwrap();

    // The daemon is alive and still takes a table that tells the truth.
    fe.set_mem_table(&[region(&mem, &file, MEM as u64)])
        .unwrap();
    let txq = MockSplitQueue::create(&mem, GuestAddress(TXQ), QSIZE);
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0), QSIZE);
    let fds = rings(&mut fe, &mem, &txq, &rxq);
    send_frame(&mem, &txq, &fds[1], &mut proxy, b"after the lies", 0);

    drop(fe);
    let end = d.finish();
    assert!(end.status.success(), "{}", end.stderr);
    assert_eq!(end.summary["end"], "disconnected");
    assert_eq!(end.summary["tx_frames"], 1);
    assert_eq!(end.summary["handshake"]["mem_regions"], 1);
    for needle in [
        "1048576 bytes at fd offset 0x0 go past the end of its file (65536 bytes)",
        "70368744177664 bytes at fd offset 0x0 go past the end of its file (1048576 bytes)",
        // The vhost crate refuses the wrapping one itself.
        "refused: invalid message",
    ] {
        assert!(end.stderr.contains(needle), "{needle}: {}", end.stderr);
    }
}

#[test]
fn a_memfd_truncated_while_running_does_not_kill_the_daemon() {
    // No MFD_ALLOW_SEALING: the daemon cannot seal it, the SIGBUS guard must hold.
    let dir = Dir::new("mem-shrink");
    let d = start(&dir.0, &[]);
    let mut fe = Frontend::from_stream(d.connect(), 2);
    negotiate(&mut fe);
    let file = memfd(MEM as u64, 0);
    let mem = map(&file);
    fe.set_mem_table(&[region(&mem, &file, MEM as u64)])
        .unwrap();
    let txq = MockSplitQueue::create(&mem, GuestAddress(TXQ), QSIZE);
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0), QSIZE);
    let fds = rings(&mut fe, &mem, &txq, &rxq);
    fe.get_features().unwrap();

    // The rings are live and empty. Truncated, every page of them faults; the kick makes
    // the worker read the avail index. (With frames already through the rings, the zero
    // pages read as an avail index that went backwards: see
    // sigterm_stops_a_daemon_whose_tx_avail_index_went_backwards.)
    // From here on our own mapping is past EOF too: the test touches it no more.
    file.set_len(0).unwrap();
    fds[1].write(1).unwrap();
    fds[0].write(1).unwrap();
    thread::sleep(Duration::from_millis(500));
    // Still answering.
    fe.get_features().unwrap();
    drop(fe);
    let end = d.finish();
    ended_after_a_memory_fault(&end);
    trace_flushed(&dir);
}

#[test]
fn a_sealable_memfd_is_sealed_against_shrinking() {
    let dir = Dir::new("mem-seal");
    let d = start(&dir.0, &[]);
    let mut fe = Frontend::from_stream(d.connect(), 2);
    negotiate(&mut fe);
    let file = memfd(MEM as u64, libc::MFD_ALLOW_SEALING);
    let mem = map(&file);
    fe.set_mem_table(&[region(&mem, &file, MEM as u64)])
        .unwrap();
    fe.get_features().unwrap();
    // SAFETY: fcntl on our own fd.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    assert_ne!(seals & libc::F_SEAL_SHRINK, 0, "seals {seals:#x}");
    let err = file.set_len(0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    drop(fe);
    let end = d.finish();
    assert!(end.status.success(), "{}", end.stderr);
}

// ---- a guest driver that writes nonsense into its rings (issue 12, item 3) ----

const RXQ: u64 = 0;
const RX_BUF: u64 = 0x4_0000;
const RX_BUF_LEN: u32 = 2048;

/// One running session: the daemon, the proxy's end, our front end and mapping of guest
/// memory, the rings' eventfds (kick RX, kick TX, call RX, call TX).
struct Session {
    d: daemon_support::Daemon,
    proxy: UnixStream,
    fe: Frontend,
    file: File,
    mem: GuestMemoryMmap,
    fds: Vec<EventFd>,
}

fn session(dir: &Dir) -> Session {
    session_acking(dir, !0)
}

/// [`session`], acking only the offered features in `mask`.
fn session_acking(dir: &Dir, mask: u64) -> Session {
    let d = start(&dir.0, &[]);
    let (proxy, _) = d.proxy.accept().unwrap();
    let mut fe = Frontend::from_stream(d.connect(), 2);
    negotiate_acking(&mut fe, mask);
    // No MFD_ALLOW_SEALING: the daemon cannot seal it, so the test may shrink it later.
    let file = memfd(MEM as u64, 0);
    let mem = map(&file);
    fe.set_mem_table(&[region(&mem, &file, MEM as u64)])
        .unwrap();
    let fds = {
        let txq = MockSplitQueue::create(&mem, GuestAddress(TXQ), QSIZE);
        let rxq = MockSplitQueue::create(&mem, GuestAddress(RXQ), QSIZE);
        rings(&mut fe, &mem, &txq, &rxq)
    };
    Session {
        d,
        proxy,
        fe,
        file,
        mem,
        fds,
    }
}

/// Publishes `head` as the next avail entry of the ring at `q`, whatever it is, as a
/// buggy driver would (the mock queue only publishes descriptors it wrote).
fn publish_raw(mem: &GuestMemoryMmap, q: &MockSplitQueue<'_, GuestMemoryMmap>, head: u16) {
    let idx_at = q.avail_addr().unchecked_add(2);
    let idx: u16 = mem.read_obj(idx_at).unwrap();
    let slot = q.avail_addr().unchecked_add(4 + 2 * u64::from(idx % QSIZE));
    mem.write_obj(head, slot).unwrap();
    mem.write_obj(idx.wrapping_add(1), idx_at).unwrap();
}

fn set_avail_idx(mem: &GuestMemoryMmap, q: &MockSplitQueue<'_, GuestMemoryMmap>, idx: u16) {
    mem.write_obj(idx, q.avail_addr().unchecked_add(2)).unwrap();
}

/// Waits (bounded) until the device has put `n` entries in the used ring at `q`; returns
/// the last one (id, len).
fn wait_used(mem: &GuestMemoryMmap, q: &MockSplitQueue<'_, GuestMemoryMmap>, n: u16) -> (u32, u32) {
    let t0 = std::time::Instant::now();
    loop {
        let idx: u16 = mem.read_obj(q.used_addr().unchecked_add(2)).unwrap();
        if idx >= n {
            let at = q
                .used_addr()
                .unchecked_add(4 + 8 * u64::from((n - 1) % QSIZE));
            return (
                mem.read_obj(at).unwrap(),
                mem.read_obj(at.unchecked_add(4)).unwrap(),
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "used index {idx} after 10 s, waiting for {n}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts the summary counted exactly `n` rejected chains, all as guest driver errors.
/// The daemon ended cleanly, its worker alive to the end, having counted exactly these
/// rejected chains and guest driver errors.
/// The daemon took a SIGBUS on guest memory that shrank, said so, stopped the data path
/// and still ended cleanly on the front end's disconnect.
fn ended_after_a_memory_fault(end: &daemon_support::Finished) {
    assert!(end.status.success(), "{}: {}", end.status, end.stderr);
    assert_eq!(end.summary["end"], "disconnected");
    assert!(
        end.summary["handshake"]["memory_faults"].as_u64().unwrap() >= 1,
        "{}\n{}",
        end.summary,
        end.stderr
    );
    assert!(end.stderr.contains("guest memory shrank"), "{}", end.stderr);
}

fn ended_with_counted_guest_errors(
    end: &daemon_support::Finished,
    rejected: u64,
    driver_errors: u64,
) {
    assert!(end.status.success(), "{}", end.stderr);
    assert!(
        !end.stderr.contains("device worker failed"),
        "{}",
        end.stderr
    );
    assert_eq!(
        (
            end.summary["rejected_chains"].as_u64(),
            end.summary["drops"]["guest_driver_error"].as_u64()
        ),
        (Some(rejected), Some(driver_errors)),
        "{}\n{}",
        end.summary,
        end.stderr
    );
}

#[test]
fn a_tx_head_past_the_ring_is_counted_and_the_next_frame_goes_out() {
    let dir = Dir::new("tx-head");
    let mut s = session(&dir);
    let txq = MockSplitQueue::create(&s.mem, GuestAddress(TXQ), QSIZE);
    publish_raw(&s.mem, &txq, 999);
    s.fds[1].write(1).unwrap();
    // Descriptor 1, avail entry 1: the proxy gets this frame and nothing before it.
    send_frame(&s.mem, &txq, &s.fds[1], &mut s.proxy, b"after head 999", 1);
    // And again: the worker is still serving.
    publish_raw(&s.mem, &txq, 999);
    send_frame(&s.mem, &txq, &s.fds[1], &mut s.proxy, b"after another", 2);
    // 999 is no descriptor and cannot be returned; the good chains are.
    assert_eq!(wait_used(&s.mem, &txq, 2).0, 2);
    drop(s.fe);
    let end = s.d.finish();
    assert_eq!(end.summary["end"], "disconnected");
    assert_eq!(end.summary["tx_frames"], 2);
    ended_with_counted_guest_errors(&end, 2, 2);
}

#[test]
fn an_rx_head_past_the_ring_is_counted_and_the_next_buffer_gets_the_frame() {
    let dir = Dir::new("rx-head");
    let mut s = session(&dir);
    let rxq = MockSplitQueue::create(&s.mem, GuestAddress(RXQ), QSIZE);
    // Twice: after the first rejection the worker must still be there for the second frame.
    for round in 0..2u16 {
        publish_raw(&s.mem, &rxq, 999);
        let buf = RX_BUF + u64::from(round) * 0x1000;
        rxq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(
                buf,
                RX_BUF_LEN,
                virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16,
                0,
            ))],
            round,
        )
        .unwrap();
        s.fds[0].write(1).unwrap();
        let payload = format!("from the proxy, past head 999, round {round}");
        let mut msg = (payload.len() as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(payload.as_bytes());
        s.proxy.write_all(&msg).unwrap();
        let (id, len) = wait_used(&s.mem, &rxq, round + 1);
        assert_eq!(
            (id, len),
            (u32::from(round), (NET_HDR_LEN + payload.len()) as u32)
        );
        let mut got = vec![0u8; payload.len()];
        s.mem
            .read_slice(&mut got, GuestAddress(buf + NET_HDR_LEN as u64))
            .unwrap();
        assert_eq!(got, payload.as_bytes());
    }
    drop(s.fe);
    let end = s.d.finish();
    assert_eq!(end.summary["rx_frames"], 2);
    ended_with_counted_guest_errors(&end, 2, 2);
}

#[test]
fn sigterm_stops_a_daemon_whose_tx_avail_index_went_backwards() {
    let dir = Dir::new("avail-back");
    let mut s = session(&dir);
    let txq = MockSplitQueue::create(&s.mem, GuestAddress(TXQ), QSIZE);
    send_frame(&s.mem, &txq, &s.fds[1], &mut s.proxy, b"one", 0);
    send_frame(&s.mem, &txq, &s.fds[1], &mut s.proxy, b"two", 1);
    // The device has taken 2; the driver now says 0: 65534 entries ahead.
    set_avail_idx(&s.mem, &txq, 0);
    s.fds[1].write(1).unwrap();
    // No used entry or interrupt tells when the worker has seen the index; its log line does.
    assert!(
        s.d.wait_for_stderr(
            "avail index 0 is 65534 entries past",
            Duration::from_secs(10)
        ),
        "the worker never reported the backwards avail index"
    );
    s.d.signal(libc::SIGTERM);
    // Before the fix the worker looped between "more work" and "no chain" and never saw
    // the stop flag: this wait is what fails then.
    let end = s.d.finish_within(Duration::from_secs(5));
    assert_eq!(end.summary["end"], "stopped");
    assert_eq!(end.summary["tx_frames"], 2);
    // Not a chain: nothing to return, so not a rejected one.
    ended_with_counted_guest_errors(&end, 0, 1);
    assert!(
        end.stderr.contains("avail index 0 is 65534 entries past"),
        "{}",
        end.stderr
    );
    trace_flushed(&dir);
    drop(s.fe);
}

/// Cuts the memfd to half its size (the region still declares all of it) and kicks a TX
/// chain of one descriptor at 0x9_0000, past the new end, as descriptor 1.
fn shrink_and_send_past_the_end(s: &Session, txq: &MockSplitQueue<GuestMemoryMmap>) {
    s.file.set_len(MEM as u64 / 2).unwrap();
    txq.add_desc_chains(
        &[RawDescriptor::from(Descriptor::new(
            0x9_0000,
            (NET_HDR_LEN + 100) as u32,
            0,
            0,
        ))],
        1,
    )
    .unwrap();
    s.fds[1].write(1).unwrap();
}

#[test]
fn a_tx_buffer_past_the_end_of_a_shrunk_memfd_is_rejected_and_the_next_frame_goes_out() {
    let dir = Dir::new("tx-efault");
    // Without CSUM the daemon reads nothing of a TX chain past its descriptors (with it,
    // it reads the header itself: see the next test).
    let mut s = session_acking(&dir, !vnet_device::net::FEATURE_CSUM);
    let txq = MockSplitQueue::create(&s.mem, GuestAddress(TXQ), QSIZE);
    send_frame(&s.mem, &txq, &s.fds[1], &mut s.proxy, b"before", 0);
    // The region still declares 1 MiB; the file now ends at 512 KiB. The rings and the
    // good frames stay below; descriptor 1 points at 0x9_0000, past EOF (our own mapping
    // faults there too: the test never touches it).
    shrink_and_send_past_the_end(&s, &txq);
    send_frame(&s.mem, &txq, &s.fds[1], &mut s.proxy, b"after", 2);
    // The bad chain went back to the guest unused (length 0), in order.
    assert_eq!(wait_used(&s.mem, &txq, 2), (1, 0));
    drop(s.fe);
    let end = s.d.finish();
    assert_eq!(end.summary["end"], "disconnected");
    assert_eq!(end.summary["tx_frames"], 2);
    ended_with_counted_guest_errors(&end, 1, 1);
    // A one-descriptor frame is sent in place: the kernel's copy meets the hole and says
    // EFAULT; the daemon never touches those bytes itself, so no SIGBUS is taken.
    assert!(
        end.stderr
            .contains("the kernel could not read the TX buffers (EFAULT)"),
        "{}",
        end.stderr
    );
    assert_eq!(end.summary["handshake"]["memory_faults"], 0);
}

/// With CSUM negotiated the daemon reads each TX header itself (and a NEEDS_CSUM frame,
/// to sum it), so a TX buffer past the end of a shrunk memfd meets the SIGBUS guard, as
/// the device's other reads of guest memory do: zero pages, the data path stops, the
/// daemon lives on and says why. (QEMU's memfds take seals, and a sealed memfd cannot
/// shrink: see a_sealable_memfd_is_sealed_against_shrinking.)
#[test]
fn with_csum_a_tx_header_past_the_end_of_a_shrunk_memfd_meets_the_sigbus_guard() {
    let dir = Dir::new("tx-sigbus");
    let mut s = session(&dir);
    let txq = MockSplitQueue::create(&s.mem, GuestAddress(TXQ), QSIZE);
    send_frame(&s.mem, &txq, &s.fds[1], &mut s.proxy, b"before", 0);
    shrink_and_send_past_the_end(&s, &txq);
    thread::sleep(Duration::from_millis(500));
    // Still answering.
    s.fe.get_features().unwrap();
    drop(s.fe);
    let end = s.d.finish();
    ended_after_a_memory_fault(&end);
}
