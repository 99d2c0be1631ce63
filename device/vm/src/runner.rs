//! One guest run: iperf3 server, passt, optionally our vhost-user daemon (optionally under
//! bpftrace), and QEMU, each bounded by a deadline and torn down on every exit path.

use std::fs;
use std::io::{self, BufRead};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::capture::{self, Capture, CaptureResult, SyscallTracer};
use super::image::GuestImage;
use super::iperf::{parse_console, Console, GuestStats, TestResult};
use super::process::Guarded;

/// Guest addresses handed to passt; passt maps the gateway to the host's loopback.
pub const GUEST_ADDR: &str = "10.0.2.15";
pub const GUEST_PREFIX: u8 = 24;
pub const GATEWAY: &str = "10.0.2.2";
const GUEST_MAC: &str = "52:54:00:12:34:56";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{name} did not become ready within {secs} s{detail}")]
    NotReady {
        name: String,
        secs: u64,
        detail: String,
    },
    #[error("{name} exited before it was ready ({status}){detail}")]
    ExitedBeforeReady {
        name: String,
        status: String,
        detail: String,
    },
    #[error("QEMU exited with {status} before the guest finished; last console lines:\n{tail}")]
    QemuFailed { status: String, tail: String },
    #[error("the guest did not finish within {secs} s; last console lines:\n{tail}")]
    GuestTimeout { secs: u64, tail: String },
    #[error("guest: {0}")]
    Guest(String),
    #[error(transparent)]
    Capture(#[from] capture::CaptureError),
    #[error("resuming QEMU after the captures attached: {0}")]
    Qmp(#[from] super::qmp::QmpError),
    #[error("interrupted")]
    Interrupted,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM make the runner stop waiting and tear everything down (the guards do
/// the killing); without this a Ctrl-C would leave QEMU and passt running.
pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

fn interrupted() -> Result<(), RunError> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(RunError::Interrupted)
    } else {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// q35 with virtio-net-pci
    Pc,
    /// -M microvm with virtio-net-device (virtio-mmio)
    Microvm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// QEMU's virtio-net-pci on our vhost-user daemon, which talks to passt.
    Vhost,
    /// QEMU's own virtio-net with `-netdev stream` to passt.
    Baseline,
}

#[derive(Debug, Clone)]
pub enum Tracer {
    /// The daemon under bpftrace with its USDT script.
    Usdt {
        /// probes/enobufs.bt
        script: PathBuf,
        /// 0 leaves out the per-frame probes.
        frames: u32,
    },
    /// passt and its peer on the passt socket (QEMU in the baseline, else the daemon),
    /// captured from outside by their system calls; QEMU starts held (-S) until both
    /// captures are attached.
    Syscalls(SyscallTracer),
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub image: GuestImage,
    pub mode: NetMode,
    pub machine: Machine,
    /// Kvm or Tcg (resolve Auto with [`probe_kvm`] first).
    pub accel: Accel,
    /// QEMU's `-cpu` under TCG.
    pub tcg_cpu: String,
    pub mtu: u32,
    pub seconds: u32,
    pub streams: u32,
    /// Seconds the guest waits after VNET-DONE before powering off (0 = none).
    pub linger: u32,
    pub tests: Vec<String>,
    pub mem_mb: u32,
    pub daemon: PathBuf,
    pub daemon_args: Vec<String>,
    pub tracer: Option<Tracer>,
    /// Logs, console and trace of this run land here.
    pub out_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub mode: NetMode,
    pub machine: Machine,
    pub accel: Accel,
    /// The guest CPU model QEMU was given.
    pub cpu: String,
    pub mtu: u32,
    pub fwd_gbit_per_s: Option<f64>,
    pub rev_gbit_per_s: Option<f64>,
    pub retransmits: u64,
    pub tests: Vec<TestResult>,
    /// Guest uptime when init started (kernel boot) and when the network was up.
    pub boot_s: Option<f64>,
    pub net_up_s: Option<f64>,
    /// From starting QEMU (resuming it, under `--tracer syscalls`) to QEMU's exit.
    pub wall_s: f64,
    /// The guest reported its results (VNET-DONE) but did not power off within
    /// [`SHUTDOWN_GRACE`]: the console lines it printed after VNET-DONE.
    pub shutdown_hung: Option<String>,
    /// The daemon's `--json` summary (vhost mode).
    pub daemon: Option<Value>,
    pub trace: Option<PathBuf>,
    pub out_dir: PathBuf,
    /// Where this run's `iperf3 -s` listened (lets scripts check it is gone).
    pub iperf3_port: u16,
    /// `--tracer syscalls`: passt's capture, then its peer's.
    pub captures: Vec<CaptureResult>,
    /// The guest's NIC and TCP counters after boot and after each test.
    pub guest_stats: Vec<GuestStats>,
}

/// A mode-1777 directory for the sockets (passt drops to `nobody` before binding).
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<WorkDir, RunError> {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("vnet-vm-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir(&p).map_err(io_err(format!("creating {}", p.display())))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o1777))
            .map_err(io_err(format!("chmod {}", p.display())))?;
        Ok(WorkDir(p))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn wait_for(
    name: &str,
    timeout: Duration,
    child: Option<&mut Guarded>,
    mut ready: impl FnMut() -> bool,
) -> Result<(), RunError> {
    let deadline = Instant::now() + timeout;
    let mut child = child;
    loop {
        interrupted()?;
        if ready() {
            return Ok(());
        }
        if let Some(c) = child.as_deref_mut() {
            if let Some(s) = c
                .try_status()
                .map_err(io_err(format!("waiting for {name}")))?
            {
                return Err(RunError::ExitedBeforeReady {
                    name: name.into(),
                    status: s.to_string(),
                    detail: String::new(),
                });
            }
        }
        if Instant::now() >= deadline {
            return Err(RunError::NotReady {
                name: name.into(),
                secs: timeout.as_secs(),
                detail: String::new(),
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// True when something listens on 127.0.0.1:port (read from /proc, so nothing connects
/// to the iperf3 server before the guest does: a stray connection confuses it).
fn listening_on_loopback(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
    })
}

fn free_port() -> Result<u16, RunError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    Ok(l.local_addr()
        .map_err(io_err("finding a free port"))?
        .port())
}

fn log_file(dir: &Path, name: &str) -> Result<fs::File, RunError> {
    let p = dir.join(name);
    fs::File::create(&p).map_err(io_err(format!("creating {}", p.display())))
}

fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Children die with the runner even if it is SIGKILLed (no guard runs then).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// How long a guest that printed VNET-DONE gets to power off (it takes well under a
/// second under TCG).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

fn kernel_cmdline(cfg: &RunConfig, port: u16, tests: &str) -> String {
    // reboot=t + -no-reboot: the guest's `reboot -f` ends QEMU on any machine type.
    // tsc_early_khz: microvm has no PIT/HPET to calibrate the TSC against.
    format!(
        "console=ttyS0 loglevel=1 reboot=t panic=-1 tsc_early_khz=2000000 \
         vnet.addr={GUEST_ADDR}/{GUEST_PREFIX} vnet.gw={GATEWAY} vnet.port={port} \
         vnet.mtu={} vnet.seconds={} vnet.tests={tests} vnet.streams={} vnet.linger={}",
        cfg.mtu, cfg.seconds, cfg.streams, cfg.linger
    )
}

/// `max` without ERMS and FSRM: why, in `--tcg-cpu`'s help.
pub const DEFAULT_TCG_CPU: &str = "max,erms=off,fsrm=off";

fn accel_name(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "kvm",
        _ => "tcg",
    }
}

fn cpu_model(cfg: &RunConfig, accel: Accel) -> String {
    match accel {
        Accel::Kvm => "host".to_string(),
        _ => cfg.tcg_cpu.clone(),
    }
}

fn qemu_command(cfg: &RunConfig, accel: Accel, console: &Path, append: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    let mem = format!("{}M", cfg.mem_mb);
    // vhost-user needs guest RAM in a shareable fd; the baseline uses the same backend so
    // the two runs differ only in the network device.
    let machine = match cfg.machine {
        Machine::Pc => "q35,memory-backend=mem",
        Machine::Microvm => "microvm,memory-backend=mem",
    };
    cmd.args(["-M", machine]);
    if cfg.machine == Machine::Microvm {
        // virtio-mmio defaults to the legacy interface; the device is a VERSION_1 device.
        cmd.args(["-global", "virtio-mmio.force-legacy=false"]);
    }
    cmd.args(["-accel", accel_name(accel), "-cpu", &cpu_model(cfg, accel)]);
    cmd.args(["-smp", "1", "-m", &mem])
        .arg("-object")
        .arg(format!("memory-backend-memfd,id=mem,size={mem},share=on"))
        .args(["-nodefaults", "-display", "none", "-no-reboot", "-serial"])
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&cfg.image.kernel)
        .arg("-initrd")
        .arg(&cfg.image.initrd)
        .arg("-append")
        .arg(append);
    cmd
}

/// Whether KVM can boot the guest kernel here (on some hosts /dev/kvm exists but QEMU
/// aborts or the guest hangs with a stock kernel). A short boot with no network.
pub fn probe_kvm(image: &GuestImage, machine: Machine, work: &Path) -> bool {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let console = work.join("kvm-probe.log");
    let cfg = RunConfig {
        image: image.clone(),
        mode: NetMode::Baseline,
        machine,
        accel: Accel::Kvm,
        tcg_cpu: DEFAULT_TCG_CPU.to_string(),
        mtu: 1500,
        seconds: 0,
        streams: 1,
        linger: 0,
        tests: vec![],
        mem_mb: 256,
        daemon: PathBuf::new(),
        daemon_args: vec![],
        tracer: None,
        out_dir: work.to_path_buf(),
    };
    let mut cmd = qemu_command(&cfg, Accel::Kvm, &console, &kernel_cmdline(&cfg, 1, "none"));
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let Ok(mut q) = Guarded::spawn("qemu (kvm probe)", die_with_parent(&mut cmd)) else {
        return false;
    };
    let booted = wait_for("kvm probe", Duration::from_secs(15), Some(&mut q), || {
        fs::read_to_string(&console).is_ok_and(|t| t.contains("VNET-DONE"))
    });
    let _ = q.stop(Duration::from_secs(1));
    booted.is_ok()
}

/// Runs the guest once and collects its results.
pub fn run(cfg: &RunConfig) -> Result<RunResult, RunError> {
    fs::create_dir_all(&cfg.out_dir)
        .map_err(io_err(format!("creating {}", cfg.out_dir.display())))?;
    let work = WorkDir::new()?;
    let out = &cfg.out_dir;

    let port = free_port()?;
    let mut iperf = Guarded::spawn(
        "iperf3 -s",
        die_with_parent(
            Command::new("iperf3")
                .args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log_file(out, "iperf3-server.log")?)
                .stderr(log_file(out, "iperf3-server.err")?),
        ),
    )
    .map_err(io_err("starting iperf3"))?;
    wait_for(
        "iperf3 -s",
        Duration::from_secs(10),
        Some(&mut iperf),
        || listening_on_loopback(port),
    )?;

    let passt_sock = work.0.join("passt.sock");
    let mut passt = Guarded::spawn(
        "passt",
        die_with_parent(
            Command::new("passt")
                .args(["-f", "-1", "-s"])
                .arg(&passt_sock)
                .args([
                    "-a",
                    GUEST_ADDR,
                    "-n",
                    &GUEST_PREFIX.to_string(),
                    "-g",
                    GATEWAY,
                ])
                .args(["-m", &cfg.mtu.to_string()])
                .stdin(Stdio::null())
                .stdout(log_file(out, "passt.log")?)
                .stderr(log_file(out, "passt.err")?),
        ),
    )
    .map_err(io_err("starting passt"))?;
    wait_for("passt", Duration::from_secs(10), Some(&mut passt), || {
        passt_sock.exists()
    })?;

    let mut daemon = None;
    let mut trace = None;
    let vhost_sock = work.0.join("vhost.sock");
    if cfg.mode == NetMode::Vhost {
        let mut args: Vec<String> = vec![
            "--socket".into(),
            vhost_sock.display().to_string(),
            "--proxy".into(),
            format!("unixstream:{}", passt_sock.display()),
            "--json".into(),
        ];
        args.extend(cfg.daemon_args.iter().cloned());
        let mut cmd = match &cfg.tracer {
            None | Some(Tracer::Syscalls(_)) => {
                let mut c = Command::new(&cfg.daemon);
                c.args(&args);
                c
            }
            Some(Tracer::Usdt { script, frames }) => {
                let csv = out.join("trace.csv");
                trace = Some(csv.clone());
                let mut shell = shell_quote(&cfg.daemon.display().to_string());
                for a in &args {
                    shell.push(' ');
                    shell.push_str(&shell_quote(a));
                }
                let mut c = Command::new("bpftrace");
                // -q: without it bpftrace writes "Attaching N probes..." into the CSV.
                c.arg("-q")
                    .arg("-o")
                    .arg(&csv)
                    .arg("-c")
                    .arg(shell)
                    .arg(script)
                    .arg(&cfg.daemon);
                c.arg(frames.to_string());
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log_file(out, "daemon.json")?)
            .stderr(log_file(out, "daemon.log")?);
        let mut d = Guarded::spawn("vnet-vhost", die_with_parent(&mut cmd))
            .map_err(io_err("starting the daemon"))?;
        // bpftrace compiles and attaches before it starts the command: allow for that.
        let limit = if matches!(cfg.tracer, Some(Tracer::Usdt { .. })) {
            90
        } else {
            15
        };
        wait_for(
            "vnet-vhost",
            Duration::from_secs(limit),
            Some(&mut d),
            || vhost_sock.exists(),
        )
        .map_err(|e| {
            let log = || format!("; daemon log:\n{}", tail(&out.join("daemon.log"), 15));
            match e {
                RunError::NotReady { name, secs, .. } => RunError::NotReady {
                    name,
                    secs,
                    detail: log(),
                },
                RunError::ExitedBeforeReady { name, status, .. } => RunError::ExitedBeforeReady {
                    name,
                    status,
                    detail: log(),
                },
                e => e,
            }
        })?;
        daemon = Some(d);
    }

    let tests = if cfg.tests.is_empty() {
        "none".to_string()
    } else {
        cfg.tests.join(",")
    };
    let console = out.join("console.log");
    let mut qemu = qemu_command(cfg, cfg.accel, &console, &kernel_cmdline(cfg, port, &tests));
    let device = match cfg.machine {
        Machine::Pc => "virtio-net-pci",
        Machine::Microvm => "virtio-net-device",
    };
    match cfg.mode {
        NetMode::Baseline => qemu.arg("-netdev").arg(format!(
            "stream,id=n0,server=off,addr.type=unix,addr.path={}",
            passt_sock.display()
        )),
        NetMode::Vhost => qemu
            .arg("-chardev")
            .arg(format!("socket,id=c0,path={}", vhost_sock.display()))
            .args(["-netdev", "vhost-user,id=n0,chardev=c0"]),
    };
    qemu.arg("-device")
        .arg(format!("{device},netdev=n0,mac={GUEST_MAC}"));
    let syscalls = match &cfg.tracer {
        Some(Tracer::Syscalls(t)) => Some(t),
        _ => None,
    };
    let qmp_sock = work.0.join("qmp.sock");
    if syscalls.is_some() {
        // Held before the first guest instruction; resumed over QMP once the captures are in.
        qemu.arg("-S")
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_sock.display()));
    }
    qemu.stdin(Stdio::null())
        .stdout(log_file(out, "qemu.log")?)
        .stderr(log_file(out, "qemu.err")?);
    let mut started = Instant::now();
    let mut q =
        Guarded::spawn("qemu", die_with_parent(&mut qemu)).map_err(io_err("starting QEMU"))?;
    let mut captures: Vec<Capture> = Vec::new();
    if let Some(t) = syscalls {
        // passt's end exists once passt accepted its peer (the daemon connects at its start,
        // QEMU's -netdev stream while QEMU initialises, held or not); passt, still setting
        // up, may leave it in the backlog for a second.
        let passt_pid = passt.id();
        wait_for(
            "passt accepting its peer's connection",
            Duration::from_secs(60),
            Some(&mut q),
            || capture::accepted_by(passt_pid, &passt_sock),
        )?;
        let (peer_name, peer_pid) = match daemon.as_ref() {
            Some(d) => ("daemon", d.id()),
            None => ("qemu", q.id()),
        };
        captures.push(Capture::start(t, "passt", passt.id(), &passt_sock, out)?);
        captures.push(Capture::start(t, peer_name, peer_pid, &passt_sock, out)?);
        eprintln!("vnet-vm: attaching the syscall captures to passt and {peer_name} (guest held)");
        // bpftrace compiles and attaches syscalls.bt in a few seconds each, the two at once
        // on a loaded machine in far more.
        capture::wait_ready(&mut captures, Duration::from_secs(180), || {
            INTERRUPTED.load(Ordering::SeqCst)
        })?;
        super::qmp::cont(&qmp_sock, Duration::from_secs(10))?;
        started = Instant::now();
    }
    // Boot under TCG takes seconds; each test adds its duration plus connection set-up.
    let budget = Duration::from_secs(90 + (cfg.tests.len() as u64) * (u64::from(cfg.seconds) + 20));
    let mut done_at: Option<Instant> = None;
    let mut last_look = Instant::now();
    let mut shutdown_hung = None;
    let status = loop {
        interrupted()?;
        if let Some(s) = q.try_status().map_err(io_err("waiting for QEMU"))? {
            break s;
        }
        if done_at.is_none() && last_look.elapsed() > Duration::from_millis(250) {
            last_look = Instant::now();
            if fs::read_to_string(&console).is_ok_and(|t| t.contains("VNET-DONE")) {
                done_at = Some(Instant::now());
            }
        }
        // Everything under test is over once the guest printed its results; a guest
        // kernel that then hangs on its way down (seen: Debian's 6.1 and 6.12 spinning in
        // ksoftirqd after resetting the device) is reported, not waited on.
        if done_at.is_some_and(|t| t.elapsed() > SHUTDOWN_GRACE) {
            let text = fs::read_to_string(&console).unwrap_or_default();
            let after = text
                .split_once("VNET-DONE")
                .and_then(|(_, rest)| rest.split_once('\n'))
                .map_or("", |(_, rest)| rest);
            let after = match after.trim() {
                "" => "nothing on the console after VNET-DONE",
                t => t,
            };
            eprintln!(
                "vnet-vm: warning: the guest reported its results but did not power off within \
                 {} s; stopping QEMU. Console after VNET-DONE:\n{after}",
                SHUTDOWN_GRACE.as_secs(),
            );
            shutdown_hung = Some(after.to_string());
            break q
                .stop(Duration::from_secs(2))
                .map_err(io_err("stopping QEMU"))?;
        }
        if started.elapsed() > budget {
            return Err(RunError::GuestTimeout {
                secs: budget.as_secs(),
                tail: tail(&console, 20),
            });
        }
        thread::sleep(Duration::from_millis(50));
    };
    let wall_s = started.elapsed().as_secs_f64();
    let text =
        fs::read_to_string(&console).map_err(io_err(format!("reading {}", console.display())))?;
    let parsed = parse_console(&text);
    if parsed.done.is_none() {
        let err = fs::read_to_string(out.join("qemu.err")).unwrap_or_default();
        return Err(RunError::QemuFailed {
            status: format!(
                "{status}{}",
                if err.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", err.trim())
                }
            ),
            tail: tail(&console, 20),
        });
    }

    // QEMU is gone: the daemon sees the disconnect, prints its summary and exits.
    let daemon_json = match daemon.as_mut() {
        Some(d) => {
            let exited = d
                .wait_timeout(Duration::from_secs(20))
                .map_err(io_err("waiting for the daemon"))?;
            if exited.is_none() {
                // It did not notice; SIGINT asks for the same clean exit.
                d.signal(nix::sys::signal::Signal::SIGINT);
                let _ = d.wait_timeout(Duration::from_secs(10));
            }
            let _ = d.stop(Duration::from_secs(2));
            read_daemon_json(&out.join("daemon.json"))
        }
        None => None,
    };
    drop(daemon);
    if syscalls.is_some() {
        // passt -1 reads its peer's last bytes and exits on the hang-up: let it, so its
        // capture's receive count is complete.
        let _ = passt.wait_timeout(Duration::from_secs(5));
    }
    let _ = passt.stop(Duration::from_secs(2));
    let _ = iperf.stop(Duration::from_secs(2));
    let mut finished = Vec::new();
    if let Some(t) = syscalls {
        // Each capture ends with its process; capture.sh then sorts the CSV.
        for c in captures {
            finished.push(c.finish(t, Duration::from_secs(60))?);
        }
    }

    result(cfg, parsed, wall_s, daemon_json, trace).map(|r| RunResult {
        iperf3_port: port,
        shutdown_hung,
        captures: finished,
        ..r
    })
}

fn result(
    cfg: &RunConfig,
    parsed: Console,
    wall_s: f64,
    daemon: Option<Value>,
    trace: Option<PathBuf>,
) -> Result<RunResult, RunError> {
    if let Some(e) = parsed.errors.first() {
        return Err(RunError::Guest(e.to_string()));
    }
    match parsed.done.as_deref() {
        Some("ok") => {}
        Some(other) => return Err(RunError::Guest(other.to_string())),
        None => return Err(RunError::Guest("no VNET-DONE line".into())),
    }
    let pick = |name: &str, fwd: bool| {
        let dir = |t: &TestResult| if fwd { t.fwd } else { t.rev };
        cfg.tests
            .iter()
            .position(|t| t == name)
            .and_then(|_| parsed.tests.iter().find(|t| t.name == name).and_then(dir))
    };
    let fwd = pick("fwd", true).or_else(|| pick("bidir", true));
    let rev = pick("rev", false).or_else(|| pick("bidir", false));
    let retransmits = parsed
        .tests
        .iter()
        .flat_map(|t| [t.fwd, t.rev])
        .flatten()
        .map(|d| d.retransmits)
        .sum();
    Ok(RunResult {
        mode: cfg.mode,
        machine: cfg.machine,
        accel: cfg.accel,
        cpu: cpu_model(cfg, cfg.accel),
        mtu: cfg.mtu,
        fwd_gbit_per_s: fwd.map(|d| d.gbit_per_s),
        rev_gbit_per_s: rev.map(|d| d.gbit_per_s),
        retransmits,
        tests: parsed.tests,
        boot_s: parsed.booted_at,
        net_up_s: parsed.net_up_at,
        wall_s,
        daemon,
        trace,
        out_dir: cfg.out_dir.clone(),
        iperf3_port: 0,
        shutdown_hung: None,
        captures: Vec::new(),
        guest_stats: parsed.stats,
    })
}

/// The last line of the daemon's stdout that parses as a JSON object.
fn read_daemon_json(path: &Path) -> Option<Value> {
    let f = fs::File::open(path).ok()?;
    io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(Value::is_object)
        .last()
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-:=,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_leaves_paths_and_quotes_spaces() {
        assert_eq!(shell_quote("/tmp/a.sock"), "/tmp/a.sock");
        assert_eq!(shell_quote("unixstream:/x"), "unixstream:/x");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn daemon_json_is_the_last_object_line() {
        let dir = std::env::temp_dir().join(format!("vnet-vm-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("d.json");
        fs::write(
            &p,
            "Attaching 12 probes...\n{\"a\":1}\nnoise\n{\"tx_frames\":5}\n",
        )
        .unwrap();
        assert_eq!(read_daemon_json(&p).unwrap()["tx_frames"], 5);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loopback_listener_is_seen_in_proc() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listening_on_loopback(port));
        drop(l);
        assert!(!listening_on_loopback(port));
    }
}
