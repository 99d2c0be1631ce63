//! The in-process trace recorder: the trace CSV of design.md without root or a tracer.
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
        if let Err(e) = write_csv_row(&mut self.out, row) {
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

fn field(out: &mut impl Write, v: Option<i64>) -> io::Result<()> {
    match v {
        Some(v) => write!(out, ",{v}"),
        None => out.write_all(b","),
    }
}

/// Formats one row in the column order of [`HEADER`].
pub fn write_csv_row(out: &mut impl Write, r: &Row) -> io::Result<()> {
    write!(out, "{},{},{}", r.ts_ns, r.tid, r.probe.name())?;
    for v in [r.fd, r.queue, r.len, r.data, r.retries, r.wait_ns, r.errno] {
        field(out, v)?;
    }
    out.write_all(b"\n")
}
