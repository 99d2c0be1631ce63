//! A counting wake-up fd: eventfd on Linux, a non-blocking pipe on macOS.
//! Queue kicks, interrupts and the worker's stop request all use it.
// INTERFACE (fixed, front ends depend on it):
//   Notifier::new() -> io::Result<Notifier>
//   Notifier::from_fd(OwnedFd) -> Notifier          (an eventfd handed over by QEMU)
//   fn notify(&self) -> io::Result<()>
//   fn drain(&self) -> io::Result<u64>              (non-blocking; 0 when nothing pending)
//   fn wait_timeout(&self, Duration) -> io::Result<bool>  (blocking wait, true when notified)
//   fn try_clone(&self) -> io::Result<Notifier>
//   impl AsRawFd
