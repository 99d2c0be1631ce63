//! The one event type both inputs (trace CSV rows and reference VMM log lines) turn into.

use serde::Serialize;
use vnet_trace_schema::Probe;

/// What happened: one of the probes of `dtrace/vnet.d` (see the `vnet-trace-schema` crate),
/// also what a reference VMM log line is turned into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    EnobufsBegin,
    EnobufsRetry,
    EnobufsResolved,
    KeventWrite,
    KeventRead,
    TimerFired,
    TxFrame,
    RxFrame,
    GuestKick,
    GuestIrq,
    FrameDrop,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::EnobufsBegin,
        Kind::EnobufsRetry,
        Kind::EnobufsResolved,
        Kind::KeventWrite,
        Kind::KeventRead,
        Kind::TimerFired,
        Kind::TxFrame,
        Kind::RxFrame,
        Kind::GuestKick,
        Kind::GuestIrq,
        Kind::FrameDrop,
    ];

    /// The schema's probe (same order as [`Kind::ALL`]; a test checks it).
    pub fn probe(self) -> Probe {
        Probe::ALL[self as usize]
    }

    /// The probe name as written in the trace CSV.
    pub fn probe_name(self) -> &'static str {
        self.probe().name()
    }

    /// Probe name to kind (once per trace row).
    #[inline]
    pub fn from_probe_name(name: &[u8]) -> Option<Kind> {
        Probe::from_name(name).map(|p| Kind::ALL[p as usize])
    }

    /// Wake-ups are what can trigger a retry of a deferred frame.
    pub fn is_wakeup(self) -> bool {
        matches!(
            self,
            Kind::KeventWrite | Kind::KeventRead | Kind::TimerFired | Kind::GuestKick
        )
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_the_schema_probes_in_order() {
        assert_eq!(Kind::ALL.len(), Probe::ALL.len());
        for (k, p) in Kind::ALL.iter().zip(Probe::ALL) {
            assert_eq!(k.probe(), p);
            assert_eq!(Kind::from_probe_name(p.name().as_bytes()), Some(*k));
        }
    }
}
