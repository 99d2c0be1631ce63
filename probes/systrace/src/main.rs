//! vnet-systrace: see the crate docs (src/lib.rs) and `vnet-systrace --help`.
use clap::Parser;
use std::process::ExitCode;
use vnet_systrace::cli::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vnet-systrace: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn run(_args: &Args) -> Result<ExitCode, vnet_systrace::error::Error> {
    Err(vnet_systrace::error::Error::NotLinux)
}

#[cfg(target_os = "linux")]
fn run(args: &Args) -> Result<ExitCode, vnet_systrace::error::Error> {
    use std::cell::RefCell;
    use std::io::Write;
    use std::rc::Rc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    use vnet_systrace::error::Error;
    use vnet_systrace::target::Target;
    use vnet_systrace::tracer::{Config, Sink, Tracer};

    static STOP: AtomicBool = AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, Ordering::Relaxed);
    }

    // The output first: a bad -o is a usage error before anything is started.
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|source| Error::Output {
                    path: path.clone(),
                    source,
                })?,
        ),
        None => Box::new(std::io::stdout()),
    };
    if let (Some(pid), Some(fd)) = (args.pid, args.fd) {
        if !std::path::Path::new(&format!("/proc/{pid}/fd/{fd}")).exists()
            && std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            return Err(Error::NoFd { pid, fd });
        }
    }
    let mut target = match (&args.pid, &args.command) {
        (Some(pid), _) => Target::attach_to(*pid)?,
        (None, Some(cmd)) => Target::spawn_held(cmd, args.output.is_none())?,
        (None, None) => unreachable!("clap requires -p or -c"),
    };
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) }
            == libc::SIG_ERR
        {
            return Err(Error::Signal(std::io::Error::last_os_error()));
        }
    }
    let config = Config {
        tgid: target.pid() as u32,
        only_fd: args.fd,
        frames: !args.no_frames,
        epoll: args.epoll.clone(),
        ring_bytes: args.ring_mib << 20,
    };
    let started = Instant::now();
    let mut tracer = Tracer::load(&config)?;
    let loaded = started.elapsed();
    tracer.attach()?;
    let attached = started.elapsed() - loaded;
    let sink = Rc::new(RefCell::new(Sink::new(out)));
    sink.borrow_mut().header()?;
    target.release()?;
    let (tracing, cpu_before) = (Instant::now(), own_cpu());
    tracer.drain(&sink, Duration::from_millis(args.drain_ms), || {
        STOP.load(Ordering::Relaxed) || target.exited()
    })?;
    let counts = tracer.counts()?;
    let (made, lost) = (counts.made, counts.lost);
    let sink = sink.borrow();
    // What watching cost this process, apart from loading and attaching (the verifier and
    // the tracepoint registrations take seconds of system time once, at the start).
    eprintln!(
        "vnet-systrace: {} rows in {:.1} s, {lost} lost; loaded in {:.2} s, attached in {:.2} s; the tracer's CPU while tracing: {:.3} s",
        sink.rows,
        tracing.elapsed().as_secs_f64(),
        loaded.as_secs_f64(),
        attached.as_secs_f64(),
        (own_cpu() - cpu_before).as_secs_f64()
    );
    if let Some(status) = target.status().filter(|s| !s.success()) {
        eprintln!("vnet-systrace: the command ended with {status}");
    }
    if counts.untracked > 0 {
        eprintln!("vnet-systrace: {} calls or episodes did not fit in the BPF maps (more threads inside traced calls at once than 16384, or more open episodes than 65536): some rows are missing; this trace is incomplete", counts.untracked);
    }
    if lost > 0 {
        eprintln!("vnet-systrace: lost {lost} rows of {made}: the ring buffer was full between two reads (raise --ring-mib); this trace is incomplete");
    }
    if sink.not_understood > 0 {
        eprintln!(
            "vnet-systrace: {} ring records were not rows of this build's BPF object",
            sink.not_understood
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// This process's CPU time (user + system) so far.
#[cfg(target_os = "linux")]
fn own_cpu() -> std::time::Duration {
    // SAFETY: rusage is plain integers and timevals, for which all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid rusage to write.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| std::time::Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
