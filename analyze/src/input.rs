//! Opening inputs (files, `-` for stdin, gzip detected by its magic bytes), splitting them
//! into lines without copying, and telling a trace CSV from a reference VMM log.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use crate::error::Error;

/// What kind of input a file turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Trace,
    Log,
}

/// Per-file facts the renderers need.
#[derive(Clone, Debug)]
pub struct SourceInfo {
    /// The name shown in messages: the path as given, or `<stdin>`.
    pub name: String,
    pub format: Option<Format>,
    /// Add to an event's `ts_ns` to get Unix-epoch nanoseconds, when the file says so (the
    /// trace's `# clock` comment; logs carry wall-clock time already, offset 0).
    pub wall_offset_ns: Option<i64>,
}

impl SourceInfo {
    pub fn wall_ns(&self, ts_ns: i64) -> Option<i64> {
        self.wall_offset_ns.map(|o| ts_ns + o)
    }
}

pub fn display_name(path: &Path) -> String {
    if path.as_os_str() == "-" {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    }
}

/// Opens a path (`-` = stdin), transparently un-gzipping when the data starts with the gzip
/// magic (so `trace.csv.gz`, a renamed file and `zcat`-less pipes all work).
pub fn open(path: &Path) -> Result<Box<dyn Read>, Error> {
    let name = display_name(path);
    let raw: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(File::open(path).map_err(|e| Error::io(&name, e))?)
    };
    let mut buffered = BufReader::with_capacity(1 << 16, raw);
    let head = buffered.fill_buf().map_err(|e| Error::io(&name, e))?;
    if head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(buffered)))
    } else {
        Ok(Box::new(buffered))
    }
}

/// The longest line read: a trace row is under 100 bytes and a log line a few hundred, so a
/// megabyte without a newline is not text (`/dev/zero`, a gzip bomb, a binary file) and must
/// not grow the buffer until the allocator gives up.
pub const MAX_LINE: usize = 1 << 20;

/// A field or line as error messages quote it: `"text"`, or its first bytes and its length
/// when long (a megabyte of garbage must not become a megabyte of error message).
pub fn quote(bytes: &[u8]) -> String {
    const SHOWN: usize = 40;
    if bytes.len() <= SHOWN {
        format!("{:?}", String::from_utf8_lossy(bytes))
    } else {
        format!(
            "{:?}... ({} bytes)",
            String::from_utf8_lossy(&bytes[..SHOWN]),
            bytes.len()
        )
    }
}

/// Like [`quote`] for text shown without quotes (a header in backticks): unchanged up to 120
/// bytes, which any real header fits in.
pub fn shorten(text: &str) -> String {
    const SHOWN: usize = 120;
    if text.len() <= SHOWN {
        return text.to_string();
    }
    let mut cut = SHOWN;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} bytes)", &text[..cut], text.len())
}

/// Calls `f(line, line_no, ended_with_newline)` for every line, without the line terminator
/// (`\n` or `\r\n`). Lines are borrowed from a large reusable buffer, so no per-line allocation.
pub fn for_each_line<F>(reader: &mut dyn Read, name: &str, mut f: F) -> Result<(), Error>
where
    F: FnMut(&[u8], u64, bool) -> Result<bool, Error>,
{
    const CHUNK: usize = MAX_LINE;
    let mut buf: Vec<u8> = vec![0; CHUNK];
    let mut start = 0usize; // first unconsumed byte
    let mut end = 0usize; // one past the last valid byte
    let mut line_no = 0u64;
    loop {
        if end == buf.len() {
            if start > 0 {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            } else {
                return Err(Error::LineTooLong {
                    file: name.to_string(),
                    line: line_no + 1,
                    max: MAX_LINE,
                });
            }
        }
        let n = match reader.read(&mut buf[end..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(name, e)),
        };
        if n == 0 {
            if start < end {
                line_no += 1;
                let line = trim_cr(&buf[start..end]);
                f(line, line_no, false)?;
            }
            return Ok(());
        }
        let scan_from = end;
        end += n;
        let mut pos = scan_from;
        while let Some(i) = memchr::memchr(b'\n', &buf[pos..end]) {
            let nl = pos + i;
            line_no += 1;
            if !f(trim_cr(&buf[start..nl]), line_no, true)? {
                return Ok(());
            }
            start = nl + 1;
            pos = start;
        }
        if start == end {
            start = 0;
            end = 0;
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    match line.last() {
        Some(b'\r') => &line[..line.len() - 1],
        _ => line,
    }
}

/// Bytes that never occur in a text trace or log; seeing one means binary data.
pub fn first_binary_byte(line: &[u8]) -> Option<u8> {
    line.iter()
        .copied()
        .find(|&b| b == 0 || (b < 0x20 && b != b'\t') || b == 0x7f)
        .or_else(|| {
            if std::str::from_utf8(line).is_err() {
                line.iter().copied().find(|&b| b >= 0x80)
            } else {
                None
            }
        })
}

/// Decides the format from the first line that is not blank and not a `#` comment.
pub fn detect(line: &[u8]) -> Format {
    let is_csv_header_like = line.contains(&b',')
        && line
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b',' || b == b' ');
    let first_field_numeric = line
        .split(|&b| b == b',')
        .next()
        .is_some_and(|f| !f.is_empty() && f.iter().all(|b| b.is_ascii_digit()))
        && line.iter().filter(|&&b| b == b',').count() >= 9;
    if line.starts_with(b"ts_ns") || is_csv_header_like || first_field_numeric {
        Format::Trace
    } else {
        Format::Log
    }
}
