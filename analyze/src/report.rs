//! The `report` subcommand: streams the inputs into the report model (retry-count table,
//! overall line, histogram and the extras: open episodes, errno and per-fd splits, low-room
//! write wake-ups, intervals, input notes; see [`crate::model`]) and renders it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::episodes::{Episode, EpisodeSink};
use crate::error::Error;
use crate::event::{errno_name, Event, Kind};
use crate::input::SourceInfo;
use crate::interval::Intervals;
pub use crate::model::{
    ErrnoRow, FdRow, Frames, HistogramRow, OpenEpisode, OutputFormat, Overall, Report, RetryRow,
    Unit, WaitCheck, WriteWakeups,
};
use crate::pipeline::{self, InputSummary, ReadOptions, Visitor};
use crate::stats::{self, ns_to_us};

/// Everything `report` can be asked for. `Default` is the PR's text table in µs.
#[derive(Clone, Debug, Default)]
pub struct ReportOptions {
    pub format: OutputFormat,
    pub unit: Unit,
    /// Title; defaults to the input file names without extensions.
    pub name: Option<String>,
    /// Adds the per-interval table (episodes/s, frames/s, Gbit/s each way).
    pub by_interval_ns: Option<i64>,
    pub read: ReadOptions,
}

/// Collects what the report needs while the pipeline streams.
#[derive(Default)]
pub struct ReportBuilder {
    by_retries: BTreeMap<i64, Vec<i64>>,
    errno: BTreeMap<Option<i64>, u64>,
    per_fd: BTreeMap<(u32, Option<i64>), Vec<i64>>,
    open: Vec<OpenEpisode>,
    write: WriteWakeups,
    frames: Frames,
    wait: WaitCheck,
    intervals: Option<Intervals>,
    names: Vec<String>,
}

impl ReportBuilder {
    pub fn new(by_interval_ns: Option<i64>) -> ReportBuilder {
        ReportBuilder {
            intervals: by_interval_ns.map(Intervals::new),
            ..Default::default()
        }
    }

    fn count_writes(&mut self, ep: &Episode) {
        self.write.during_episodes += ep.wakeups.write;
        self.write.low_room += ep.wakeups.write_low_room;
        self.write.unknown_room += ep.wakeups.write_unknown_room;
    }

    fn open_episode(&self, ep: &Episode) -> OpenEpisode {
        OpenEpisode {
            id: ep.id,
            source: self
                .names
                .get(ep.file as usize)
                .cloned()
                .unwrap_or_default(),
            fd: ep.fd,
            begin_line: ep.begin_line,
            open_for_us: ns_to_us((ep.last_ns - ep.start_ns) as f64),
            failures_seen: ep.failures_seen,
            wakeups: ep.wakeups,
            abandoned: ep.abandoned,
        }
    }

    pub fn finish(self, name: String, input: InputSummary) -> Report {
        let total: u64 = self.by_retries.values().map(|v| v.len() as u64).sum();
        let mut all: Vec<i64> = Vec::with_capacity(total as usize);
        let mut by_retries = Vec::new();
        for (&retries, durations) in &self.by_retries {
            all.extend_from_slice(durations);
            let mut d = durations.clone();
            let s = stats::summarize(&mut d).expect("rows exist only with durations");
            by_retries.push(RetryRow {
                retries,
                count: s.count,
                pct: s.count as f64 * 100.0 / total as f64,
                min_us: ns_to_us(s.min_ns as f64),
                avg_us: ns_to_us(s.avg_ns),
                p99_us: ns_to_us(s.p99_ns as f64),
                max_us: ns_to_us(s.max_ns as f64),
                min_ns: s.min_ns,
                avg_ns: s.avg_ns,
                p99_ns: s.p99_ns,
                max_ns: s.max_ns,
            });
        }
        let overall = stats::summarize(&mut all).map(|s| Overall {
            min_us: ns_to_us(s.min_ns as f64),
            avg_us: ns_to_us(s.avg_ns),
            p50_us: ns_to_us(s.p50_ns as f64),
            p99_us: ns_to_us(s.p99_ns as f64),
            max_us: ns_to_us(s.max_ns as f64),
            min_ns: s.min_ns,
            avg_ns: s.avg_ns,
            p50_ns: s.p50_ns,
            p99_ns: s.p99_ns,
            max_ns: s.max_ns,
        });
        let largest = by_retries.iter().map(|r| r.count).max().unwrap_or(0);
        let histogram = by_retries
            .iter()
            .map(|r| HistogramRow {
                retries: r.retries,
                count: r.count,
                bar: bar_len(r.count, largest),
            })
            .collect();
        let errno = self
            .errno
            .iter()
            .map(|(&errno, &count)| ErrnoRow {
                errno,
                name: errno.map_or("unknown".to_string(), errno_name),
                count,
            })
            .collect();
        let per_fd = self
            .per_fd
            .into_iter()
            .map(|((file, fd), mut d)| {
                let s = stats::summarize(&mut d).expect("non-empty");
                FdRow {
                    source: self.names.get(file as usize).cloned().unwrap_or_default(),
                    fd,
                    count: s.count,
                    avg_us: ns_to_us(s.avg_ns),
                    p99_us: ns_to_us(s.p99_ns as f64),
                    max_us: ns_to_us(s.max_ns as f64),
                    avg_ns: s.avg_ns,
                    p99_ns: s.p99_ns,
                    max_ns: s.max_ns,
                }
            })
            .collect();
        let interval_ns = self.intervals.as_ref().map(|i| i.width_ns());
        Report {
            name,
            total,
            by_retries,
            overall,
            histogram,
            open_episodes: self.open,
            errno,
            per_fd,
            write_wakeups: self.write,
            frames: self.frames,
            wait_check: self.wait,
            intervals: self.intervals.map(Intervals::rows),
            interval_ns,
            input,
        }
    }
}

/// Adds a frame's length to a byte total, stopping at u64::MAX (and saying so) rather than
/// wrapping round to a small, plausible-looking number.
fn add_bytes(total: u64, len: Option<i64>, saturated: &mut bool) -> u64 {
    let len = len.unwrap_or(0).max(0) as u64;
    total.checked_add(len).unwrap_or_else(|| {
        *saturated = true;
        u64::MAX
    })
}

/// Bar length: the largest count is 50 `#`, any non-zero count at least one.
pub fn bar_len(count: u64, largest: u64) -> usize {
    if count == 0 || largest == 0 {
        return 0;
    }
    let scaled = (count as f64 * 50.0 / largest as f64).round() as usize;
    scaled.clamp(1, 50)
}

impl EpisodeSink for ReportBuilder {
    fn episode_begin(&mut self, _id: u64, ev: &Event) {
        if let Some(iv) = &mut self.intervals {
            iv.episode(ev.ts_ns);
        }
    }

    fn episode_end(&mut self, ep: &Episode) {
        if ep.abandoned {
            let o = self.open_episode(ep);
            self.open.push(o);
            self.count_writes(ep);
            return;
        }
        let Some(d) = ep.duration_ns() else { return };
        self.by_retries
            .entry(ep.retries.unwrap_or(ep.failures_seen))
            .or_default()
            .push(d);
        *self.errno.entry(ep.errno).or_default() += 1;
        self.per_fd.entry((ep.file, ep.fd)).or_default().push(d);
        self.count_writes(ep);
        if let Some(w) = ep.wait_ns {
            self.wait.compared += 1;
            self.wait.max_abs_diff_ns = self.wait.max_abs_diff_ns.max((w - d).abs());
        }
    }
}

impl Visitor for ReportBuilder {
    fn source_start(&mut self, _index: u32, info: &SourceInfo) {
        self.names.push(info.name.clone());
        if let Some(iv) = &mut self.intervals {
            iv.new_source();
        }
    }

    #[inline]
    fn event(&mut self, ev: &Event, _info: &SourceInfo) {
        match ev.kind {
            Kind::TxFrame => {
                self.frames.tx_frames += 1;
                self.frames.tx_bytes = add_bytes(
                    self.frames.tx_bytes,
                    ev.len,
                    &mut self.frames.bytes_saturated,
                );
            }
            Kind::RxFrame => {
                self.frames.rx_frames += 1;
                self.frames.rx_bytes = add_bytes(
                    self.frames.rx_bytes,
                    ev.len,
                    &mut self.frames.bytes_saturated,
                );
            }
            Kind::KeventWrite => self.write.total += 1,
            Kind::FrameDrop => self.frames.dropped += 1,
            _ => {}
        }
        if let Some(iv) = &mut self.intervals {
            iv.event(ev);
        }
    }

    fn open_at_end(&mut self, ep: &Episode, _info: &SourceInfo) {
        let o = self.open_episode(ep);
        self.open.push(o);
        self.count_writes(ep);
    }

    fn stopped(&self) -> bool {
        self.intervals
            .as_ref()
            .is_some_and(|i| i.too_many.is_some())
    }
}

impl ReportBuilder {
    /// `--by-interval` too fine for the input's time span: a usage error naming the event.
    fn interval_error(&self) -> Option<Error> {
        let iv = self.intervals.as_ref()?;
        let t = iv.too_many?;
        let file = self.names.get(t.file as usize).cloned().unwrap_or_default();
        Some(Error::Flag {
            flag: "--by-interval",
            msg: format!(
                "{} intervals would need more than {} rows: {file}:{} is {}s after its input's first event (a wider interval, or a bogus timestamp?)",
                crate::interval::width_label(iv.width_ns()),
                crate::interval::MAX_INTERVALS,
                t.line,
                t.offset_ns as f64 / 1e9
            ),
        })
    }
}

/// The default title: file names without directories and `.gz`/`.csv`/`.log` extensions.
pub fn default_name(paths: &[PathBuf]) -> String {
    let one = |p: &Path| -> String {
        if p.as_os_str() == "-" {
            return "stdin".to_string();
        }
        let mut n = p
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string());
        for ext in [".gz", ".csv", ".log", ".txt"] {
            if let Some(s) = n.strip_suffix(ext) {
                n = s.to_string();
            }
        }
        n
    };
    paths.iter().map(|p| one(p)).collect::<Vec<_>>().join(" + ")
}

/// Streams the inputs and builds the report model.
pub fn build_report(paths: &[PathBuf], opts: &ReportOptions) -> Result<Report, Error> {
    if paths.is_empty() {
        return Err(Error::Usage("no input files".to_string()));
    }
    let mut builder = ReportBuilder::new(opts.by_interval_ns);
    let summary = pipeline::run(paths, &opts.read, &mut builder)?;
    if let Some(e) = builder.interval_error() {
        return Err(e);
    }
    let name = opts.name.clone().unwrap_or_else(|| default_name(paths));
    Ok(builder.finish(name, summary))
}

/// The library entry point the simulator uses: the report of `paths`, rendered as asked.
pub fn render_report(paths: &[PathBuf], opts: &ReportOptions) -> Result<String, Error> {
    let report = build_report(paths, opts)?;
    Ok(crate::render::render(&report, opts.format, opts.unit))
}
