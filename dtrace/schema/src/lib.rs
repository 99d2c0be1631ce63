//! The trace schema every producer and reader shares: the probes of `dtrace/vnet.d` (the USDT
//! provider beside this crate), the trace CSV header, and which CSV column each probe argument
//! goes to. The device's recorder writes rows with it, `analyze` reads them with it, and a test
//! (`tests/vnet_d.rs`) fails when `vnet.d` and this crate disagree.
//!
//! The CSV: a `# clock mono_ns=<ts> wall_ns=<unix ns>` comment, the [`HEADER`], then one row
//! per probe firing; a column the probe does not fill is empty. Producers may append columns,
//! never reorder them.

use std::io::{self, Write};

/// The CSV header line (without the newline).
pub const HEADER: &str = "ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno";

/// The CSV columns, in header order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Column {
    /// Monotonic nanoseconds (DTrace `timestamp`, bpftrace `nsecs`, `CLOCK_MONOTONIC`).
    TsNs,
    /// The thread that fired the probe.
    Tid,
    /// The probe name.
    Probe,
    Fd,
    Queue,
    Len,
    Data,
    Retries,
    WaitNs,
    Errno,
}

impl Column {
    pub const ALL: [Column; 10] = [
        Column::TsNs,
        Column::Tid,
        Column::Probe,
        Column::Fd,
        Column::Queue,
        Column::Len,
        Column::Data,
        Column::Retries,
        Column::WaitNs,
        Column::Errno,
    ];

    /// The header's name for the column.
    pub fn name(self) -> &'static str {
        COLUMN_NAMES[self as usize]
    }

    /// Position in the row (0-based).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// [`HEADER`] split into its column names.
pub const COLUMN_NAMES: [&str; 10] = [
    "ts_ns", "tid", "probe", "fd", "queue", "len", "data", "retries", "wait_ns", "errno",
];

/// The probes of `vnet.d`, in its order. Serialised as its name (`enobufs_begin`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
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

impl Probe {
    pub const ALL: [Probe; 11] = [
        Probe::EnobufsBegin,
        Probe::EnobufsRetry,
        Probe::EnobufsResolved,
        Probe::KeventWrite,
        Probe::KeventRead,
        Probe::TimerFired,
        Probe::TxFrame,
        Probe::RxFrame,
        Probe::GuestKick,
        Probe::GuestIrq,
        Probe::FrameDrop,
    ];

    /// Wake-ups are what can trigger a retry of a deferred frame.
    pub fn is_wakeup(self) -> bool {
        matches!(
            self,
            Probe::KeventWrite | Probe::KeventRead | Probe::TimerFired | Probe::GuestKick
        )
    }

    /// The name in `vnet.d` and in the CSV's `probe` column.
    pub fn name(self) -> &'static str {
        match self {
            Probe::EnobufsBegin => "enobufs_begin",
            Probe::EnobufsRetry => "enobufs_retry",
            Probe::EnobufsResolved => "enobufs_resolved",
            Probe::KeventWrite => "kevent_write",
            Probe::KeventRead => "kevent_read",
            Probe::TimerFired => "timer_fired",
            Probe::TxFrame => "tx_frame",
            Probe::RxFrame => "rx_frame",
            Probe::GuestKick => "guest_kick",
            Probe::GuestIrq => "guest_irq",
            Probe::FrameDrop => "frame_drop",
        }
    }

    /// Name to probe. Dispatches on length and one distinguishing byte before comparing:
    /// readers call this once per row.
    #[inline]
    pub fn from_name(name: &[u8]) -> Option<Probe> {
        let probe = match (name.len(), *name.first()?) {
            (8, b't') => Probe::TxFrame,
            (8, b'r') => Probe::RxFrame,
            (12, _) => Probe::KeventWrite,
            (11, b'k') => Probe::KeventRead,
            (11, b't') => Probe::TimerFired,
            (10, b'g') => Probe::GuestKick,
            (10, b'f') => Probe::FrameDrop,
            (9, _) => Probe::GuestIrq,
            (13, _) if name[8] == b'r' => Probe::EnobufsRetry,
            (13, _) => Probe::EnobufsBegin,
            (16, _) => Probe::EnobufsResolved,
            _ => return None,
        };
        (probe.name().as_bytes() == name).then_some(probe)
    }

    /// The column each of the probe's `vnet.d` arguments goes to, in argument order.
    pub fn arg_columns(self) -> &'static [Column] {
        use Column::{Data, Errno, Fd, Len, Queue, Retries, WaitNs};
        match self {
            Probe::EnobufsBegin => &[Fd, Len, Errno], // fd, frame_len, err
            Probe::EnobufsRetry => &[Fd, Retries, Errno], // fd, attempt, err
            Probe::EnobufsResolved => &[Fd, Retries, WaitNs, Len], // fd, retries, wait_ns, frame_len
            Probe::KeventWrite | Probe::KeventRead => &[Fd, Data], // fd, data
            Probe::TimerFired => &[Data],                          // delay_us
            Probe::TxFrame | Probe::RxFrame => &[Fd, Len],         // fd, len
            Probe::GuestKick | Probe::GuestIrq => &[Queue],        // queue
            Probe::FrameDrop => &[Fd, Len, Data],                  // fd, len, reason
        }
    }

    /// Whether rows of this probe fill `column` (the fixed ts_ns, tid and probe always).
    pub fn fills(self, column: Column) -> bool {
        matches!(column, Column::TsNs | Column::Tid | Column::Probe)
            || self.arg_columns().contains(&column)
    }
}

/// One trace row; `None` is an empty field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub ts_ns: u64,
    pub tid: i64,
    pub probe: Probe,
    pub fd: Option<i64>,
    pub queue: Option<i64>,
    pub len: Option<i64>,
    pub data: Option<i64>,
    pub retries: Option<i64>,
    pub wait_ns: Option<i64>,
    pub errno: Option<i64>,
}

impl Row {
    /// A row with every argument column empty.
    pub fn new(probe: Probe, ts_ns: u64, tid: i64) -> Row {
        Row {
            ts_ns,
            tid,
            probe,
            fd: None,
            queue: None,
            len: None,
            data: None,
            retries: None,
            wait_ns: None,
            errno: None,
        }
    }

    /// A row from the probe's arguments in `vnet.d` order, each put in its column. Extra
    /// arguments beyond the probe's are ignored; missing ones stay empty.
    pub fn from_args(probe: Probe, ts_ns: u64, tid: i64, args: &[i64]) -> Row {
        let mut row = Row::new(probe, ts_ns, tid);
        for (&column, &value) in probe.arg_columns().iter().zip(args) {
            *row.slot(column).expect("argument columns have slots") = Some(value);
        }
        row
    }

    /// The field of an argument column (`None` for ts_ns, tid and probe).
    pub fn slot(&mut self, column: Column) -> Option<&mut Option<i64>> {
        Some(match column {
            Column::Fd => &mut self.fd,
            Column::Queue => &mut self.queue,
            Column::Len => &mut self.len,
            Column::Data => &mut self.data,
            Column::Retries => &mut self.retries,
            Column::WaitNs => &mut self.wait_ns,
            Column::Errno => &mut self.errno,
            Column::TsNs | Column::Tid | Column::Probe => return None,
        })
    }
}

/// The first line of a trace: anchors the monotonic clock to wall-clock time.
pub fn clock_comment(mono_ns: u64, wall_ns: u128) -> String {
    format!("# clock mono_ns={mono_ns} wall_ns={wall_ns}")
}

/// Appends the decimal form of `v` (no `fmt` machinery: recorders call this for every field).
fn push_int(buf: &mut Vec<u8>, v: i64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        buf.push(b'-');
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// Appends one row in [`HEADER`] order, newline included.
pub fn format_row(buf: &mut Vec<u8>, r: &Row) {
    push_int(buf, r.ts_ns as i64);
    buf.push(b',');
    push_int(buf, r.tid);
    buf.push(b',');
    buf.extend_from_slice(r.probe.name().as_bytes());
    for v in [r.fd, r.queue, r.len, r.data, r.retries, r.wait_ns, r.errno] {
        buf.push(b',');
        if let Some(v) = v {
            push_int(buf, v);
        }
    }
    buf.push(b'\n');
}

/// Writes one row in [`HEADER`] order, newline included.
pub fn write_row(out: &mut impl Write, r: &Row) -> io::Result<()> {
    let mut buf = Vec::with_capacity(96);
    format_row(&mut buf, r);
    out.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_serialises_as_its_name() {
        for p in Probe::ALL {
            assert_eq!(serde_json::to_value(p).unwrap(), p.name());
            assert_eq!(Probe::from_name(p.name().as_bytes()), Some(p));
        }
    }

    #[test]
    fn header_is_the_column_names() {
        assert_eq!(HEADER, COLUMN_NAMES.join(","));
        for (i, c) in Column::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(c.name(), COLUMN_NAMES[i]);
        }
    }

    #[test]
    fn names_round_trip_and_near_misses_are_rejected() {
        for p in Probe::ALL {
            assert_eq!(Probe::from_name(p.name().as_bytes()), Some(p));
            let mut wrong = p.name().as_bytes().to_vec();
            *wrong.last_mut().unwrap() ^= 1;
            assert_eq!(Probe::from_name(&wrong), None, "{}", p.name());
        }
        for bad in [&b""[..], b"tx_frames", b"enobufs_retrx", b"guest_kic"] {
            assert_eq!(Probe::from_name(bad), None);
        }
    }

    #[test]
    fn args_fill_their_columns_and_format_in_header_order() {
        let r = Row::from_args(
            Probe::EnobufsResolved,
            1_234_567_890_123,
            42,
            &[0, 3, i64::MIN, 65226],
        );
        assert_eq!(
            (r.fd, r.retries, r.wait_ns, r.len),
            (Some(0), Some(3), Some(i64::MIN), Some(65226))
        );
        assert_eq!((r.queue, r.data, r.errno), (None, None, None));
        let mut b = Vec::new();
        format_row(&mut b, &r);
        assert_eq!(
            String::from_utf8(b).unwrap(),
            format!(
                "1234567890123,42,enobufs_resolved,0,,65226,,3,{},\n",
                i64::MIN
            )
        );
        // Every integer shape the recorder meets: 0, negative, both extremes, empty.
        let r = Row {
            data: Some(-1),
            retries: Some(i64::MAX),
            ..Row::from_args(Probe::EnobufsResolved, u64::MAX >> 1, -7, &[0, 3, 9, 65226])
        };
        let mut b = Vec::new();
        write_row(&mut b, &r).unwrap();
        assert_eq!(
            String::from_utf8(b).unwrap(),
            format!(
                "{},-7,enobufs_resolved,0,,65226,-1,{},9,\n",
                u64::MAX >> 1,
                i64::MAX
            )
        );
        assert!(Probe::GuestKick.fills(Column::Queue));
        assert!(!Probe::GuestKick.fills(Column::Fd));
        assert_eq!(clock_comment(5, 7), "# clock mono_ns=5 wall_ns=7");
    }
}
