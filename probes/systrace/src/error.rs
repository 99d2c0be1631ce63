//! What can stop a capture, each with what it was doing.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("-p {0}: no such process")]
    NoProcess(i32),
    #[error("--fd {fd}: process {pid} has no fd {fd}")]
    NoFd { pid: i32, fd: i32 },
    #[error("-o {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the trace: {0}")]
    Write(std::io::Error),
    #[error("-c {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("needs root (CAP_BPF and CAP_PERFMON) to load BPF programs")]
    NotRoot,
    #[error("no tracefs: syscall tracepoints need it; mount it with 'mount -t tracefs nodev /sys/kernel/tracing'")]
    NoTracefs,
    #[error("{what}: {message}")]
    Bpf { what: String, message: String },
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error(
        "this tracer is Linux-only (macOS: probes/syscalls.d through probes/capture.sh --syscalls)"
    )]
    NotLinux,
}

impl Error {
    /// 2 for what the user named wrongly (a flag's value), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NoProcess(_) | Error::NoFd { .. } | Error::Output { .. } => 2,
            _ => 1,
        }
    }
}
