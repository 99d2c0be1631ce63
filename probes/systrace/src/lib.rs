//! vnet-systrace: the syscall-level capture of `probes/syscalls.bt` (the trace CSV of an
//! unmodified VMM or proxy, from its unix-socket system calls) as one native loader. The BPF
//! programs (`src/bpf/systrace.bpf.c`) apply the script's rules; each row leaves the kernel
//! as one record in a BPF ring buffer, read on a timer and written as CSV here, with no
//! bpftrace, no perf ring of text lines and no awk in between (probes/README.md, "Cost").
//!
//! `probes/capture.sh --syscalls` runs it when it is built, bpftrace's script otherwise.

pub mod cli;
pub mod error;
pub mod record;
#[cfg(target_os = "linux")]
pub mod target;
#[cfg(target_os = "linux")]
pub mod tracer;
