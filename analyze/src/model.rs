//! The report model: what `report` computed, in the form every renderer reads (text,
//! markdown, JSON, CSV, and `compare`). A leaf: the builder in `report` fills it, `render`
//! turns it into text, and neither has to import the other's side.

use serde::Serialize;

use crate::episodes::Wakeups;
use crate::interval::IntervalRow;
use crate::pipeline::InputSummary;

/// Output format of report-like subcommands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Text,
    Markdown,
    Json,
    Csv,
}

/// Unit for durations in text and markdown output (JSON and CSV always carry µs and ns).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Unit {
    /// Integer microseconds, as the PR's tables.
    #[default]
    Us,
    /// Milliseconds with three decimals.
    Ms,
    /// Microseconds unless the largest value is 10 ms or more.
    Auto,
}

#[derive(Clone, Debug, Serialize)]
pub struct RetryRow {
    pub retries: i64,
    pub count: u64,
    /// Share of all resolved episodes, in percent.
    pub pct: f64,
    pub min_us: i64,
    pub avg_us: i64,
    pub p99_us: i64,
    pub max_us: i64,
    pub min_ns: i64,
    pub avg_ns: f64,
    pub p99_ns: i64,
    pub max_ns: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Overall {
    pub min_us: i64,
    pub avg_us: i64,
    pub p50_us: i64,
    pub p99_us: i64,
    pub max_us: i64,
    pub min_ns: i64,
    pub avg_ns: f64,
    pub p50_ns: i64,
    pub p99_ns: i64,
    pub max_ns: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct HistogramRow {
    pub retries: i64,
    pub count: u64,
    /// Number of `#`: the largest count gets 50, every non-zero count at least 1.
    pub bar: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct OpenEpisode {
    pub id: u64,
    pub source: String,
    pub fd: Option<i64>,
    pub begin_line: u64,
    /// From the first failure to the last event seen for it.
    pub open_for_us: i64,
    pub failures_seen: i64,
    pub wakeups: Wakeups,
    /// A new episode began on the same fd before this one resolved.
    pub abandoned: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ErrnoRow {
    pub errno: Option<i64>,
    pub name: String,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FdRow {
    pub source: String,
    pub fd: Option<i64>,
    pub count: u64,
    pub avg_us: i64,
    pub p99_us: i64,
    pub max_us: i64,
    pub avg_ns: f64,
    pub p99_ns: i64,
    pub max_ns: i64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct WriteWakeups {
    /// All write wake-ups in the input.
    pub total: u64,
    /// Write wake-ups on a socket with an episode open.
    pub during_episodes: u64,
    /// ... reporting less free space than the pending frame.
    pub low_room: u64,
    /// ... where free space or frame size was unknown.
    pub unknown_room: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Frames {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub dropped: u64,
    /// A byte total reached u64::MAX and stopped there (bogus lengths in the input).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bytes_saturated: bool,
}

/// Device-reported `wait_ns` against the timestamps (trace CSV only).
#[derive(Clone, Debug, Default, Serialize)]
pub struct WaitCheck {
    pub compared: u64,
    pub max_abs_diff_ns: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub name: String,
    /// Resolved episodes ("events" in the PR's tables).
    pub total: u64,
    pub by_retries: Vec<RetryRow>,
    pub overall: Option<Overall>,
    pub histogram: Vec<HistogramRow>,
    pub open_episodes: Vec<OpenEpisode>,
    pub errno: Vec<ErrnoRow>,
    pub per_fd: Vec<FdRow>,
    pub write_wakeups: WriteWakeups,
    pub frames: Frames,
    pub wait_check: WaitCheck,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intervals: Option<Vec<IntervalRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_ns: Option<i64>,
    pub input: InputSummary,
}
