//! The in-process trace recorder: the trace CSV without root or a tracer. The file is one
//! `# clock mono_ns=.. wall_ns=..` line, then [`HEADER`], then one row per probe firing
//! of `dtrace/vnet.d` (the same file the DTrace and bpftrace scripts in `probes/` write).
//!
//! Rows go through a mutex into a large `BufWriter`; formatting happens on the probing
//! thread but only while recording (the probe-cost benchmark prints the per-row cost).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::probes::Row;

/// The CSV header every trace producer writes.
pub const HEADER: &str = "ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno";

pub struct Recorder {
    out: BufWriter<Box<dyn Write + Send>>,
    rows: u64,
    /// Reused line buffer.
    line: Vec<u8>,
    /// First write error; later rows are skipped and `finish` reports it.
    error: Option<io::Error>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("rows", &self.rows)
            .finish()
    }
}

/// Wall-clock nanoseconds since the Unix epoch (for the clock anchor line).
fn wall_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl Recorder {
    /// Creates (truncates) `path` and writes the clock anchor line and the header.
    pub fn create(path: impl AsRef<Path>) -> io::Result<Recorder> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = File::create(path).map_err(|e| {
            io::Error::new(e.kind(), format!("creating trace {}: {e}", path.display()))
        })?;
        Recorder::from_writer(Box::new(file))
    }

    /// Records into any writer (tests use a shared buffer).
    pub fn from_writer(w: Box<dyn Write + Send>) -> io::Result<Recorder> {
        let mut out = BufWriter::with_capacity(1 << 20, w);
        let mono = crate::probes::mono_ns();
        writeln!(out, "# clock mono_ns={mono} wall_ns={}", wall_ns())?;
        writeln!(out, "{HEADER}")?;
        Ok(Recorder {
            out,
            rows: 0,
            line: Vec::with_capacity(128),
            error: None,
        })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn write_row(&mut self, row: &Row) {
        if self.error.is_some() {
            return;
        }
        self.line.clear();
        format_row(&mut self.line, row);
        if let Err(e) = self.out.write_all(&self.line) {
            self.error = Some(e);
        } else {
            self.rows += 1;
        }
    }

    /// Flushes everything; returns the number of rows written.
    pub fn finish(mut self) -> io::Result<u64> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.out.flush()?;
        Ok(self.rows)
    }
}

/// Appends the decimal form of `v` (no `fmt` machinery: this runs once per field of every
/// recorded row).
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

/// Formats one row in the column order of [`HEADER`], newline included.
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

/// Formats one row in the column order of [`HEADER`].
pub fn write_csv_row(out: &mut impl Write, r: &Row) -> io::Result<()> {
    let mut buf = Vec::with_capacity(96);
    format_row(&mut buf, r);
    out.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::Probe;

    #[test]
    fn rows_format_every_integer_and_empty_fields() {
        let r = Row {
            ts_ns: 1_234_567_890_123,
            tid: 42,
            probe: Probe::EnobufsResolved,
            fd: Some(0),
            queue: None,
            len: Some(65226),
            data: Some(-1),
            retries: Some(i64::MAX),
            wait_ns: Some(i64::MIN),
            errno: None,
        };
        let mut b = Vec::new();
        format_row(&mut b, &r);
        let want = format!(
            "1234567890123,42,enobufs_resolved,0,,65226,-1,{},{},\n",
            i64::MAX,
            i64::MIN
        );
        assert_eq!(String::from_utf8(b).unwrap(), want);
    }
}
