//! The device against real socketpairs: a proxy that stops reading, stream sockets that
//! take part of a frame, peers that vanish. Stepped tests drive `NetDevice` directly;
//! threaded tests run the real worker loop (epoll, timer, kicks).

mod common;

use std::io::{ErrorKind, Read};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use common::{frame, seq_of, tx_segs, wait_until, DriverQueue, Seg};
use virtio_queue::QueueT;
use vnet_device::backend::{BackendOptions, FaultConfig, UnixGram, UnixStreamBackend};
use vnet_device::device::{NetDevice, TxPass};
use vnet_device::metrics::Metrics;
use vnet_device::net::{DEVICE_FEATURES, FEATURE_EVENT_IDX, MAX_FRAME};
use vnet_device::notify::Notifier;
use vnet_device::retry_policy::RetryPolicy;
use vnet_device::retry_timer::RetryTimer;
use vnet_device::worker::{ExitReason, WorkerOptions};

struct Stepped {
    mem: vm_memory::GuestMemoryMmap,
    tx: DriverQueue,
    dev: NetDevice,
    metrics: Arc<Metrics>,
    tx_call: Notifier,
}

fn stepped(backend: Box<dyn vnet_device::backend::Backend>, features: u64) -> Stepped {
    stepped_with_faults(backend, features, FaultConfig::default())
}

fn stepped_with_faults(
    backend: Box<dyn vnet_device::backend::Backend>,
    features: u64,
    faults: FaultConfig,
) -> Stepped {
    let mem = common::memory();
    let (rx, tx) = (DriverQueue::new(0, 256), DriverQueue::new(1, 256));
    let metrics = Arc::new(Metrics::new());
    let backend = faults.wrap(backend, metrics.clone());
    let tx_call = Notifier::new().unwrap();
    let dev = NetDevice::new(
        common::atomic(&mem),
        rx.queue(),
        tx.queue(),
        Notifier::new().unwrap(),
        tx_call.try_clone().unwrap(),
        features,
        backend,
        metrics.clone(),
    );
    Stepped {
        mem,
        tx,
        dev,
        metrics,
        tx_call,
    }
}

/// Sends junk from `sock` until the path to the peer is full; returns how many went in.
fn fill_gram(sock: &UnixDatagram) -> usize {
    sock.set_nonblocking(true).unwrap();
    let junk = [0xeeu8; 1000];
    let mut n = 0;
    loop {
        match sock.send(&junk) {
            Ok(_) => n += 1,
            Err(e) if common::is_dgram_full(&e) => return n,
            Err(e) => panic!("filling: {e}"),
        }
    }
}

/// A device stepped by hand over a datagram socket whose proxy's queue is full; the
/// proxy's end (non-blocking), and how many junk datagrams fill its queue.
fn stepped_behind_full_gram(features: u64) -> (Stepped, UnixDatagram, usize) {
    let (a, peer) = common::gram_pair();
    peer.set_nonblocking(true).unwrap();
    let filler = a.try_clone().unwrap();
    let s = stepped(
        Box::new(UnixGram::from_socket(a, &BackendOptions::default()).unwrap()),
        features,
    );
    let junk = fill_gram(&filler);
    (s, peer, junk)
}

#[test]
fn gram_full_peer_defers_frame_keeps_descriptor_then_delivers_in_order() {
    let (mut s, peer, junk) = stepped_behind_full_gram(DEVICE_FEATURES);
    assert!(junk > 0);
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(i, 1514)).collect();
    for f in &frames {
        s.tx.add(&s.mem, &tx_segs(f, &[12, 700])).unwrap();
    }
    assert_eq!(s.dev.process_tx().unwrap(), TxPass::Blocked);
    assert!(s.dev.tx_deferred());
    assert_eq!(
        s.tx.used_idx(&s.mem),
        0,
        "the deferred frame's descriptor is not consumed"
    );
    assert_eq!(s.dev.process_tx().unwrap(), TxPass::Blocked);
    let m = s.metrics.snapshot();
    assert_eq!(
        (m.episodes, m.retries, m.resolved, m.open_episode),
        (1, 2, 0, true)
    );
    assert_eq!(m.tx_frames, 0);

    let got_junk = common::recv_all(&peer);
    assert_eq!(got_junk.len(), junk);
    assert_eq!(s.dev.process_tx().unwrap(), TxPass::Idle);
    assert_eq!(
        common::recv_all(&peer),
        frames,
        "every frame exactly once, in order"
    );
    assert_eq!(s.tx.take_used(&s.mem).len(), 5);
    let m = s.metrics.snapshot();
    assert_eq!(
        (
            m.episodes,
            m.retries,
            m.resolved,
            m.open_episode,
            m.tx_frames
        ),
        (1, 2, 1, false, 5)
    );
    assert!(s.tx_call.drain().unwrap() > 0);
}

#[test]
fn stream_partial_writes_resume_exactly() {
    let (a, mut peer) = UnixStream::pair().unwrap();
    let opts = BackendOptions {
        sndbuf: Some(16 * 1024),
        ..Default::default()
    };
    let mut s = stepped(
        Box::new(UnixStreamBackend::from_socket(a, &opts).unwrap()),
        DEVICE_FEATURES,
    );
    let frames: Vec<Vec<u8>> = (0..6).map(|i| frame(i, 65226)).collect();
    for f in &frames {
        s.tx.add(&s.mem, &tx_segs(f, &[12, 30000])).unwrap();
    }
    let mut wire = Vec::new();
    let mut buf = vec![0u8; 7001];
    let mut blocked = 0;
    peer.set_nonblocking(true).unwrap();
    loop {
        match s.dev.process_tx().unwrap() {
            TxPass::Idle => break,
            TxPass::Blocked => {
                blocked += 1;
                assert!(s.dev.tx_deferred());
                // Read an odd amount so the next write starts mid-frame.
                match peer.read(&mut buf) {
                    Ok(n) => wire.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            TxPass::More => {}
        }
        assert!(blocked < 1_000_000);
    }
    loop {
        match peer.read(&mut buf) {
            Ok(n) => wire.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    let got = common::split_stream(&wire);
    assert_eq!(got, frames);
    let m = s.metrics.snapshot();
    assert!(
        m.partial_writes > 0,
        "the small send buffer forces partial writes"
    );
    assert_eq!(
        (m.tx_frames, m.resolved, m.open_episode),
        (6, m.episodes, false)
    );
    assert_eq!(s.tx.take_used(&s.mem).len(), 6);
}

#[test]
fn event_idx_suppresses_and_then_sends_interrupts() {
    let (a, peer) = common::gram_pair();
    peer.set_nonblocking(true).unwrap();
    let mut s = stepped(
        Box::new(UnixGram::from_socket(a, &BackendOptions::default()).unwrap()),
        DEVICE_FEATURES | FEATURE_EVENT_IDX,
    );
    s.tx.set_used_event(&s.mem, 1000);
    for i in 0..3 {
        s.tx.add(&s.mem, &tx_segs(&frame(i, 100), &[])).unwrap();
    }
    s.dev.process_tx().unwrap();
    assert_eq!(s.tx.used_idx(&s.mem), 3);
    assert_eq!(
        s.tx_call.drain().unwrap(),
        0,
        "used_event far ahead: no interrupt"
    );
    assert_eq!(
        s.tx.avail_event(&s.mem),
        3,
        "device asks for a kick at the next chain"
    );
    s.tx.set_used_event(&s.mem, 3);
    for i in 3..5 {
        s.tx.add(&s.mem, &tx_segs(&frame(i, 100), &[])).unwrap();
    }
    s.dev.process_tx().unwrap();
    assert!(
        s.tx_call.drain().unwrap() > 0,
        "used index passed used_event"
    );
    assert_eq!(s.metrics.snapshot().guest_irqs, 1);
    assert_eq!(common::recv_all(&peer).len(), 5);
}

#[test]
fn injected_enobufs_make_episodes_with_counted_retries() {
    let (a, peer) = common::gram_pair();
    peer.set_nonblocking(true).unwrap();
    let mut s = stepped_with_faults(
        Box::new(UnixGram::from_socket(a, &BackendOptions::default()).unwrap()),
        DEVICE_FEATURES,
        FaultConfig {
            enobufs_every: 3,
            enobufs_burst: 2,
        },
    );
    let frames: Vec<Vec<u8>> = (0..9).map(|i| frame(i, 500)).collect();
    for f in &frames {
        s.tx.add(&s.mem, &tx_segs(f, &[])).unwrap();
    }
    let mut passes = 0;
    while s.dev.process_tx().unwrap() != TxPass::Idle {
        passes += 1;
    }
    assert_eq!(common::recv_all(&peer), frames);
    let m = s.metrics.snapshot();
    // Frames 3, 6 and 9 are hit, each failing twice before going out.
    let counts = (m.episodes, m.retries, m.resolved, m.injected_faults);
    assert_eq!(counts, (3, 6, 3, 6));
    assert_eq!(passes, 6);
}

// ---- threaded: the real event loop ----

/// Makes as many of `frames[next..]` available as free descriptors allow; kicks if any.
fn post(g: &mut common::Guest, frames: &[Vec<u8>], cuts: &[usize], next: &mut usize) {
    let mut added = false;
    while *next < frames.len() {
        if g.tx.add(&g.mem, &tx_segs(&frames[*next], cuts)).is_none() {
            break;
        }
        *next += 1;
        added = true;
    }
    if added {
        g.tx_kick.notify().unwrap();
    }
}

#[test]
fn worker_gram_backpressure_all_frames_once_in_order() {
    let (a, peer) = common::gram_pair();
    let filler = a.try_clone().unwrap();
    let be = UnixGram::from_socket(a, &BackendOptions::default()).unwrap();
    let junk = fill_gram(&filler);
    let (mut g, h) = common::start(
        Box::new(be),
        DEVICE_FEATURES | FEATURE_EVENT_IDX,
        WorkerOptions::default(),
        256,
    );
    let n = 200u32;
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| frame(i, 60 + (i as usize * 997) % 9000))
        .collect();
    let mut next = 0;
    post(&mut g, &frames, &[12, 4096], &mut next);
    wait_until("first episode", || g.metrics.snapshot().episodes >= 1);
    assert!(
        g.tx.used_idx(&g.mem) < next as u16,
        "the blocked frame is still outstanding"
    );
    // Now the proxy reads, slowly: everything must come out once, in order.
    peer.set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; MAX_FRAME];
    let mut skipped = 0;
    let d = common::Deadline::new();
    while got.len() < n as usize {
        d.check("all frames at the peer");
        g.tx.take_used(&g.mem);
        post(&mut g, &frames, &[12, 4096], &mut next);
        if let Ok(k) = peer.recv(&mut buf) {
            if skipped < junk {
                skipped += 1;
            } else {
                got.push(buf[..k].to_vec());
            }
        }
    }
    wait_until("all chains used", || g.tx.used_idx(&g.mem) == n as u16);
    assert_eq!(next, frames.len());
    assert_eq!(got.len(), frames.len());
    for (i, (a, b)) in got.iter().zip(&frames).enumerate() {
        assert_eq!(seq_of(a), i as u32);
        assert_eq!(a, b);
    }
    let m = h.metrics().snapshot();
    assert_eq!(m.tx_frames, u64::from(n));
    assert!(m.episodes >= 1);
    assert_eq!(m.resolved, m.episodes);
    assert!(!m.open_episode);
    // Linux's epoll wakes the writer; macOS may rely on its 50 µs timer instead.
    #[cfg(target_os = "linux")]
    assert!(m.write_events >= 1, "Linux epoll woke the writer");
    h.stop();
    let exit = h.join().unwrap();
    assert_eq!(exit.reason, ExitReason::Stopped);
}

#[test]
fn worker_stream_partial_writes_all_frames_once_in_order() {
    let (a, mut peer) = UnixStream::pair().unwrap();
    let opts = BackendOptions {
        sndbuf: Some(8192),
        ..Default::default()
    };
    let be = UnixStreamBackend::from_socket(a, &opts).unwrap();
    let (mut g, h) = common::start(Box::new(be), DEVICE_FEATURES, WorkerOptions::default(), 256);
    let n = 40u32;
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| frame(i, 65226 - (i as usize % 3) * 1000))
        .collect();
    let mut next = 0;
    post(&mut g, &frames, &[12, 20000], &mut next);
    let mut wire = Vec::new();
    let mut buf = vec![0u8; 3001];
    let expected: usize = frames.iter().map(|f| f.len() + 4).sum();
    let d = common::Deadline::new();
    while wire.len() < expected {
        d.check("stream bytes");
        g.tx.take_used(&g.mem);
        post(&mut g, &frames, &[12, 20000], &mut next);
        let k = peer.read(&mut buf).unwrap();
        assert!(k > 0);
        wire.extend_from_slice(&buf[..k]);
    }
    let mut pos = 0;
    for f in &frames {
        let len = u32::from_be_bytes(wire[pos..pos + 4].try_into().unwrap()) as usize;
        assert_eq!(&wire[pos + 4..pos + 4 + len], &f[..]);
        pos += 4 + len;
    }
    assert_eq!(pos, wire.len());
    wait_until("all chains used", || g.tx.used_idx(&g.mem) == n as u16);
    assert!(h.metrics().snapshot().partial_writes > 0);
    h.stop();
    h.join().unwrap();
    drop(g.tx.take_used(&g.mem));
}

#[test]
fn worker_stream_peer_closing_mid_frame_stops_with_peer_gone() {
    let (a, mut peer) = UnixStream::pair().unwrap();
    let be = UnixStreamBackend::from_socket(a, &BackendOptions::default()).unwrap();
    let (mut g, h) = common::start(Box::new(be), DEVICE_FEATURES, WorkerOptions::default(), 64);
    for _ in 0..4 {
        g.rx.add(&g.mem, &[Seg::write(65562)]).unwrap();
    }
    g.rx_kick.notify().unwrap();
    use std::io::Write;
    let f = frame(1, 100);
    peer.write_all(&100u32.to_be_bytes()).unwrap();
    peer.write_all(&f).unwrap();
    // Half a frame, then gone.
    peer.write_all(&1000u32.to_be_bytes()).unwrap();
    peer.write_all(&[1; 10]).unwrap();
    drop(peer);
    let exit = h.join().unwrap();
    assert_eq!(exit.reason, ExitReason::PeerGone);
    let m = g.metrics.snapshot();
    assert!(m.peer_gone);
    assert_eq!(
        m.rx_frames, 1,
        "the complete frame before the close was delivered"
    );
    let used = g.rx.take_used(&g.mem);
    assert_eq!(used.len(), 1);
    let mut asm = common::RxAssembler::default();
    asm.push(&g.mem, &used[0]);
    assert_eq!(asm.frames, vec![f]);
}

#[test]
fn worker_gram_peer_gone_while_frame_deferred() {
    let (a, peer) = common::gram_pair();
    let filler = a.try_clone().unwrap();
    let be = UnixGram::from_socket(a, &BackendOptions::default()).unwrap();
    fill_gram(&filler);
    drop(filler);
    let (mut g, h) = common::start(Box::new(be), DEVICE_FEATURES, WorkerOptions::default(), 64);
    g.tx.add(&g.mem, &tx_segs(&frame(0, 1000), &[])).unwrap();
    g.tx_kick.notify().unwrap();
    wait_until("episode", || g.metrics.snapshot().episodes == 1);
    drop(peer);
    // The next retry (here: a kick) finds the proxy gone.
    g.tx.add(&g.mem, &tx_segs(&frame(1, 1000), &[])).unwrap();
    g.tx_kick.notify().unwrap();
    let exit = h.join().unwrap();
    assert_eq!(exit.reason, ExitReason::PeerGone);
    let m = g.metrics.snapshot();
    assert!(m.peer_gone);
    assert_eq!(m.drops.peer_gone, 1);
    assert_eq!(m.tx_frames, 0);
}

#[test]
fn worker_lost_write_events_are_rescued_by_the_timer() {
    let (a, peer) = common::gram_pair();
    let filler = a.try_clone().unwrap();
    let be = UnixGram::from_socket(a, &BackendOptions::default()).unwrap();
    let junk = fill_gram(&filler);
    let wopts = WorkerOptions {
        lose_write_events: true,
        retry_timer: RetryTimer::After(Duration::from_micros(50)),
        ..Default::default()
    };
    let (mut g, h) = common::start(Box::new(be), DEVICE_FEATURES, wopts, 64);
    for i in 0..20 {
        g.tx.add(&g.mem, &tx_segs(&frame(i, 1514), &[])).unwrap();
    }
    g.tx_kick.notify().unwrap();
    wait_until("episode", || g.metrics.snapshot().episodes >= 1);
    let mut buf = vec![0u8; MAX_FRAME];
    peer.set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut skipped = 0;
    let d = common::Deadline::new();
    while got.len() < 20 {
        d.check("frames rescued by the timer");
        if let Ok(k) = peer.recv(&mut buf) {
            if skipped < junk {
                skipped += 1;
            } else {
                got.push(seq_of(&buf[..k]));
            }
        }
    }
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    let m = h.metrics().snapshot();
    assert!(m.timer_fired >= 1);
    h.stop();
    h.join().unwrap();
}

#[test]
fn worker_lost_write_events_without_timer_are_rescued_by_a_kick() {
    let (a, peer) = common::gram_pair();
    let filler = a.try_clone().unwrap();
    let be = UnixGram::from_socket(a, &BackendOptions::default()).unwrap();
    let junk = fill_gram(&filler);
    let wopts = WorkerOptions {
        lose_write_events: true,
        retry_timer: RetryTimer::Off,
        ..Default::default()
    };
    let (mut g, h) = common::start(Box::new(be), DEVICE_FEATURES, wopts, 64);
    g.tx.add(&g.mem, &tx_segs(&frame(0, 1514), &[])).unwrap();
    g.tx_kick.notify().unwrap();
    wait_until("episode", || g.metrics.snapshot().episodes == 1);
    for _ in 0..junk {
        let mut b = [0u8; 2000];
        peer.recv(&mut b).unwrap();
    }
    g.tx.add(&g.mem, &tx_segs(&frame(1, 1514), &[])).unwrap();
    g.tx_kick.notify().unwrap();
    let mut b = vec![0u8; MAX_FRAME];
    let k = peer.recv(&mut b).unwrap();
    assert_eq!(seq_of(&b[..k]), 0);
    let k = peer.recv(&mut b).unwrap();
    assert_eq!(seq_of(&b[..k]), 1);
    let m = h.metrics().snapshot();
    assert_eq!(m.timer_fired, 0, "timer disabled");
    assert!(m.guest_kicks >= 2);
    h.stop();
    h.join().unwrap();
}

#[test]
fn worker_rx_waits_for_guest_buffers_and_resumes_on_kick() {
    let (a, peer) = common::gram_pair();
    let be = UnixGram::from_socket(a, &BackendOptions::default()).unwrap();
    let (mut g, h) = common::start(
        Box::new(be),
        DEVICE_FEATURES | FEATURE_EVENT_IDX,
        WorkerOptions::default(),
        256,
    );
    let n = 300u32;
    let writer = std::thread::spawn(move || {
        for i in 0..n {
            let f = frame(i, 60 + (i as usize * 131) % 3000);
            loop {
                match peer.send(&f) {
                    Ok(_) => break,
                    // The device stopped reading (no guest buffers): wait like a proxy would.
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(200))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        peer
    });
    // No RX buffers yet: the first frame must wait, not be lost.
    wait_until("device reads a frame", || {
        g.metrics.snapshot().rx_frames >= 1
    });
    let mut asm = common::RxAssembler::default();
    let d = common::Deadline::new();
    while asm.frames.len() < n as usize {
        d.check("all RX frames");
        let mut posted = false;
        while g.rx.free_descs() > 0 && g.rx.outstanding() < 8 {
            g.rx.add(&g.mem, &[Seg::write(4096)]).unwrap();
            posted = true;
        }
        if posted {
            g.rx_kick.notify().unwrap();
        }
        g.rx_call.wait_timeout(Duration::from_millis(5)).unwrap();
        for u in g.rx.take_used(&g.mem) {
            asm.push(&g.mem, &u);
        }
    }
    let _peer = writer.join().unwrap();
    for (i, f) in asm.frames.iter().enumerate() {
        assert_eq!(f, &frame(i as u32, 60 + (i * 131) % 3000));
    }
    let m = h.metrics().snapshot();
    assert_eq!((m.rx_frames, m.drops.total), (u64::from(n), 0));
    assert!(m.rx_no_buffers >= 1);
    h.stop();
    h.join().unwrap();
}

#[test]
fn deferred_frame_asks_for_a_kick_on_the_next_chain() {
    let (mut s, _peer, _) = stepped_behind_full_gram(DEVICE_FEATURES | FEATURE_EVENT_IDX);
    s.tx.add(&s.mem, &tx_segs(&frame(0, 1000), &[])).unwrap();
    assert_eq!(s.dev.process_tx().unwrap(), TxPass::Blocked);
    // The guest publishes chain #1 next: avail_event 1 makes that publication kick, and
    // the kick retries the deferred frame.
    assert_eq!(s.tx.avail_event(&s.mem), 1);
}

/// A batch refused at its first frame keeps the chains behind it popped and parsed for the
/// next batch (they are not given back to the ring to be parsed again), yet the guest is
/// asked for kicks exactly as if they had been: avail_event stays just past the deferred
/// frame. Once the proxy reads, all of them go out once, in ring order.
#[test]
fn chains_behind_a_deferred_frame_stay_popped_and_go_out_in_order() {
    let (mut s, peer, junk) = stepped_behind_full_gram(DEVICE_FEATURES | FEATURE_EVENT_IDX);
    for i in 0..4 {
        s.tx.add(&s.mem, &tx_segs(&frame(i, 200 + 10 * i as usize), &[]))
            .unwrap();
    }
    assert_eq!(s.dev.process_tx().unwrap(), TxPass::Blocked);
    assert_eq!(s.dev.queues().1.next_avail(), 4, "all four stay popped");
    assert_eq!(s.tx.used_idx(&s.mem), 0);
    assert_eq!(
        s.tx.avail_event(&s.mem),
        1,
        "a kick is asked for as if chains 1..4 were still in the ring"
    );
    assert_eq!(s.dev.tx_deferred_len(), Some(200));
    assert_eq!(common::recv_all(&peer).len(), junk);
    assert_eq!(s.dev.process_tx().unwrap(), TxPass::Idle);
    let got = common::recv_all(&peer);
    let want: Vec<_> = (0..4).map(|i| frame(i, 200 + 10 * i as usize)).collect();
    assert_eq!(got, want);
    assert_eq!(s.tx.used_idx(&s.mem), 4);
    let m = s.metrics.snapshot();
    assert_eq!((m.tx_frames, m.episodes, m.resolved), (4, 1, 1));
}

/// The proxy dies while chains wait popped behind the deferred frame: the deferred frame
/// is the one drop counted, and the chains never tried go back to the ring as the guest
/// made them available (the worker's poller can report the hang-up before any send fails).
#[test]
fn a_dead_proxy_counts_the_deferred_frame_and_gives_the_rest_back() {
    let (mut s, peer, _) = stepped_behind_full_gram(DEVICE_FEATURES | FEATURE_EVENT_IDX);
    for i in 0..3 {
        s.tx.add(&s.mem, &tx_segs(&frame(i, 300), &[])).unwrap();
    }
    assert_eq!(s.dev.process_tx().unwrap(), TxPass::Blocked);
    assert_eq!(s.dev.queues().1.next_avail(), 3);
    drop(peer);
    s.dev.peer_gone("hang-up reported by the poller");
    let m = s.metrics.snapshot();
    assert!(m.peer_gone);
    assert_eq!((m.drops.peer_gone, m.tx_frames), (1, 0));
    assert_eq!(
        s.dev.queues().1.next_avail(),
        1,
        "chains 1 and 2 back in the ring"
    );
    assert_eq!(s.dev.tx_deferred_len(), None);
}

#[test]
fn worker_sleeps_while_a_frame_is_deferred_without_timer() {
    let (a, _peer) = common::gram_pair();
    let filler = a.try_clone().unwrap();
    let be = UnixGram::from_socket(a, &BackendOptions::default()).unwrap();
    fill_gram(&filler);
    let opts = WorkerOptions {
        retry_timer: RetryTimer::Off,
        ..Default::default()
    };
    let (mut g, h) = common::start(Box::new(be), DEVICE_FEATURES, opts, 64);
    g.tx.add(&g.mem, &tx_segs(&frame(0, 1514), &[])).unwrap();
    g.tx_kick.notify().unwrap();
    wait_until("episode", || g.metrics.snapshot().episodes == 1);
    let before = g.metrics.snapshot();
    std::thread::sleep(Duration::from_millis(100));
    let after = g.metrics.snapshot();
    // Nothing happens, so the loop must not turn: a busy loop would turn thousands of
    // times here. (A slow machine can only lower the count.)
    assert!(
        after.wakeups - before.wakeups <= 2,
        "{} wake-ups while idle",
        after.wakeups - before.wakeups
    );
    assert_eq!(after.retries, before.retries, "no retries without an event");
    h.stop();
    assert_eq!(h.join().unwrap().reason, ExitReason::Stopped);
}

#[test]
fn worker_bounded_policy_drops_after_its_retries_and_keeps_order() {
    let (a, peer) = common::gram_pair();
    let filler = a.try_clone().unwrap();
    let be = UnixGram::from_socket(a, &BackendOptions::default()).unwrap();
    let junk = fill_gram(&filler);
    let wopts = WorkerOptions {
        retry_policy: RetryPolicy::Bounded { retries: 2 },
        ..Default::default()
    };
    let (mut g, h) = common::start(Box::new(be), DEVICE_FEATURES, wopts, 64);
    for i in 0..5 {
        g.tx.add(&g.mem, &tx_segs(&frame(i, 1514), &[])).unwrap();
    }
    g.tx_kick.notify().unwrap();
    // Nobody reads: each frame fails its first send and 2 retries, then goes back to the
    // guest used, dropped.
    wait_until("five drops", || {
        g.metrics.snapshot().drops.retry_exhausted == 5
    });
    let m = g.metrics.snapshot();
    assert_eq!((m.episodes, m.resolved, m.retries), (5, 0, 15), "{m:?}");
    assert_eq!((m.tx_frames, m.drops.total), (0, 5));
    assert!(!m.open_episode);
    let used = g.tx.take_used(&g.mem);
    assert_eq!(used.len(), 5, "every dropped chain is returned");
    assert!(used.iter().all(|u| u.len == 0));
    // Room again: the next frame goes out, alone and whole.
    for _ in 0..junk {
        let mut b = [0u8; 2000];
        peer.recv(&mut b).unwrap();
    }
    g.tx.add(&g.mem, &tx_segs(&frame(5, 1514), &[])).unwrap();
    g.tx_kick.notify().unwrap();
    let mut b = vec![0u8; MAX_FRAME];
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let k = peer.recv(&mut b).unwrap();
    assert_eq!((seq_of(&b[..k]), k), (5, 1514));
    h.stop();
    h.join().unwrap();
    assert_eq!(g.metrics.snapshot().tx_frames, 1);
}

#[test]
fn worker_room_policy_never_drops_and_keeps_order() {
    let (a, peer) = common::gram_pair();
    let filler = a.try_clone().unwrap();
    let be = UnixGram::from_socket(a, &BackendOptions::default()).unwrap();
    let junk = fill_gram(&filler);
    let wopts = WorkerOptions {
        retry_policy: RetryPolicy::Room,
        ..Default::default()
    };
    let (mut g, h) = common::start(Box::new(be), DEVICE_FEATURES, wopts, 64);
    for i in 0..10 {
        g.tx.add(&g.mem, &tx_segs(&frame(i, 9000), &[])).unwrap();
    }
    g.tx_kick.notify().unwrap();
    wait_until("episode", || g.metrics.snapshot().episodes >= 1);
    // Kicks do not retry under `room`: only the safety-net timer and write events do.
    let mut b = vec![0u8; MAX_FRAME];
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut skipped = 0;
    while got.len() < 10 {
        let k = peer.recv(&mut b).unwrap();
        if skipped < junk {
            skipped += 1;
        } else {
            got.push(seq_of(&b[..k]));
        }
    }
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    h.stop();
    h.join().unwrap();
    let m = g.metrics.snapshot();
    assert_eq!(m.drops.total, 0);
    assert_eq!(m.resolved, m.episodes);
}
