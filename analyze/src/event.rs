//! The one event type both inputs (trace CSV rows and reference VMM log lines) turn into.

/// What happened: one of the probes of `dtrace/vnet.d`, also what a reference VMM log line
/// is turned into. The schema's own type, so analyze and the device cannot disagree.
pub use vnet_trace_schema::Probe as Kind;

/// One probe firing or one recognised log line.
///
/// Fields not applicable to the probe are `None` (an empty CSV field). For logs, `ts_ns` is
/// wall-clock nanoseconds since the Unix epoch; for traces it is the producer's monotonic clock
/// (see [`crate::input::SourceInfo::wall_offset_ns`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub ts_ns: i64,
    pub tid: Option<i64>,
    pub kind: Kind,
    pub fd: Option<i64>,
    pub queue: Option<i64>,
    pub len: Option<i64>,
    pub data: Option<i64>,
    pub retries: Option<i64>,
    pub wait_ns: Option<i64>,
    pub errno: Option<i64>,
    /// Index of the input file this came from (position in the argument list).
    pub file: u32,
    /// 1-based line number in that file, for error messages and timelines.
    pub line: u64,
}

impl Event {
    pub fn new(kind: Kind, ts_ns: i64) -> Event {
        Event {
            ts_ns,
            tid: None,
            kind,
            fd: None,
            queue: None,
            len: None,
            data: None,
            retries: None,
            wait_ns: None,
            errno: None,
            file: 0,
            line: 0,
        }
    }
}

/// errno values as macOS and Linux number them; a trace does not say which OS wrote it, and
/// the values that matter here do not collide between the two in a send() context.
pub fn errno_name(errno: i64) -> String {
    match errno {
        55 | 105 => "ENOBUFS".to_string(),
        35 | 11 => "EAGAIN".to_string(),
        32 => "EPIPE".to_string(),
        40 | 90 => "EMSGSIZE".to_string(),
        n => format!("errno {n}"),
    }
}

/// The errno the log parser assigns to a named error (macOS numbering: libkrun's
/// ENOBUFS episodes are a macOS phenomenon).
pub fn errno_from_name(name: &str) -> Option<i64> {
    match name {
        "ENOBUFS" => Some(55),
        "EAGAIN" | "EWOULDBLOCK" => Some(35),
        _ => None,
    }
}
