//! Everything that can go wrong reading an input; every variant names the file.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("{file}:{line}: wrong header: expected `{expected}`, found `{found}`")]
    Header {
        file: String,
        line: u64,
        expected: String,
        found: String,
    },
    #[error("{file}:{line}: field `{field}`: {msg}")]
    Field {
        file: String,
        line: u64,
        field: &'static str,
        msg: String,
    },
    /// No newline within [`crate::input::MAX_LINE`] bytes. Not skippable under `--lenient`:
    /// finding the next newline could mean reading forever (`/dev/zero`).
    #[error("{file}:{line}: line too long (no newline in {max} bytes)")]
    LineTooLong { file: String, line: u64, max: usize },
    #[error("{file}:{line}: binary data (byte 0x{byte:02x}); neither a trace CSV nor a text log")]
    Binary { file: String, line: u64, byte: u8 },
    #[error(
        "{file}:{line}: field `ts_ns`: timestamp {ts_ns} is {back_ns} ns earlier than line {prev_line}, \
         more than the reorder window ({window_ns} ns); raise --reorder-window or use --lenient"
    )]
    OutOfOrder {
        file: String,
        line: u64,
        ts_ns: i64,
        back_ns: i64,
        prev_line: u64,
        window_ns: i64,
    },
    #[error(
        "{file}:{line}: {what} on fd {fd} without a matching enobufs_begin after an earlier episode \
         on that fd (a lost begin); use --lenient to skip and count it"
    )]
    ResolvedWithoutBegin {
        file: String,
        line: u64,
        fd: String,
        what: &'static str,
    },
    #[error("{0}")]
    Usage(String),
    /// Nothing to analyse: no trace header and no log line (an empty file or stdin).
    #[error("{file}: no trace header or log line found (empty input?)")]
    Empty { file: String },
    /// An output would overwrite an input (the same file, also through a link).
    #[error(
        "refusing to write {output}: it is the input {input} (the same file); write elsewhere"
    )]
    OutputIsInput { output: String, input: String },
    /// A flag's value cannot work with this input (a usage error, exit 2).
    #[error("{flag}: {msg}")]
    Flag { flag: &'static str, msg: String },
}

impl Error {
    pub fn io(file: &str, source: io::Error) -> Error {
        Error::Io {
            file: file.to_string(),
            source,
        }
    }

    /// The process exit code: 2 for a usage error (as for a bad flag), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::OutputIsInput { .. } | Error::Flag { .. } => 2,
            _ => 1,
        }
    }

    /// The reader of our output went away (`analyze report big.csv | head`): not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }

    /// Errors that `--lenient` turns into a skipped, counted line.
    pub fn is_line_error(&self) -> bool {
        matches!(
            self,
            Error::Field { .. }
                | Error::Binary { .. }
                | Error::OutOfOrder { .. }
                | Error::ResolvedWithoutBegin { .. }
        )
    }
}
