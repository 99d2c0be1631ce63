//! The in-process trace recorder: the trace CSV without root or a tracer. The file is one
//! `# clock mono_ns=.. wall_ns=..` line, then [`HEADER`], then one row per probe firing
//! of `dtrace/vnet.d` (the same file the DTrace and bpftrace scripts in `probes/` write).
//! The header, the row layout and the clock line come from the trace schema crate
//! (`dtrace/schema`), so the recorder cannot drift from what `analyze` reads.
//!
//! Rows go through a mutex into a large `BufWriter`; formatting happens on the probing
//! thread but only while recording (the probe-cost benchmark prints the per-row cost).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::probes::Row;

pub use vnet_trace_schema::{clock_comment, format_row, write_row, HEADER};

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
        writeln!(out, "{}", clock_comment(mono, wall_ns()))?;
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
