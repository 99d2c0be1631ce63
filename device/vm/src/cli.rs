//! `vnet-vm` command line and the order of runs.

use std::path::{Path, PathBuf};

use clap::Parser;

use super::capture::{CaptureResult, SyscallTracer};
use super::image::{self, ImageOptions};
use super::rounds;
use super::runner::{self, Accel, Machine, NetMode, RunConfig, RunResult, Tracer};
use super::summary::Summary;

/// Where `cargo` puts build output for this workspace; the guest cache lives beside it.
fn default_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

fn repo_root() -> PathBuf {
    // This crate sits at device/vm: the workspace root is two levels up.
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TracerKind {
    /// The daemon under probes/enobufs.bt (its USDT probes); trace.csv in the output directory.
    Bpftrace,
    /// passt and its peer (QEMU, or the daemon) by their system calls (probes/capture.sh
    /// --syscalls: vnet-systrace, or probes/syscalls.bt), each then read with `analyze report`.
    Syscalls,
}

/// Boot a Linux guest whose virtio-net is served by vnet-vhost, run iperf3 through passt,
/// and print throughput, retransmits and the daemon's counters.
#[derive(Debug, Parser)]
#[command(name = "vnet-vm", version)]
pub struct Args {
    /// Guest MTU (passt accepts up to 65520).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(68..=65520))]
    pub mtu: u32,
    /// Seconds per iperf3 test.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub seconds: u32,
    /// Parallel streams of the bidirectional test.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=128))]
    pub streams: u32,
    /// The guest waits this long after reporting before it powers off, standing in for a
    /// guest kernel that hangs on its way down (tests the runner's shutdown grace).
    #[arg(long, default_value_t = 0, hide_short_help = true)]
    pub guest_linger: u32,
    /// iperf3 tests the guest runs, in order: fwd (guest to host), rev, bidir.
    #[arg(long, value_delimiter = ',', default_value = "fwd,rev,bidir")]
    pub tests: Vec<Test>,
    /// Also run the guest on QEMU's own virtio-net (-netdev stream to passt) and print ratios.
    #[arg(long)]
    pub baseline: bool,
    /// Only the QEMU virtio-net run (no daemon).
    #[arg(long, conflicts_with = "baseline")]
    pub baseline_only: bool,
    /// bpftrace: the daemon under probes/enobufs.bt (trace.csv in the output directory);
    /// syscalls: passt and QEMU (baseline) or the daemon captured by vnet-systrace (or
    /// probes/syscalls.bt where it is not built) (passt.csv, qemu.csv / daemon.csv per run)
    /// and each printed by `analyze report`. Both need root; bpftrace needs bpftrace.
    #[arg(long, value_enum)]
    pub tracer: Option<TracerKind>,
    /// Leave the per-frame rows (tx_frame/rx_frame) out of the capture.
    #[arg(long)]
    pub no_frame_probes: bool,
    /// QEMU machine type and the matching virtio-net transport.
    #[arg(long, value_enum, default_value_t = Machine::Pc)]
    pub machine: Machine,
    /// auto: KVM when a probe boot under KVM succeeds (not on these machines), else TCG.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 512)]
    pub mem_mb: u32,
    /// Guest CPU model under TCG (KVM uses `host`). The default leaves out ERMS and FSRM:
    /// with them the guest's kernel and libc copy with `rep movsb`, which TCG runs one
    /// byte per loop turn, and those copies, not the network device, set the throughput
    /// of both devices (README, "The guest's CPU model under TCG"). `max` is the model
    /// used before 3 Dec 2026.
    #[arg(long, default_value = runner::DEFAULT_TCG_CPU, value_parser = parse_cpu_model)]
    pub tcg_cpu: String,
    /// Boot each device this many times and end with each figure's median and range
    /// (one TCG run moves by 30% or more from the next); round K's logs and summary go
    /// to OUT/round-K.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: u32,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Logs, consoles, daemon output and trace go here [default: target/vnet-vm/out].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Guest image cache [default: target/vnet-vm].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Debian kernel package (a metapackage is followed to its image).
    #[arg(long, default_value = "linux-image-cloud-amd64")]
    pub kernel_package: String,
    /// A kernel package file to boot instead (e.g. another Debian release's
    /// linux-image-*-cloud-amd64 .deb); --kernel-package is then ignored.
    #[arg(long)]
    pub kernel_deb: Option<PathBuf>,
    /// The vhost-user daemon [default: vnet-vhost beside this binary].
    #[arg(long)]
    pub daemon: Option<PathBuf>,
    /// Extra argument for the daemon (repeatable), e.g. --daemon-arg=--trace=/tmp/t.csv
    #[arg(long, allow_hyphen_values = true)]
    pub daemon_arg: Vec<String>,
    /// The bpftrace script [default: probes/enobufs.bt of this repository].
    #[arg(long)]
    pub bpftrace_script: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Test {
    Fwd,
    Rev,
    Bidir,
}

impl Test {
    fn name(self) -> &'static str {
        match self {
            Test::Fwd => "fwd",
            Test::Rev => "rev",
            Test::Bidir => "bidir",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error("{label} run: {source}")]
    Run {
        label: &'static str,
        #[source]
        source: runner::RunError,
    },
    /// One of several rounds failed; those before it are in the summary.
    #[error("round {round} of {of}: {source}")]
    Round {
        round: usize,
        of: usize,
        #[source]
        source: Box<CliError>,
    },
    #[error("{0}")]
    Setup(String),
    /// A flag this machine cannot honour (exit 2).
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Round { source, .. } => source.exit_code(),
            _ => 1,
        }
    }
}

/// A QEMU `-cpu` value: a model name and optional `,feature=value` parts, nothing QEMU
/// could read as another option.
fn parse_cpu_model(v: &str) -> Result<String, String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "-_.,=+".contains(c);
    if v.is_empty() || v.starts_with(['-', ',']) || !v.chars().all(ok) {
        return Err(format!(
            "{v:?} is not a CPU model (a name such as max or qemu64, optionally \
             followed by ,feature=on|off parts)"
        ));
    }
    Ok(v.to_string())
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            std::fs::metadata(d.join(program)).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// Refuses a tracer this machine cannot run, before anything boots.
fn check_tracer_use(kind: TracerKind) -> Result<(), CliError> {
    let flag = match kind {
        TracerKind::Bpftrace => "--tracer bpftrace",
        TracerKind::Syscalls => "--tracer syscalls",
    };
    if !nix::unistd::geteuid().is_root() {
        return Err(CliError::Usage(format!(
            "{flag} needs root (bpftrace attaches to the processes' probes and system calls)"
        )));
    }
    // capture.sh --syscalls runs vnet-systrace where it finds it (this checkout's build,
    // $VNET_SYSTRACE or PATH), bpftrace's syscalls.bt otherwise
    let systrace = kind == TracerKind::Syscalls
        && (repo_root().join("target/release/vnet-systrace").is_file()
            || std::env::var_os("VNET_SYSTRACE").is_some()
            || in_path("vnet-systrace"));
    if !systrace && !in_path("bpftrace") {
        return Err(CliError::Usage(format!(
            "{flag} needs bpftrace, which is not in PATH (apt-get install bpftrace){}",
            if kind == TracerKind::Syscalls {
                ", or vnet-systrace (cargo build --release -p vnet-systrace)"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

/// Runs everything the arguments ask for; returns the summary JSON.
pub fn run(args: &Args) -> Result<serde_json::Value, CliError> {
    if let Some(kind) = args.tracer {
        check_tracer_use(kind)?;
    }
    runner::install_signal_handlers();
    let target = default_target_dir();
    let cache = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| target.join("vnet-vm"));
    let out = args.out.clone().unwrap_or_else(|| cache.join("out"));
    let img_opts = ImageOptions {
        cache_dir: cache.clone(),
        kernel_package: args.kernel_package.clone(),
        kernel_deb: args.kernel_deb.clone(),
    };
    eprintln!("vnet-vm: preparing the guest image in {}", cache.display());
    let image = image::prepare(&img_opts)?;
    eprintln!(
        "vnet-vm: guest kernel {} (modules: {})",
        image.kernel_package,
        image.modules.join(" ")
    );

    let accel = match args.accel {
        Accel::Auto => {
            let kvm = runner::probe_kvm(&image, args.machine, &cache);
            eprintln!(
                "vnet-vm: KVM {}",
                if kvm {
                    "boots the guest: using it"
                } else {
                    "unusable here: using TCG"
                }
            );
            if kvm {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
        a => a,
    };
    let daemon = match &args.daemon {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .map_err(|e| CliError::Setup(format!("locating vnet-vm itself: {e}")))?
            .with_file_name("vnet-vhost"),
    };
    let need_daemon = !args.baseline_only;
    if need_daemon && !daemon.is_file() {
        return Err(CliError::Setup(format!(
            "daemon {} not found (build it: cargo build --release -p vnet-vhost, or pass --daemon)",
            daemon.display()
        )));
    }
    let tracer = match args.tracer {
        None => None,
        Some(TracerKind::Bpftrace) => {
            let script = args
                .bpftrace_script
                .clone()
                .unwrap_or_else(|| repo_root().join("probes/enobufs.bt"));
            if !script.is_file() {
                return Err(CliError::Setup(format!(
                    "bpftrace script {} not found",
                    script.display()
                )));
            }
            Some(Tracer::Usdt {
                script,
                frames: u32::from(!args.no_frame_probes),
            })
        }
        Some(TracerKind::Syscalls) => {
            let capture_sh = repo_root().join("probes/capture.sh");
            if !capture_sh.is_file() {
                return Err(CliError::Setup(format!(
                    "{} not found",
                    capture_sh.display()
                )));
            }
            let analyze = std::env::current_exe()
                .map_err(|e| CliError::Setup(format!("locating vnet-vm itself: {e}")))?
                .with_file_name("analyze");
            if !analyze.is_file() {
                return Err(CliError::Setup(format!(
                    "{} not found (build it: cargo build --release -p analyze)",
                    analyze.display()
                )));
            }
            Some(Tracer::Syscalls(SyscallTracer {
                capture_sh,
                analyze,
                frames: !args.no_frame_probes,
            }))
        }
    };
    let mut tests: Vec<String> = Vec::new();
    for t in &args.tests {
        if !tests.iter().any(|x| x == t.name()) {
            tests.push(t.name().to_string());
        }
    }
    let cfg = |mode: NetMode, dir: &Path| RunConfig {
        image: image.clone(),
        mode,
        machine: args.machine,
        accel,
        tcg_cpu: args.tcg_cpu.clone(),
        mtu: args.mtu,
        seconds: args.seconds,
        streams: args.streams,
        linger: args.guest_linger,
        tests: tests.clone(),
        mem_mb: args.mem_mb,
        daemon: daemon.clone(),
        daemon_args: args.daemon_arg.clone(),
        tracer: tracer.clone(),
        out_dir: dir.to_path_buf(),
    };
    let round_count = args.rounds as usize;
    if round_count == 1 {
        return run_round(args, &image.kernel_package, &out, need_daemon, false, &cfg);
    }
    // Each round in its own directory, the daemon's run first in odd rounds and the
    // baseline's in even ones, so neither always boots second on a machine that warms up.
    let mut all = Vec::with_capacity(round_count);
    let mut failed = None;
    for k in 1..=round_count {
        eprintln!("vnet-vm: round {k} of {round_count}");
        let dir = out.join(format!("round-{k}"));
        let baseline_first = k % 2 == 0;
        match run_round(
            args,
            &image.kernel_package,
            &dir,
            need_daemon,
            baseline_first,
            &cfg,
        ) {
            Ok(summary) => all.push(summary),
            // The rounds already run took minutes each: they are summarised and kept
            // before the error ends the run.
            Err(e) => {
                failed = Some((k, e));
                break;
            }
        }
    }
    let json = rounds::summary(&all, failed.as_ref().map(|(k, e)| (*k, e.to_string())));
    let _ = std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    );
    if args.json {
        println!("{json}");
    } else if !all.is_empty() {
        // The spread the summary already holds, printed as a table.
        if let Some(over) = json["over_rounds"].as_object() {
            print!("{}", rounds::to_text(all.len(), over));
        }
    }
    match failed {
        None => Ok(json),
        Some((round, source)) => Err(CliError::Round {
            round,
            of: round_count,
            source: Box::new(source),
        }),
    }
}

/// One run of each device asked for into `out` (`vhost/`, `baseline/`, `summary.json`),
/// its summary printed as text, or under `--json` as one line when it is the only round.
fn run_round(
    args: &Args,
    kernel: &str,
    out: &Path,
    need_daemon: bool,
    baseline_first: bool,
    cfg: &dyn Fn(NetMode, &Path) -> RunConfig,
) -> Result<serde_json::Value, CliError> {
    let one = |mode: NetMode, label: &'static str| -> Result<RunResult, CliError> {
        let dir = out.join(label);
        eprintln!("vnet-vm: {label} run (logs in {})", dir.display());
        runner::run(&cfg(mode, &dir)).map_err(|source| CliError::Run { label, source })
    };
    let want_baseline = args.baseline || args.baseline_only;
    let mut baseline_run = None;
    if want_baseline && baseline_first {
        baseline_run = Some(one(NetMode::Baseline, "baseline")?);
    }
    let mut daemon_run = if need_daemon {
        Some(one(NetMode::Vhost, "vhost")?)
    } else {
        None
    };
    // The trace goes beside summary.json, where a user looks first.
    if let Some(r) = daemon_run.as_mut() {
        if let Some(t) = r.trace.take() {
            let dst = out.join("trace.csv");
            r.trace = Some(if std::fs::rename(&t, &dst).is_ok() {
                dst
            } else {
                t
            });
        }
    }
    if want_baseline && !baseline_first {
        baseline_run = Some(one(NetMode::Baseline, "baseline")?);
    }
    let summary = Summary {
        kernel,
        seconds: args.seconds,
        streams: args.streams,
        daemon: daemon_run.as_ref(),
        baseline: baseline_run.as_ref(),
    };
    let json = summary.to_json();
    let _ = std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    );
    if args.json {
        // Several rounds print one object at the end; a round's goes to its directory.
        if args.rounds == 1 {
            println!("{json}");
        }
    } else {
        print!("{}", summary.to_text());
    }
    // The captures' reports after the summary (on stderr under --json: stdout stays one
    // JSON object).
    for (label, r) in [
        ("vhost", daemon_run.as_ref()),
        ("baseline", baseline_run.as_ref()),
    ] {
        for c in r.map_or(&[][..], |r| &r.captures[..]) {
            let text = capture_text(label, c);
            if args.json {
                eprint!("{text}");
            } else {
                print!("{text}");
            }
        }
    }
    Ok(json)
}

fn capture_text(label: &str, c: &CaptureResult) -> String {
    format!(
        "\n== {label} run, {} (pid {}): analyze report {}\n{}",
        c.name,
        c.pid,
        c.csv.display(),
        c.report
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("vnet-vm").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_and_test_list() {
        let a = parse(&[]).unwrap();
        assert_eq!((a.mtu, a.seconds, a.streams), (1500, 10, 4));
        assert_eq!(a.tests, [Test::Fwd, Test::Rev, Test::Bidir]);
        let a = parse(&["--tests", "rev,fwd", "--mtu", "65520", "--baseline"]).unwrap();
        assert_eq!(a.tests, [Test::Rev, Test::Fwd]);
        assert!(a.baseline && a.mtu == 65520);
        assert_eq!(a.tcg_cpu, "max,erms=off,fsrm=off");
        let a = parse(&["--tcg-cpu", "max"]).unwrap();
        assert_eq!(a.tcg_cpu, "max");
        assert_eq!(a.rounds, 1);
        assert_eq!(parse(&["--rounds", "5"]).unwrap().rounds, 5);
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        let e = parse(&["--mtu", "65521"]).unwrap_err().to_string();
        assert!(e.contains("--mtu"), "{e}");
        let e = parse(&["--tests", "fwd,sideways"]).unwrap_err().to_string();
        assert!(e.contains("sideways"), "{e}");
        assert!(parse(&["--baseline", "--baseline-only"]).is_err());
        let e = parse(&["--tracer", "strace"]).unwrap_err().to_string();
        assert!(e.contains("strace") && e.contains("syscalls"), "{e}");
        for bad in ["0", "51", "-1", "x"] {
            let e = parse(&[&format!("--rounds={bad}")]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
            assert!(e.to_string().contains("--rounds"), "{bad:?}: {e}");
        }
        // QEMU would take these as an option of its own or choke on them.
        for bad in ["", "-machine", ",erms=off", "max -S", "max;id", "max\nx"] {
            let e = parse(&[&format!("--tcg-cpu={bad}")]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
            assert!(e.to_string().contains("--tcg-cpu"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn tracer_syscalls_parses_and_is_checked_before_booting() {
        let a = parse(&["--tracer", "syscalls", "--baseline", "--no-frame-probes"]).unwrap();
        assert_eq!(a.tracer, Some(TracerKind::Syscalls));
        // Whichever of root and a tracer is missing here, the refusal is a usage error.
        if let Err(e) = check_tracer_use(TracerKind::Syscalls) {
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().starts_with("--tracer syscalls needs "), "{e}");
        }
    }
}
