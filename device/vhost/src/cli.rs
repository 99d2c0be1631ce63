//! The daemon's command line: flags, signal handling, the summary printed at exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use clap::Parser;
use vnet_device::backend::{BackendOptions, BackendSpec, FaultConfig};
use vnet_device::metrics::Metrics;
use vnet_device::probes;
use vnet_device::recorder::Recorder;
use vnet_device::retry_policy::RetryPolicy;
use vnet_device::retry_timer::RetryTimer;
use vnet_device::worker::WorkerOptions;
use vnet_vhost::DaemonRun;

#[derive(Debug, Parser)]
#[command(
    name = "vnet-vhost",
    version,
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
    /// Record every probe firing into this CSV (the trace format of design.md).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Retry timer delay in microseconds for a deferred frame (0 = no timer).
    #[arg(long)]
    retry_delay_us: Option<u64>,
    /// How a deferred frame is retried: timer (the default), bounded:N (drop after N failed
    /// retries), backoff[:CAP_US] or room (retry when the free space fits the frame).
    #[arg(long, default_value = "timer")]
    retry_policy: String,
    /// Fault injection: make every Nth send fail with ENOBUFS.
    #[arg(long, default_value_t = 0)]
    inject_enobufs: u32,
    /// Log filter for stderr (tracing syntax: info, debug, vnet_device::worker=debug, ...).
    #[arg(long, default_value = "info")]
    log_level: String,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let retry_policy: RetryPolicy = match args.retry_policy.parse() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vnet-vhost: --retry-policy {e}");
            return ExitCode::from(2);
        }
    };
    probes::register();
    vnet_vhost::install_signal_handlers();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log_level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
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
    let backend_opts = BackendOptions {
        vfkit: args.vfkit,
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
    .and_then(|h| {
        let listener = vnet_vhost::listen(&args.socket)?;
        tracing::info!(socket = %args.socket.display(), proxy = %args.proxy, "waiting for QEMU");
        vnet_vhost::run(
            listener,
            &args.socket,
            Arc::new(Mutex::new(h)),
            &vnet_vhost::STOP,
        )
    });
    let _ = std::fs::remove_file(&args.socket);
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
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vnet-vhost: error: {e}");
            ExitCode::FAILURE
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
        "  handshake: features 0x{:x}, early enables {}, worker starts {}",
        run.handshake.acked_features.unwrap_or(0),
        run.handshake.early_enables,
        run.handshake.worker_starts
    );
    if let (Some(t), Some(n)) = (&args.trace, trace_rows) {
        println!("  trace: {} ({n} rows)", t.display());
    }
}
