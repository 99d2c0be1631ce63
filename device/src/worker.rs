//! The device worker: one thread, one event loop.
// INTERFACE (fixed, front ends depend on it):
//   pub struct WorkerSetup {
//       pub mem: vm_memory::GuestMemoryAtomic<vm_memory::GuestMemoryMmap>,
//       pub rx: virtio_queue::Queue, pub tx: virtio_queue::Queue,  // configured and ready
//       pub rx_kick: Notifier, pub tx_kick: Notifier,
//       pub rx_call: Notifier, pub tx_call: Notifier,
//       pub features: u64,             // negotiated: EVENT_IDX, MRG_RXBUF read from here
//       pub backend: Box<dyn Backend>,
//       pub options: WorkerOptions,
//       pub metrics: Arc<Metrics>,
//   }
//   pub struct WorkerOptions { pub retry_delay: Option<Option<Duration>> /* override */,
//       pub lose_write_events: bool /* fault: ignore writable events while a frame is deferred */ } (Default)
//   pub fn spawn(setup: WorkerSetup) -> io::Result<WorkerHandle>
//   impl WorkerHandle { pub fn stop(&self); pub fn is_finished(&self) -> bool;
//       pub fn join(self) -> Result<WorkerExit, WorkerError>; pub fn metrics(&self) -> Arc<Metrics> }
//   pub struct WorkerExit { pub rx: Queue, pub tx: Queue, pub reason: ExitReason }
//   pub enum ExitReason { Stopped, PeerGone }
//   #[derive(thiserror::Error)] pub enum WorkerError { ... }
