//! One row as the BPF programs put it in the ring (`struct row` in src/bpf/systrace.bpf.c),
//! and its trace CSV row.
use vnet_trace_schema::{Probe, Row};

/// Bytes per record: u64 ts_ns, u32 tid, u32 probe, then i64 fd, a, b, c.
pub const RECORD_SIZE: usize = 48;

/// A record's fields. What `a`, `b` and `c` hold depends on the probe: see [`Record::row`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub ts_ns: u64,
    pub tid: u32,
    pub probe: u32,
    pub fd: i64,
    pub a: i64,
    pub b: i64,
    pub c: i64,
}

impl Record {
    /// The record in `bytes` (native endian, as the kernel wrote it); `None` when it is not
    /// [`RECORD_SIZE`] bytes long.
    pub fn parse(bytes: &[u8]) -> Option<Record> {
        let bytes: &[u8; RECORD_SIZE] = bytes.try_into().ok()?;
        let u64_at = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        Some(Record {
            ts_ns: u64_at(0),
            tid: u32_at(8),
            probe: u32_at(12),
            fd: u64_at(16) as i64,
            a: u64_at(24) as i64,
            b: u64_at(32) as i64,
            c: u64_at(40) as i64,
        })
    }

    /// The bytes the kernel would have written for this record (tests build rings with it).
    pub fn to_bytes(self) -> [u8; RECORD_SIZE] {
        let mut out = [0u8; RECORD_SIZE];
        out[0..8].copy_from_slice(&self.ts_ns.to_ne_bytes());
        out[8..12].copy_from_slice(&self.tid.to_ne_bytes());
        out[12..16].copy_from_slice(&self.probe.to_ne_bytes());
        for (i, v) in [self.fd, self.a, self.b, self.c].into_iter().enumerate() {
            out[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_ne_bytes());
        }
        out
    }

    /// The trace row, or `None` for a probe number the BPF side does not make. The numbers
    /// and what a/b/c mean are those of syscalls.bt's row lines (probes/syscalls-rows.awk):
    /// 1 enobufs_begin (len, errno), 2 enobufs_retry (retries, errno), 3 enobufs_resolved
    /// (len, retries, wait_ns), 4 tx_frame (len), 5 rx_frame (len), 6 kevent_read (data),
    /// 7 kevent_write (data).
    pub fn row(&self) -> Option<Row> {
        let (probe, args): (Probe, &[i64]) = match self.probe {
            1 => (Probe::EnobufsBegin, &[self.fd, self.a, self.b]),
            2 => (Probe::EnobufsRetry, &[self.fd, self.a, self.b]),
            3 => (Probe::EnobufsResolved, &[self.fd, self.b, self.c, self.a]),
            4 => (Probe::TxFrame, &[self.fd, self.a]),
            5 => (Probe::RxFrame, &[self.fd, self.a]),
            6 => (Probe::KeventRead, &[self.fd, self.a]),
            7 => (Probe::KeventWrite, &[self.fd, self.a]),
            _ => return None,
        };
        Some(Row::from_args(probe, self.ts_ns, i64::from(self.tid), args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_parses_back_from_its_bytes() {
        let r = Record {
            ts_ns: u64::MAX - 3,
            tid: 77,
            probe: 3,
            fd: -1,
            a: 65536,
            b: 4,
            c: i64::MIN,
        };
        assert_eq!(Record::parse(&r.to_bytes()), Some(r));
        assert_eq!(Record::parse(&r.to_bytes()[..47]), None);
        assert_eq!(Record::parse(&[0u8; 49]), None);
    }

    #[test]
    fn resolved_puts_len_retries_and_wait_in_their_columns() {
        let r = Record {
            ts_ns: 10,
            tid: 2,
            probe: 3,
            fd: 5,
            a: 1514,
            b: 7,
            c: 900,
        };
        let row = r.row().unwrap();
        assert_eq!(
            (row.fd, row.len, row.retries, row.wait_ns, row.errno),
            (Some(5), Some(1514), Some(7), Some(900), None)
        );
    }

    #[test]
    fn an_unknown_probe_number_is_no_row() {
        let r = Record {
            ts_ns: 1,
            tid: 1,
            probe: 8,
            fd: 0,
            a: 0,
            b: 0,
            c: 0,
        };
        assert_eq!(r.row(), None);
        assert_eq!(Record { probe: 0, ..r }.row(), None);
    }
}
