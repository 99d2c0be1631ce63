//! Survives a front end that shrinks guest memory under us.
//!
//! Guest memory is the front end's file mapped shared; if the file is truncated after we
//! mapped it, the next access past its new end raises SIGBUS, and the default action kills
//! the daemon mid-frame (no summary, buffered trace rows lost). Sealing the memfd against
//! shrinking (see `memory.rs`) prevents that where the file allows seals, but a memfd created
//! without MFD_ALLOW_SEALING or a hugetlbfs/tmpfs file (`memory-backend-file`) does not.
//! For those, a SIGBUS inside a registered guest region replaces the whole region with
//! private zero pages (mmap MAP_FIXED over it, as Wayland compositors do for client shm
//! pools) and lets the access retry: the device reads zeros instead of dying, and the
//! session, seeing the fault count move, stops the worker and says why. A SIGBUS anywhere
//! else gets the default action, as before.
//!
//! Turning the fault into a rejected chain instead would need the faulting access to unwind
//! out of vm-memory's copy loop, which Rust cannot do from a signal handler; zero pages need
//! only one async-signal-safe syscall.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;

/// Regions remembered for the handler: a few memory tables' worth (QEMU sends at most 8
/// regions per table). Older entries are overwritten; a stale entry only matters if a
/// SIGBUS hits its range again, which then belongs to no live file mapping of ours.
const SLOTS: usize = 64;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)] // only used to initialise the array
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
};
static REGIONS: [Slot; SLOTS] = [EMPTY; SLOTS];
static NEXT: AtomicUsize = AtomicUsize::new(0);
static FAULTS: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();

/// How many guest regions were replaced by zero pages after a SIGBUS, since start.
pub fn faults() -> u64 {
    FAULTS.load(Ordering::SeqCst)
}

/// Makes `[start, start + len)` (one mapped guest region) recoverable; installs the
/// handler on first use.
pub fn register(start: *const u8, len: usize) {
    INSTALL.call_once(install);
    let i = NEXT.fetch_add(1, Ordering::SeqCst) % SLOTS;
    // Length first to 0 so the handler never pairs a new start with an old length.
    REGIONS[i].len.store(0, Ordering::SeqCst);
    REGIONS[i].start.store(start as usize, Ordering::SeqCst);
    REGIONS[i].len.store(len, Ordering::SeqCst);
}

fn install() {
    // SAFETY: a zeroed sigaction is a valid starting point; the handler is
    // async-signal-safe (atomics and mmap only).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) != 0 {
            tracing::warn!(
                "cannot install the SIGBUS guard: {}; a front end truncating guest memory \
                 would kill the daemon",
                std::io::Error::last_os_error()
            );
        }
    }
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &REGIONS {
        let len = slot.len.load(Ordering::SeqCst);
        let start = slot.start.load(Ordering::SeqCst);
        if len == 0 || addr < start || addr - start >= len {
            continue;
        }
        // SAFETY: replaces pages of our own guest mapping (which the file no longer backs)
        // with private anonymous ones at the same address; nothing else lives there.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            FAULTS.fetch_add(1, Ordering::SeqCst);
            return;
        }
        break;
    }
    // Not ours, or the patch failed: the default action on the retried access.
    // SAFETY: sigaction() is async-signal-safe; a zeroed sigaction with SIG_DFL is valid.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}
