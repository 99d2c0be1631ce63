//! The daemon's command line: flags, signal handling, the summary printed at exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use vnet_device::backend::{BackendOptions, BackendSpec, FaultConfig};
use vnet_device::metrics::Metrics;
use vnet_device::probes;
use vnet_device::recorder::Recorder;
use vnet_device::retry_policy::RetryPolicy;
use vnet_device::retry_timer::RetryTimer;
use vnet_device::worker::WorkerOptions;
use vnet_vhost::{DaemonRun, SessionEnd};

#[derive(Debug, Parser)]
#[command(
    name = "vnet-vhost",
    version,
    // `--request-timeout -1` is a bad value for that flag, not an unknown flag `-1`.
    allow_negative_numbers = true,
    about = "vhost-user virtio-net daemon with USDT probes"
)]
struct Args {
    /// The vhost-user socket to create (mode 0600) and wait on for QEMU.
    #[arg(long)]
    socket: PathBuf,
    /// The proxy: unixstream:/path (passt, socket_vmnet) or unixgram:/path (gvproxy, vmnet-helper).
    #[arg(long)]
    proxy: BackendSpec,
    /// Send the vfkit `VFKT` greeting after connecting (unixgram only).
    #[arg(long)]
    vfkit: bool,
    /// macOS, unixgram: send and receive batches of datagrams with sendmsg_x/recvmsg_x
    /// (type-checked for macOS, never run). Accepted and ignored on Linux, which batches
    /// with sendmmsg/recvmmsg.
    #[arg(long)]
    macos_batch_syscalls: bool,
    /// One frame per send call, and one datagram per receive call (unixgram), as a VMM
    /// that never batches does (libkrun, most others): the proxy then sees that VMM's
    /// exact pattern of sends, ENOBUFS included. A stream read still takes what the socket
    /// holds. Default: batches (sendmmsg/recvmmsg, several frames per stream write).
    #[arg(long)]
    one_frame_per_call: bool,
    /// Offer neither checksum offload (VIRTIO_NET_F_CSUM, GUEST_CSUM), nor TSO, which
    /// needs CSUM, nor the receive coalescing that needs GUEST_CSUM: the guest sums and
    /// verifies its TCP/UDP checksums itself. Default: offered; the device completes the
    /// checksums of frames the guest marks and tells it received ones are valid.
    #[arg(long)]
    no_checksum_offload: bool,
    /// Offer no TX segmentation offload (VIRTIO_NET_F_HOST_TSO4, HOST_TSO6): the guest
    /// cuts its TCP segments to the MTU itself. Default: offered; the device cuts the
    /// guest's large TCP segments (up to 64 KiB) into MTU-sized frames.
    #[arg(long)]
    no_tso: bool,
    /// Offer no receive coalescing (VIRTIO_NET_F_GUEST_TSO4/6): every frame from the proxy
    /// reaches the guest as it came. Default: offered; consecutive TCP segments of one
    /// stream in a batch go to the guest as one GSO frame.
    #[arg(long)]
    no_rx_coalescing: bool,
    /// Record every probe firing into this CSV (the trace CSV of dtrace/README.md).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Retry timer delay in microseconds for a deferred frame (0 = no timer).
    #[arg(long)]
    retry_delay_us: Option<u64>,
    /// How a deferred frame is retried: timer (the default), bounded:N (drop after N failed
    /// retries), backoff[:CAP_US], room (retry when the free space fits the frame) or
    /// small-first (frames of other flows go ahead of a deferred one).
    #[arg(long, default_value = "timer")]
    retry_policy: String,
    /// Fault injection: make every Nth send fail with ENOBUFS.
    #[arg(long, default_value_t = 0)]
    inject_enobufs: u32,
    /// Seconds a front end may take to finish a message it started (or to read our reply)
    /// before the session is ended; idle time between messages is unlimited.
    #[arg(long, default_value = "5", value_parser = parse_request_timeout)]
    request_timeout: Duration,
    /// Log filter for stderr (tracing syntax: info, debug, vnet_device::worker=debug, ...).
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// A usage error: one line naming the flag, exit 2.
fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("vnet-vhost: {msg}");
    ExitCode::from(2)
}

pub fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        // --help and --version.
        Err(e) if !e.use_stderr() => e.exit(),
        // clap's first line names the flag; the usage lines after it add nothing.
        Err(e) => return usage(vnet_device::usage::one_line(&e.to_string())),
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log_level) {
        Ok(f) => f,
        Err(e) => return usage(format!("--log-level {:?}: {e}", args.log_level)),
    };
    if let Some(us) = args.retry_delay_us.filter(|&us| us > MAX_RETRY_DELAY_US) {
        return usage(format!(
            "--retry-delay-us {us}: must be at most {MAX_RETRY_DELAY_US} µs"
        ));
    }
    let retry_policy: RetryPolicy = match args.retry_policy.parse() {
        Ok(p) => p,
        Err(e) => return usage(format!("--retry-policy {e}")),
    };
    probes::register();
    vnet_vhost::install_signal_handlers();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .init();

    if let Some(t) = &args.trace {
        match Recorder::create(t) {
            Ok(r) => probes::install_recorder(r),
            Err(e) => {
                eprintln!("vnet-vhost: error: trace file {}: {e}", t.display());
                return ExitCode::from(2);
            }
        }
    }
    if args.macos_batch_syscalls && cfg!(not(target_os = "macos")) {
        eprintln!(
            "vnet-vhost: --macos-batch-syscalls ignored: it is for macOS (this OS batches with sendmmsg/recvmmsg)"
        );
    }
    let backend_opts = BackendOptions {
        vfkit: args.vfkit,
        macos_batch_syscalls: args.macos_batch_syscalls,
        one_frame_per_call: args.one_frame_per_call,
        ..Default::default()
    };
    let worker_opts = WorkerOptions {
        retry_timer: RetryTimer::from_micros_flag(args.retry_delay_us),
        retry_policy,
        inject_enobufs: FaultConfig {
            enobufs_every: args.inject_enobufs,
            enobufs_burst: 1,
        },
        ..Default::default()
    };
    let metrics = Arc::new(Metrics::default());
    let result = vnet_vhost::connect_handler(
        &args.proxy,
        &backend_opts,
        worker_opts,
        metrics.clone(),
    )
    .map(|h| {
        let h = if args.no_tso { h.without_tso() } else { h };
        let h = if args.no_checksum_offload {
            h.without_checksum_offload()
        } else {
            h
        };
        if args.no_rx_coalescing {
            h.without_rx_coalescing()
        } else {
            h
        }
    })
    .and_then(|h| {
        // Only after the proxy answered: a run that cannot start touches no path.
        let (listener, owned) = vnet_vhost::listen(&args.socket)?;
        tracing::info!(socket = %args.socket.display(), proxy = %args.proxy, "waiting for QEMU");
        let run = vnet_vhost::run(
            listener,
            &args.socket,
            Arc::new(Mutex::new(h)),
            &vnet_vhost::STOP,
            args.request_timeout,
        );
        if !owned.remove() {
            tracing::warn!(socket = %args.socket.display(), "socket path was replaced during the run; left alone");
        }
        run
    });
    let trace_rows = probes::take_recorder().map(|r| r.finish());
    let trace_rows = match trace_rows {
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            eprintln!("vnet-vhost: error: flushing the trace: {e}");
            None
        }
        None => None,
    };
    match result {
        Ok(run) => {
            print_summary(&args, &metrics, &run, trace_rows);
            if vnet_vhost::STOP.load(Ordering::SeqCst) {
                tracing::info!("stopped by signal");
            }
            // A front end that stalled mid-message failed the run, though we ended it cleanly.
            if run.end == SessionEnd::FrontEndStalled {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("vnet-vhost: error: {e}");
            if e.is_usage() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn print_summary(args: &Args, metrics: &Metrics, run: &DaemonRun, trace_rows: Option<u64>) {
    let v = vnet_vhost::summary_json(metrics, run, args.trace.as_deref(), trace_rows);
    if args.json {
        println!("{v}");
        return;
    }
    let s = metrics.snapshot();
    println!("vnet-vhost: session ended ({:?})", run.end);
    println!(
        "  tx {} frames {} bytes, rx {} frames {} bytes",
        s.tx_frames, s.tx_bytes, s.rx_frames, s.rx_bytes
    );
    println!(
        "  episodes {} retries {} resolved {} max_wait_ns {}, kicks {} irqs {}",
        s.episodes, s.retries, s.resolved, s.max_wait_ns, s.guest_kicks, s.guest_irqs
    );
    println!(
        "  checksum offload: tx frames completed by the device {}; tso: {} chains cut into {} segments",
        s.tx_csum_offload, s.tx_gso_chains, s.tx_gso_segments
    );
    println!(
        "  rx coalescing: gso frames to the guest {} made of {} proxy frames ({} header bytes left out)",
        s.rx_gso_frames, s.rx_coalesced_segments, s.rx_coalesced_hdr_bytes
    );
    println!(
        "  handshake: features 0x{:x}, early enables {}, worker starts {}",
        run.handshake.acked_features.unwrap_or(0),
        run.handshake.early_enables,
        run.handshake.worker_starts
    );
    if let (Some(t), Some(n)) = (&args.trace, trace_rows) {
        println!("  trace: {} ({n} rows)", t.display());
    }
}

/// Longest retry timer: far beyond any useful delay, and clear of timerfd overflow.
const MAX_RETRY_DELAY_US: u64 = 10_000_000;

/// Longest `--request-timeout`: a day is already far past any front end worth waiting for.
const MAX_REQUEST_TIMEOUT_SECS: f64 = 86_400.0;

fn parse_request_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= MAX_REQUEST_TIMEOUT_SECS) {
        return Err(format!(
            "{s}: must be more than 0 and at most {MAX_REQUEST_TIMEOUT_SECS} seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}
