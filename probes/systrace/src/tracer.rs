//! Loads src/bpf/systrace.bpf.c, configures it for one process, attaches it (returns before
//! entries) and turns the ring's records into CSV rows.
use crate::error::Error;
use crate::record::Record;
use libbpf_rs::{Link, MapCore, MapFlags, Object, ObjectBuilder, RingBufferBuilder};
use std::cell::RefCell;
use std::io::{self, Write};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/systrace.bpf.o"));

/// The programs of the receive side: not loaded without frame rows (receives write nothing
/// else), so they cost nothing then.
const RECEIVE_PROGRAMS: [&str; 10] = [
    "enter_recvfrom",
    "enter_read",
    "enter_recvmsg",
    "enter_readv",
    "enter_recvmmsg",
    "exit_recvfrom",
    "exit_read",
    "exit_recvmsg",
    "exit_readv",
    "exit_recvmmsg",
];

/// What the BPF side is told before it is loaded.
#[derive(Clone, Debug)]
pub struct Config {
    pub tgid: u32,
    /// Only this fd; `None`: every AF_UNIX socket.
    pub only_fd: Option<i32>,
    pub frames: bool,
    /// Registrations of `only_fd` made before the capture: (epoll fd, epoll_data).
    pub epoll: Vec<(i32, u64)>,
    pub ring_bytes: u32,
}

impl Config {
    /// `struct config` of the BPF object: u32 tgid, i32 only_fd, u32 frames, u32 pad.
    fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.tgid.to_ne_bytes());
        b[4..8].copy_from_slice(&self.only_fd.unwrap_or(-1).to_ne_bytes());
        b[8..12].copy_from_slice(&u32::from(self.frames).to_ne_bytes());
        b
    }
}

fn bpf(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> Error {
    let what = what.into();
    move |e| Error::Bpf {
        what,
        message: e.to_string(),
    }
}

/// The BPF side's counters (`counts` in src/bpf/systrace.bpf.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// Rows the programs made.
    pub made: u64,
    /// Rows the ring had no room for.
    pub lost: u64,
    /// Calls or episodes a full map could not hold: their rows are missing or wrong.
    pub untracked: u64,
}

pub struct Tracer {
    object: Object,
    frames: bool,
    links: Vec<Link>,
}

impl Tracer {
    /// Opens, configures and loads the programs (the verifier runs here); nothing is attached.
    pub fn load(config: &Config) -> Result<Tracer, Error> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::NotRoot);
        }
        if !Path::new("/sys/kernel/tracing/events/syscalls").is_dir()
            && !Path::new("/sys/kernel/debug/tracing/events/syscalls").is_dir()
        {
            return Err(Error::NoTracefs);
        }
        let mut open = ObjectBuilder::default()
            .open_memory(OBJECT)
            .map_err(bpf("opening the BPF object"))?;
        let mut configured = false;
        for mut map in open.maps_mut() {
            let name = map.name().to_string_lossy().into_owned();
            // libbpf names the map of a `.rodata.*` section after the section
            if name == ".rodata.config" {
                let value = map.initial_value_mut().ok_or_else(|| Error::Bpf {
                    what: format!("map {name}"),
                    message: "no initial value".into(),
                })?;
                let bytes = config.bytes();
                if value.len() < bytes.len() {
                    return Err(Error::Bpf {
                        what: format!("map {name}"),
                        message: format!(
                            "{} bytes, struct config needs {}",
                            value.len(),
                            bytes.len()
                        ),
                    });
                }
                value[..bytes.len()].copy_from_slice(&bytes);
                configured = true;
            } else if name == "rows" {
                map.set_max_entries(config.ring_bytes)
                    .map_err(bpf("sizing the ring buffer"))?;
            }
        }
        if !configured {
            return Err(Error::Bpf {
                what: "the BPF object".into(),
                message: "no .rodata.config map (struct config)".into(),
            });
        }
        if !config.frames {
            for mut prog in open.progs_mut() {
                if RECEIVE_PROGRAMS.iter().any(|p| prog.name() == *p) {
                    prog.set_autoload(false);
                }
            }
        }
        let object = open.load().map_err(bpf("loading the BPF programs"))?;
        let tracer = Tracer {
            object,
            frames: config.frames,
            links: Vec::new(),
        };
        if let Some(fd) = config.only_fd {
            for &(epfd, data) in &config.epoll {
                tracer.seed_epoll(i64::from(epfd), data, i64::from(fd))?;
            }
        }
        Ok(tracer)
    }

    fn map(&self, name: &str) -> Result<libbpf_rs::Map<'_>, Error> {
        self.object
            .maps()
            .find(|m| m.name() == name)
            .ok_or_else(|| Error::Bpf {
                what: format!("map {name}"),
                message: "not in the BPF object".into(),
            })
    }

    /// An epoll registration made before the capture, as the epoll_ctl probe would have
    /// recorded it.
    fn seed_epoll(&self, epfd: i64, data: u64, fd: i64) -> Result<(), Error> {
        let key = |a: i64, b: u64| [a.to_ne_bytes(), b.to_ne_bytes()].concat();
        self.map("epdata")?
            .update(&key(epfd, data), &(fd + 1).to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf("seeding epdata"))?;
        self.map("epdata_of")?
            .update(&key(epfd, fd as u64), &data.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf("seeding epdata_of"))?;
        self.map("fd_epfd")?
            .update(&fd.to_ne_bytes(), &(epfd + 1).to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf("seeding fd_epfd"))?;
        Ok(())
    }

    /// Attaches every return before any entry: an entry leaves state for its return, which
    /// must already be there to take it (bpftrace attaches in script order, and a return
    /// attached after its entry found stale state, probes/syscalls.bt).
    pub fn attach(&mut self) -> Result<(), Error> {
        for prefix in ["exit_", "enter_"] {
            for prog in self.object.progs_mut() {
                let name = prog.name().to_string_lossy().into_owned();
                if !name.starts_with(prefix)
                    || (!self.frames && RECEIVE_PROGRAMS.contains(&name.as_str()))
                {
                    continue;
                }
                let link = prog.attach().map_err(bpf(format!("attaching {name}")))?;
                self.links.push(link);
            }
        }
        Ok(())
    }

    /// What the BPF side counted, summed over the CPUs.
    pub fn counts(&self) -> Result<Counts, Error> {
        let map = self.map("counts")?;
        let mut sums = [0u64; 3];
        for (key, sum) in sums.iter_mut().enumerate() {
            let per_cpu = map
                .lookup_percpu(&(key as u32).to_ne_bytes(), MapFlags::ANY)
                .map_err(bpf("reading the row counts"))?
                .unwrap_or_default();
            *sum = per_cpu
                .iter()
                .filter_map(|v| v.get(..8))
                .map(|v| u64::from_ne_bytes(v.try_into().expect("8 bytes")))
                .sum();
        }
        Ok(Counts {
            made: sums[0],
            lost: sums[1],
            untracked: sums[2],
        })
    }

    /// Reads the ring every `every` until `done` says so, then once more; each record becomes
    /// a CSV row in `sink`.
    pub fn drain(
        &self,
        sink: &Rc<RefCell<Sink>>,
        every: Duration,
        mut done: impl FnMut() -> bool,
    ) -> Result<(), Error> {
        let rows = self.map("rows")?;
        let mut builder = RingBufferBuilder::new();
        let into = Rc::clone(sink);
        builder
            .add(&rows, move |data: &[u8]| into.borrow_mut().push(data))
            .map_err(bpf("reading the ring buffer"))?;
        let ring = builder.build().map_err(bpf("reading the ring buffer"))?;
        // The end is looked for at least every 100 ms, however long `every` is, so a capture
        // ends soon after its process whatever the drain interval.
        let step = every.min(Duration::from_millis(100));
        loop {
            let mut last = done();
            // The programs write with BPF_RB_NO_WAKEUP: nothing wakes us, the ring is read on
            // this timer, so no traced system call pays for waking the reader.
            let mut waited = Duration::ZERO;
            while !last && waited < every {
                std::thread::sleep(step);
                waited += step;
                last = done();
            }
            let consumed = ring.consume();
            // a failed write stops the consume from our callback: that error is the one to say
            sink.borrow_mut().flush()?;
            consumed.map_err(bpf("reading the ring buffer"))?;
            if last {
                return Ok(());
            }
        }
    }
}

/// Where the rows go: the CSV writer and what it has seen.
pub struct Sink {
    out: io::BufWriter<Box<dyn Write>>,
    buf: Vec<u8>,
    pub rows: u64,
    pub not_understood: u64,
    error: Option<io::Error>,
}

impl Sink {
    pub fn new(out: Box<dyn Write>) -> Sink {
        Sink {
            out: io::BufWriter::with_capacity(1 << 16, out),
            buf: Vec::with_capacity(128),
            rows: 0,
            not_understood: 0,
            error: None,
        }
    }

    /// The clock comment and the header: written once every probe is attached, so that a
    /// reader waiting for the header (capture.sh --ready) knows the capture has begun.
    pub fn header(&mut self) -> Result<(), Error> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid timespec to write; CLOCK_MONOTONIC is bpf_ktime_get_ns's clock.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mono = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        writeln!(self.out, "{}", vnet_trace_schema::clock_comment(mono, wall))
            .map_err(Error::Write)?;
        writeln!(self.out, "{}", vnet_trace_schema::HEADER).map_err(Error::Write)?;
        self.flush()
    }

    /// One ring record; returns what libbpf's callback wants (0: go on).
    fn push(&mut self, data: &[u8]) -> i32 {
        let Some(row) = Record::parse(data).and_then(|r| r.row()) else {
            self.not_understood += 1;
            return 0;
        };
        self.buf.clear();
        vnet_trace_schema::format_row(&mut self.buf, &row);
        if self.error.is_none() {
            if let Err(e) = self.out.write_all(&self.buf) {
                self.error = Some(e);
                // stops this consume; the error comes out of the next flush
                return -1;
            }
        }
        self.rows += 1;
        0
    }

    pub fn flush(&mut self) -> Result<(), Error> {
        if let Some(e) = self.error.take() {
            return Err(Error::Write(e));
        }
        self.out.flush().map_err(Error::Write)
    }
}
