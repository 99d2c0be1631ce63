//! vnet-sim: drive the device like a VM under iperf3-style load, no root, no VM.
//!
//! With no arguments: a 10 s default run, the trace recorded to target/vnet-sim/trace.csv,
//! the summary and the retry-count report printed. Exit status 0 when every integrity
//! counter is zero and nothing stalled, 1 when not, 2 on bad usage or setup errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use vnet_device::backend::{BackendSpec, FaultConfig};
use vnet_device::bufsize::check_dgram_rcvbuf;
use vnet_device::probes;
use vnet_device::recorder::Recorder;
use vnet_device::retry_timer::RetryTimer;
use vnet_sim::proxy::ProxyOptions;
use vnet_sim::real_proxy::NetConfig;
use vnet_sim::workload::{Direction, Limit, Workload};
use vnet_sim::{BuiltinKind, SimConfig, Summary};

#[derive(Parser, Debug)]
#[command(
    name = "vnet-sim",
    // `--duration -1` is a bad value for --duration, not an unknown flag `-1`.
    allow_negative_numbers = true,
    about = "Drive the virtio-net device like a VM under iperf3-style load and check every frame",
    after_help = "With no arguments: a 10 s run, trace in target/vnet-sim/trace.csv, summary and retry report."
)]
struct Cli {
    /// Run time in seconds (data senders stop, in-flight frames drain).
    #[arg(long, default_value_t = 10.0, conflicts_with = "frames")]
    duration: f64,
    /// Send this many data frames per direction instead of running for a time.
    #[arg(long)]
    frames: Option<u64>,
    /// Socket between the device and the built-in proxy.
    #[arg(long, default_value = "unixgram")]
    backend: BuiltinKind,
    /// A real proxy instead of the built-in one: unixgram:/path or unixstream:/path.
    /// The guest then sends ARP/IPv4/UDP to an echo socket on the host.
    #[arg(long)]
    proxy: Option<BackendSpec>,
    /// both, tx (guest to proxy) or rx (proxy to guest); ACKs still flow back.
    #[arg(long, default_value = "both")]
    direction: Direction,
    /// Guest data frame size (Ethernet bytes).
    #[arg(long, default_value_t = 65226)]
    tx_size: usize,
    /// ACK frame size; 0 = no ACKs.
    #[arg(long, default_value_t = 66)]
    ack_size: usize,
    /// One ACK per this many data frames received (TCP's delayed ACK).
    #[arg(long, default_value_t = 2)]
    ack_every: u64,
    /// Data frames a sender may have unacknowledged, like TCP's window; 0 = no limit.
    #[arg(long, default_value_t = 16)]
    send_window: u64,
    /// Proxy data frame size.
    #[arg(long, default_value_t = 65550)]
    rx_size: usize,
    /// Streams (sequence spaces) per direction, like iperf3 -P.
    #[arg(long, default_value_t = 8)]
    streams: u16,
    /// Cap each direction's data rate (Mbit/s of frame bytes).
    #[arg(long)]
    rate_mbit: Option<u64>,
    /// Built-in unixgram proxy on a socketpair instead of its own bound path (Linux then
    /// exempts it from net.unix.max_dgram_qlen: little backpressure).
    #[arg(long, conflicts_with = "proxy")]
    proxy_socketpair: bool,
    /// Built-in proxy: SO_RCVBUF of its socket (backpressure). A datagram proxy's must hold
    /// the largest frame: at least 65806 (65550 + 256 for the sender's address).
    #[arg(long)]
    proxy_rcvbuf: Option<usize>,
    /// Built-in proxy: sleep this long after every frame it reads.
    #[arg(long, default_value_t = 0)]
    proxy_read_delay_us: u64,
    /// Built-in proxy: stop reading for this long...
    #[arg(long, default_value_t = 0)]
    proxy_pause_ms: u64,
    /// ...every this many milliseconds.
    #[arg(long, default_value_t = 100)]
    proxy_pause_every_ms: u64,
    /// Inject ENOBUFS on every Nth send of the device (the macOS failure, on any OS).
    #[arg(long, default_value_t = 0)]
    inject_enobufs: u32,
    /// Consecutive injected failures per hit.
    #[arg(long, default_value_t = 1)]
    inject_enobufs_burst: u32,
    /// Model macOS's datagram admission on Linux: the device's send is refused (ENOBUFS)
    /// when the frame does not fit BYTES minus what the proxy has not read yet, even if
    /// the socket has some room (the 17996 bytes free for a 65226-byte frame).
    #[arg(long, value_name = "BYTES")]
    proxy_room: Option<usize>,
    /// Fault: the device ignores writable events while a frame is deferred.
    #[arg(long)]
    lose_write_events: bool,
    /// Disable the device's retry timer.
    #[arg(long, conflicts_with = "retry_delay_us")]
    no_timer: bool,
    /// Retry timer delay (default: the backend's own).
    #[arg(long)]
    retry_delay_us: Option<u64>,
    /// How the device retries a deferred frame: timer (PR 556, the default), bounded:N
    /// (drop after N failed retries), backoff[:CAP_US], room (retry when the free space
    /// fits the frame) or small-first (frames of other flows go ahead of a deferred one).
    #[arg(long, default_value = "timer")]
    retry_policy: String,
    /// SO_SNDBUF of the device's socket.
    #[arg(long)]
    sndbuf: Option<usize>,
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
    /// Report a stall (and fail) after this long without progress.
    #[arg(long, default_value_t = 1.0)]
    stall_timeout: f64,
    /// Record every probe firing to this CSV (the trace format `analyze` reads).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Write the worker's tracing spans as a Chrome/Perfetto trace.
    #[arg(long)]
    chrome: Option<PathBuf>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Print the retry-count report for the trace (records one if --trace is not given).
    #[arg(long)]
    report: bool,
    /// Log level on stderr (error, warn, info, debug, trace).
    #[arg(long, default_value = "warn")]
    log_level: String,
    /// Skip payload checksums (sequence numbers are still checked).
    #[arg(long)]
    no_checksum: bool,
    /// The guest negotiates the checksum offloads (VIRTIO_NET_F_CSUM, GUEST_CSUM): its
    /// IPv4/UDP frames leave their checksum to the device, the built-in proxy verifies
    /// each, and every RX header must say DATA_VALID.
    #[arg(long)]
    offload_csum: bool,
    /// Virtqueue size.
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
    /// Size of each mergeable RX buffer the guest posts.
    #[arg(long, default_value_t = 4096)]
    rx_buf_len: u32,
    /// Where each TX frame starts in its page-aligned guest buffer, the virtio header
    /// just before it (12 to 4096; 12 puts the frame 12 bytes off a cache line).
    #[arg(long, default_value_t = 64)]
    tx_frame_offset: u64,
    /// Real proxy: the guest's IPv4 address.
    #[arg(long, default_value = "10.0.2.15")]
    guest_ip: std::net::Ipv4Addr,
    /// Real proxy: the gateway address (the proxy maps it to the host).
    #[arg(long, default_value = "10.0.2.2")]
    gateway_ip: std::net::Ipv4Addr,
    /// Real proxy: address the UDP echo socket binds on the host.
    #[arg(long, default_value = "127.0.0.1")]
    echo_bind: std::net::Ipv4Addr,
    /// Real proxy: first guest UDP source port (stream s uses base + s); default: free
    /// host ports, since the proxy binds the same ports on the host.
    #[arg(long)]
    src_port_base: Option<u16>,
    /// Real proxy: at most this many datagrams awaiting their echo (0 = no limit).
    #[arg(long, default_value_t = 64)]
    window: u64,
    /// Real proxy: send the vfkit `VFKT` handshake (unixgram).
    #[arg(long)]
    vfkit: bool,
    /// No live progress line.
    #[arg(long)]
    no_progress: bool,
}

fn main() -> ExitCode {
    let no_args = std::env::args_os().len() == 1;
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version.
        Err(e) if !e.use_stderr() => e.exit(),
        // One line naming the flag, as for the checks in `config` (clap adds usage lines).
        Err(e) => {
            eprintln!("vnet-sim: {}", vnet_device::usage::one_line(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    probes::register();
    match real_main(cli, no_args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vnet-sim: {e}");
            ExitCode::from(2)
        }
    }
}

/// Where the no-argument run keeps its trace: `target/vnet-sim/trace.csv` beside the
/// binary's own target directory, so it lands in the workspace whatever the cwd.
fn default_trace() -> PathBuf {
    let target = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(Path::to_path_buf))
        .filter(|t| t.file_name().is_some_and(|n| n == "target"))
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("vnet-sim").join("trace.csv")
}

fn real_main(cli: Cli, no_args: bool) -> Result<bool, String> {
    // Every flag is checked before any file or directory is created.
    let filter = EnvFilter::try_new(&cli.log_level)
        .map_err(|e| format!("--log-level {:?}: {e}", cli.log_level))?;
    let cfg = config(&cli)?;
    let report = cli.report || no_args;
    let trace = match (&cli.trace, report) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => Some(default_trace()),
        (None, false) => None,
    };
    if let (Some(t), Some(c)) = (&trace, &cli.chrome) {
        if same_file(t, c) {
            return Err(format!(
                "--chrome {}: the same file as the trace; give each its own path",
                c.display()
            ));
        }
    }
    if let Some(path) = &trace {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    format!(
                        "--trace {}: creating {}: {e}",
                        path.display(),
                        dir.display()
                    )
                })?;
                // The default run's target/vnet-sim needs no mention.
                if cli.trace.is_some() {
                    eprintln!("vnet-sim: created directory {} for --trace", dir.display());
                }
            }
        }
        let rec = Recorder::create(path).map_err(|e| format!("--trace {}: {e}", path.display()))?;
        probes::install_recorder(rec);
    }
    // Opened here, not by tracing-chrome, which panics on a path it cannot create.
    let chrome_file = match &cli.chrome {
        Some(path) => Some(
            std::fs::File::create(path).map_err(|e| format!("--chrome {}: {e}", path.display()))?,
        ),
        None => None,
    };

    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let mut chrome_guard = None;
    let chrome = match chrome_file {
        Some(file) => {
            let (layer, guard) = tracing_chrome::ChromeLayerBuilder::new()
                .writer(file)
                .include_args(true)
                .build();
            chrome_guard = Some(guard);
            // Spans are at DEBUG/TRACE; the Perfetto view wants them all.
            Some(layer.with_filter(EnvFilter::new("trace")))
        }
        None => None,
    };
    tracing_subscriber::registry().with(fmt).with(chrome).init();

    let result = vnet_sim::run(&cfg);
    let rows = match probes::take_recorder() {
        Some(rec) => Some(
            rec.finish()
                .map_err(|e| format!("writing the trace: {e}"))?,
        ),
        None => None,
    };
    drop(chrome_guard);
    let summary = result.map_err(|e| e.to_string())?;

    let report_text = match (&trace, report) {
        (Some(path), true) => Some(render_report(path)),
        _ => None,
    };
    print_summary(&cli, &summary, trace.as_deref(), rows, report_text);
    Ok(!summary.failed())
}

/// Whether two paths name one file: the same path, or (when both exist) the same inode.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if a == b {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Upper bounds for the time flags: far beyond any useful run, and small enough that
/// `Duration` and `Instant` arithmetic cannot overflow.
const MAX_DURATION_SECS: f64 = 30.0 * 86_400.0;
const MAX_STALL_TIMEOUT_SECS: f64 = 3_600.0;
const MAX_RETRY_DELAY_US: u64 = 10_000_000;
const MAX_PROXY_READ_DELAY_US: u64 = 1_000_000;
const MAX_PROXY_PAUSE_MS: u64 = 60_000;

/// A positive number of seconds up to `max`, as a Duration.
fn secs(name: &str, v: f64, max: f64) -> Result<Duration, String> {
    if !(v.is_finite() && v > 0.0 && v <= max) {
        return Err(format!(
            "{name} {v}: must be more than 0 and at most {max} seconds"
        ));
    }
    Duration::try_from_secs_f64(v).map_err(|e| format!("{name} {v}: {e}"))
}

/// A count or size that must not be zero.
fn nonzero<T: PartialEq + Default + std::fmt::Display>(name: &str, v: T) -> Result<T, String> {
    if v == T::default() {
        return Err(format!("{name} 0: must be at least 1"));
    }
    Ok(v)
}

fn at_most(name: &str, v: u64, max: u64, unit: &str) -> Result<u64, String> {
    if v > max {
        return Err(format!("{name} {v}: must be at most {max} {unit}"));
    }
    Ok(v)
}

/// Whether the device's socket is a datagram one (built-in or real proxy).
fn device_socket_is_datagram(cli: &Cli) -> bool {
    match &cli.proxy {
        Some(spec) => matches!(spec, BackendSpec::UnixGram(_)),
        None => matches!(cli.backend, BuiltinKind::UnixGram),
    }
}

fn config(cli: &Cli) -> Result<SimConfig, String> {
    if let (Some(bytes), None, BuiltinKind::UnixGram) = (cli.proxy_rcvbuf, &cli.proxy, &cli.backend)
    {
        check_dgram_rcvbuf(bytes).map_err(|e| format!("--proxy-rcvbuf {e}"))?;
    }
    if cli.macos_batch_syscalls && cfg!(not(target_os = "macos")) {
        eprintln!(
            "vnet-sim: --macos-batch-syscalls ignored: it is for macOS (this OS batches with sendmmsg/recvmmsg)"
        );
    }
    let limit = match cli.frames {
        Some(0) => return Err("--frames 0: must be at least 1".into()),
        Some(n) => Limit::Frames(n),
        None => Limit::Duration(secs("--duration", cli.duration, MAX_DURATION_SECS)?),
    };
    if let Some(us) = cli.retry_delay_us {
        at_most("--retry-delay-us", us, MAX_RETRY_DELAY_US, "µs")?;
    }
    at_most(
        "--proxy-read-delay-us",
        cli.proxy_read_delay_us,
        MAX_PROXY_READ_DELAY_US,
        "µs",
    )?;
    at_most(
        "--proxy-pause-ms",
        cli.proxy_pause_ms,
        MAX_PROXY_PAUSE_MS,
        "ms",
    )?;
    nonzero("--proxy-pause-every-ms", cli.proxy_pause_every_ms)?;
    nonzero("--inject-enobufs-burst", cli.inject_enobufs_burst)?;
    if let Some(n) = cli.proxy_rcvbuf {
        nonzero("--proxy-rcvbuf", n)?;
    }
    if let Some(room) = cli.proxy_room {
        if !device_socket_is_datagram(cli) {
            // A stream takes part of a frame, so macOS's all-or-nothing datagram admission
            // has no meaning there.
            return Err(format!(
                "--proxy-room {room}: models datagram admission; the device's socket here is a stream"
            ));
        }
        let largest = cli.tx_size.max(cli.ack_size);
        if room < largest {
            return Err(format!(
                "--proxy-room {room}: smaller than the largest TX frame ({largest} bytes), \
                 which could never be sent"
            ));
        }
    }
    let mut cfg = SimConfig {
        workload: Workload {
            direction: cli.direction,
            tx_size: cli.tx_size,
            ack_size: cli.ack_size,
            ack_every: cli.ack_every,
            send_window: cli.send_window,
            rx_size: cli.rx_size,
            streams: cli.streams,
            rate_mbit: cli.rate_mbit,
            limit,
        },
        backend: cli.backend,
        proxy: cli.proxy.clone(),
        net: NetConfig {
            guest_ip: cli.guest_ip,
            gateway_ip: cli.gateway_ip,
            echo_bind: cli.echo_bind,
            src_port_base: cli.src_port_base.unwrap_or(0),
        },
        vfkit: cli.vfkit,
        proxy_socketpair: cli.proxy_socketpair,
        proxy_opts: ProxyOptions {
            rcvbuf: cli.proxy_rcvbuf,
            read_delay: Duration::from_micros(cli.proxy_read_delay_us),
            pause: Duration::from_millis(cli.proxy_pause_ms),
            pause_every: Duration::from_millis(cli.proxy_pause_every_ms),
            verify_crc: !cli.no_checksum,
        },
        fault: FaultConfig {
            enobufs_every: cli.inject_enobufs,
            enobufs_burst: cli.inject_enobufs_burst,
        },
        lose_write_events: cli.lose_write_events,
        proxy_room: cli.proxy_room,
        retry_timer: match (cli.no_timer, cli.retry_delay_us) {
            (true, _) => RetryTimer::Off,
            (false, Some(us)) => RetryTimer::After(Duration::from_micros(us)),
            (false, None) => RetryTimer::BackendDefault,
        },
        retry_policy: cli
            .retry_policy
            .parse()
            .map_err(|e| format!("--retry-policy {e}"))?,
        sndbuf: cli.sndbuf,
        macos_batch_syscalls: cli.macos_batch_syscalls,
        one_frame_per_call: cli.one_frame_per_call,
        stall_timeout: secs("--stall-timeout", cli.stall_timeout, MAX_STALL_TIMEOUT_SECS)?,
        queue_size: cli.queue_size,
        rx_buf_len: cli.rx_buf_len,
        tx_frame_offset: cli.tx_frame_offset,
        offload_csum: cli.offload_csum,
        window: cli.window,
        progress: !cli.no_progress,
        ..SimConfig::default()
    };
    if cli.proxy.is_some() {
        // Real networks: unless asked otherwise, MTU-sized datagrams at a rate a user-space
        // proxy and the host's UDP stack carry without dropping much.
        if cli.tx_size == 65226 {
            cfg.workload.tx_size = 1442;
        }
        if cli.rate_mbit.is_none() {
            cfg.workload.rate_mbit = Some(100);
        }
    }
    if let Some(n) = cli.sndbuf {
        // A datagram larger than the send buffer fails every time with EMSGSIZE (Linux
        // doubles the value it is given; macOS takes it as the largest datagram).
        let datagram = device_socket_is_datagram(cli);
        let frame = cfg.workload.tx_size.max(cfg.workload.ack_size);
        if n == 0 || (datagram && n < frame) {
            return Err(format!(
                "--sndbuf {n}: must be at least {} bytes{}",
                if datagram { frame } else { 1 },
                if datagram {
                    " (the largest guest frame) on a datagram socket, or every send fails with EMSGSIZE"
                } else {
                    ""
                }
            ));
        }
    }
    if cli.rx_buf_len < 64 {
        return Err(format!(
            "--rx-buf-len {}: must be at least 64",
            cli.rx_buf_len
        ));
    }
    Ok(cfg)
}

fn print_summary(
    cli: &Cli,
    s: &Summary,
    trace: Option<&Path>,
    rows: Option<u64>,
    report: Option<Result<String, String>>,
) {
    if cli.json {
        println!("{}", s.to_json());
        if let Some(r) = report {
            match r {
                Ok(text) => eprintln!("{text}"),
                Err(e) => eprintln!("report: {e}"),
            }
        }
        return;
    }
    print!("{}", s.to_text());
    if let (Some(path), Some(rows)) = (trace, rows) {
        println!("  trace: {} ({rows} rows)", path.display());
    }
    if let Some(r) = report {
        println!();
        match r {
            Ok(text) => println!("{text}"),
            Err(e) => println!("report: {e}"),
        }
    }
}

/// The retry-count report for a recorded trace, through the analyze library.
fn render_report(path: &Path) -> Result<String, String> {
    analyze::render_report(&[path.to_path_buf()], &analyze::ReportOptions::default())
        .map_err(|e| e.to_string())
}
