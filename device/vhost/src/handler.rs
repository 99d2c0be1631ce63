//! The vhost-user device state: what QEMU has told us so far, and when that is enough to
//! run the worker.
//!
//! A ring is started by SET_VRING_KICK and stopped by GET_VRING_BASE (vhost-user spec);
//! with VHOST_USER_F_PROTOCOL_FEATURES negotiated it also needs SET_VRING_ENABLE. The
//! worker runs while both rings are started and enabled. QEMU sends SET_VRING_ENABLE
//! before SET_FEATURES; such an enable is kept and applied once the features are known.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserShMemConfig, VhostUserSharedMsg,
    VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Backend as BackendChannel, Error as VuError, GpuBackend, Result as VuResult,
    VhostUserBackendReqHandlerMut, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::VhostUserMemoryRegionBase;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use super::memory::{self, RegionMap};
use super::shared_backend::SharedBackend;
use vnet_device::backend::{self, Backend, BackendOptions, BackendSpec};
use vnet_device::metrics::Metrics;
use vnet_device::net::{
    DEVICE_FEATURES, FEATURES_CSUM_OFFLOADS, FEATURES_GUEST_TSO, FEATURES_HOST_TSO, RX_QUEUE,
    TX_QUEUE,
};
use vnet_device::notify::Notifier;
use vnet_device::worker::{self, ExitReason, WorkerHandle, WorkerOptions, WorkerSetup};

/// Largest ring QEMU may configure (its virtio-net maximum).
pub const MAX_QUEUE_SIZE: u16 = 1024;
pub const NUM_QUEUES: usize = 2;

/// What we offer: the device's virtio features plus vhost-user protocol negotiation.
pub const OFFERED_FEATURES: u64 =
    DEVICE_FEATURES | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// No REPLY_ACK (QEMU then syncs with GET_FEATURES), no MQ (one queue pair), no CONFIG
/// (QEMU serves the MAC from its own `mac=` property).
pub const OFFERED_PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::empty();

fn handler_err(msg: impl Into<String>) -> VuError {
    VuError::ReqHandlerError(io::Error::other(msg.into()))
}

#[derive(Default)]
struct Ring {
    size: u16,
    /// (desc, avail, used) in QEMU's address space; translated when the worker starts.
    addrs: Option<(u64, u64, u64)>,
    base: u16,
    kick: Option<OwnedFd>,
    call: Option<OwnedFd>,
    err: Option<File>,
    started: bool,
    enabled: bool,
    /// An enable that arrived before SET_FEATURES.
    early_enable: Option<bool>,
}

struct Running {
    handle: WorkerHandle,
    /// The fd numbers the worker signals; a new call fd is dup2()ed onto them in place.
    call_fds: [RawFd; NUM_QUEUES],
}

/// Handshake facts for the summary and the tests.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HandshakeStats {
    pub acked_features: Option<u64>,
    pub acked_protocol_features: u64,
    pub early_enables: u32,
    pub worker_starts: u32,
    pub worker_stops: u32,
    pub call_fd_swaps: u32,
    pub mem_regions: usize,
    pub last_exit: Option<String>,
    /// Guest regions lost to a front end truncating their file (see `sigbus.rs`).
    pub memory_faults: u64,
}

pub struct VhostNetHandler {
    /// Connected at start-up (a missing proxy fails before QEMU connects) and kept across
    /// worker restarts.
    backend: SharedBackend,
    worker_options: WorkerOptions,
    metrics: Arc<Metrics>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    table: Vec<RegionMap>,
    rings: [Ring; NUM_QUEUES],
    running: Option<Running>,
    stats: HandshakeStats,
    /// `sigbus::faults()` when we last looked.
    faults_seen: u64,
    /// What GET_FEATURES answers: [`OFFERED_FEATURES`], less the offloads
    /// [`VhostNetHandler::without_checksum_offload`], [`VhostNetHandler::without_tso`] and
    /// [`VhostNetHandler::without_rx_coalescing`] withdraw.
    offered: u64,
}

impl VhostNetHandler {
    pub fn new(
        proxy: &BackendSpec,
        backend_opts: &BackendOptions,
        worker_options: WorkerOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, backend::BackendError> {
        let b = backend::connect(proxy, backend_opts)?;
        Ok(Self::with_backend(b, worker_options, metrics))
    }

    /// With an already connected backend (tests hand in one end of a socketpair).
    pub fn with_backend(
        backend: Box<dyn Backend>,
        worker_options: WorkerOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        VhostNetHandler {
            backend: SharedBackend::new(backend),
            worker_options,
            metrics,
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            table: Vec::new(),
            rings: Default::default(),
            running: None,
            stats: HandshakeStats::default(),
            faults_seen: crate::sigbus::faults(),
            offered: OFFERED_FEATURES,
        }
    }

    /// Offers neither CSUM nor GUEST_CSUM (`vnet-vhost --no-checksum-offload`): the guest
    /// then sums and verifies every checksum itself, as behind QEMU's `-netdev stream`. For
    /// comparing, and for hosts where the guest's CPU is cheaper than the device's. TSO
    /// (HOST_TSO4/6) goes too, as it needs CSUM, and so does the receive coalescing:
    /// GUEST_TSO4/6 require GUEST_CSUM (virtio spec 5.1.3.1).
    pub fn without_checksum_offload(mut self) -> Self {
        self.offered &= !FEATURES_CSUM_OFFLOADS;
        self
    }

    /// Offers no TX segmentation offload (`vnet-vhost --no-tso`): the guest cuts its TCP
    /// segments to the MTU itself, as behind QEMU's `-netdev stream`.
    pub fn without_tso(mut self) -> Self {
        self.offered &= !FEATURES_HOST_TSO;
        self
    }

    /// Offers neither GUEST_TSO4 nor GUEST_TSO6 (`vnet-vhost --no-rx-coalescing`): every
    /// frame from the proxy reaches the guest as it came, checksum offload or not.
    pub fn without_rx_coalescing(mut self) -> Self {
        self.offered &= !FEATURES_GUEST_TSO;
        self
    }

    pub fn stats(&self) -> HandshakeStats {
        self.stats.clone()
    }

    pub fn features_set(&self) -> bool {
        self.stats.acked_features.is_some()
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The worker ended on its own (the proxy went away).
    pub fn worker_finished(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| r.handle.is_finished())
    }

    /// After a SIGBUS in guest memory the affected region reads as zeros: the data path
    /// stops, and stays stopped until the front end sends a new memory table.
    pub fn check_memory_faults(&mut self) {
        let now = crate::sigbus::faults();
        if now == self.faults_seen {
            return;
        }
        self.stats.memory_faults += now - self.faults_seen;
        self.faults_seen = now;
        tracing::error!(
            "guest memory shrank under the device (the front end truncated a region's file): \
             stopping the data path until the next SET_MEM_TABLE"
        );
        self.stop_worker();
        self.table.clear();
        self.stats.mem_regions = 0;
    }

    fn protocol_features_acked(&self) -> bool {
        self.stats
            .acked_features
            .is_some_and(|f| f & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0)
    }

    fn ring(&mut self, index: u32) -> VuResult<&mut Ring> {
        self.rings
            .get_mut(index as usize)
            .ok_or(VuError::InvalidParam)
    }

    /// Stops the worker and stores where each ring stopped.
    pub fn stop_worker(&mut self) {
        let Some(run) = self.running.take() else {
            return;
        };
        run.handle.stop();
        self.stats.worker_stops += 1;
        match run.handle.join() {
            Ok(exit) => {
                // The device uses chains in the order it takes them, so everything between
                // the used index and next_avail is in flight (a deferred TX frame, reserved
                // RX buffers). Reporting the used index makes QEMU offer those chains again
                // on restart instead of losing them; the restarted ring's used index matches.
                self.rings[RX_QUEUE as usize].base = exit.rx.next_used();
                self.rings[TX_QUEUE as usize].base = exit.tx.next_used();
                self.stats.last_exit = Some(
                    match exit.reason {
                        ExitReason::Stopped => "stopped",
                        ExitReason::PeerGone => "proxy gone",
                    }
                    .into(),
                );
                tracing::info!(
                    rx_base = self.rings[0].base,
                    tx_base = self.rings[1].base,
                    reason = ?exit.reason,
                    "device worker stopped"
                );
            }
            Err(e) => {
                tracing::error!("device worker failed: {e}");
                self.stats.last_exit = Some(format!("failed: {e}"));
            }
        }
    }

    fn ring_ready(&self, r: &Ring) -> bool {
        let enabled = if self.protocol_features_acked() {
            r.enabled
        } else {
            true
        };
        r.started && enabled && r.size > 0 && r.addrs.is_some()
    }

    /// Starts the worker once memory, features and both rings are in place.
    fn maybe_start(&mut self) -> VuResult<()> {
        if self.running.is_some()
            || !self.features_set()
            || self.table.is_empty()
            || !self.rings.iter().all(|r| self.ring_ready(r))
        {
            return Ok(());
        }
        let features = self.stats.acked_features.unwrap_or(0);
        let mut queues = Vec::with_capacity(NUM_QUEUES);
        for (i, r) in self.rings.iter().enumerate() {
            let (d, a, u) = r.addrs.expect("ring_ready checked");
            let tr = |ua| {
                memory::user_to_guest(&self.table, ua)
                    .map_err(|e| handler_err(format!("ring {i}: {e}")))
            };
            let (d, a, u) = (tr(d)?, tr(a)?, tr(u)?);
            let mut q =
                Queue::new(MAX_QUEUE_SIZE).map_err(|e| handler_err(format!("ring {i}: {e:?}")))?;
            q.set_size(r.size);
            q.set_desc_table_address(Some(d as u32), Some((d >> 32) as u32));
            q.set_avail_ring_address(Some(a as u32), Some((a >> 32) as u32));
            q.set_used_ring_address(Some(u as u32), Some((u >> 32) as u32));
            q.set_next_avail(r.base);
            q.set_next_used(r.base);
            q.set_ready(true);
            if !q.is_valid(&*self.mem.memory()) {
                return Err(handler_err(format!(
                    "ring {i}: size {} at desc 0x{d:x} avail 0x{a:x} used 0x{u:x} is not valid in guest memory",
                    r.size
                )));
            }
            queues.push(q);
        }
        let dup = |fd: Option<&OwnedFd>| -> VuResult<Notifier> {
            match fd {
                Some(fd) => Ok(Notifier::from_fd(
                    fd.try_clone().map_err(VuError::ReqHandlerError)?,
                )),
                // No call fd: the frontend polls the used ring; a private eventfd absorbs signals.
                None => Notifier::new().map_err(VuError::ReqHandlerError),
            }
        };
        let (rx, tx) = (
            &self.rings[RX_QUEUE as usize],
            &self.rings[TX_QUEUE as usize],
        );
        let (rx_kick, tx_kick) = (dup(rx.kick.as_ref())?, dup(tx.kick.as_ref())?);
        let (rx_call, tx_call) = (dup(rx.call.as_ref())?, dup(tx.call.as_ref())?);
        let call_fds = [rx_call.as_raw_fd(), tx_call.as_raw_fd()];
        // stop_worker joined the last worker, which gave the connection back as it ended
        let backend: Box<dyn Backend> = Box::new(self.backend.lend().ok_or_else(|| {
            handler_err("the proxy connection is still held by a worker".to_string())
        })?);
        let tx_q = queues.pop().expect("two queues");
        let rx_q = queues.pop().expect("two queues");
        let handle = worker::spawn(WorkerSetup {
            mem: self.mem.clone(),
            rx: rx_q,
            tx: tx_q,
            rx_kick,
            tx_kick,
            rx_call,
            tx_call,
            features,
            backend,
            options: self.worker_options.clone(),
            metrics: self.metrics.clone(),
        })
        .map_err(VuError::ReqHandlerError)?;
        self.stats.worker_starts += 1;
        tracing::info!(
            features = format!("0x{features:x}"),
            "device worker started for QEMU"
        );
        self.running = Some(Running { handle, call_fds });
        Ok(())
    }

    fn apply_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        self.ring(index)?.enabled = enable;
        if !enable {
            self.stop_worker();
        }
        self.maybe_start()
    }
}

impl VhostUserBackendReqHandlerMut for VhostNetHandler {
    fn set_owner(&mut self) -> VuResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.stop_worker();
        self.rings = Default::default();
        self.stats.acked_features = None;
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        self.reset_owner()
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(self.offered)
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        if features & !self.offered != 0 {
            return Err(handler_err(format!(
                "SET_FEATURES 0x{features:x} has bits we did not offer (0x{:x})",
                features & !self.offered
            )));
        }
        let first = self.stats.acked_features.is_none();
        self.stats.acked_features = Some(features);
        if first {
            for i in 0..NUM_QUEUES {
                if let Some(e) = self.rings[i].early_enable.take() {
                    tracing::info!(
                        ring = i,
                        enable = e,
                        "applying SET_VRING_ENABLE that came before SET_FEATURES"
                    );
                    self.rings[i].enabled = e;
                }
            }
        }
        self.maybe_start()
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        let (mem, table) = memory::map_table(ctx, files).map_err(|e| handler_err(e.to_string()))?;
        self.stats.mem_regions = table.len();
        // Swapped in place: a running worker sees the new table at its next access.
        self.mem
            .lock()
            .map_err(|_| handler_err("guest memory lock poisoned"))?
            .replace(mem);
        self.table = table;
        self.maybe_start()?;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        if num == 0 || num > u32::from(MAX_QUEUE_SIZE) || !num.is_power_of_two() {
            return Err(handler_err(format!(
                "ring {index}: size {num} (max {MAX_QUEUE_SIZE}, power of two)"
            )));
        }
        self.ring(index)?.size = num as u16;
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        self.ring(index)?.addrs = Some((descriptor, available, used));
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        self.ring(index)?.base = base as u16;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        self.ring(index)?;
        self.stop_worker();
        let r = self.ring(index)?;
        r.started = false;
        r.kick = None;
        Ok(VhostUserVringState::new(index, u32::from(r.base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let r = self.ring(u32::from(index))?;
        r.kick = fd.map(OwnedFd::from);
        r.started = true;
        // A new kick fd for a ring the worker polls would go unseen: restart around it.
        if self.running.is_some() {
            self.stop_worker();
        }
        self.maybe_start()
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let i = usize::from(index);
        let fd = fd.map(OwnedFd::from);
        if let (Some(run), Some(new)) = (self.running.as_ref(), fd.as_ref()) {
            if !run.handle.is_finished() && i < NUM_QUEUES {
                // QEMU swaps call fds while running (interrupt masking). dup2 makes the
                // worker's fd number refer to the new eventfd atomically, no restart.
                // SAFETY: both fds are open; the target is owned by the running worker,
                // which is not finished, so the number is not reused.
                if unsafe { libc::dup2(new.as_raw_fd(), run.call_fds[i]) } < 0 {
                    return Err(VuError::ReqHandlerError(io::Error::last_os_error()));
                }
                self.stats.call_fd_swaps += 1;
            }
        }
        self.ring(u32::from(index))?.call = fd;
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.ring(u32::from(index))?.err = fd;
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(OFFERED_PROTOCOL_FEATURES)
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        self.stats.acked_protocol_features = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(1)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        if !self.features_set() {
            self.stats.early_enables += 1;
            tracing::info!(
                ring = index,
                enable,
                "SET_VRING_ENABLE before SET_FEATURES: kept for later"
            );
            self.ring(index)?.early_enable = Some(enable);
            return Ok(());
        }
        self.apply_enable(index, enable)
    }

    fn get_config(
        &mut self,
        _offset: u32,
        _size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VuResult<Vec<u8>> {
        Err(VuError::InvalidOperation(
            "CONFIG protocol feature not offered",
        ))
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VuResult<()> {
        Err(VuError::InvalidOperation(
            "CONFIG protocol feature not offered",
        ))
    }

    fn set_backend_req_fd(&mut self, _backend: BackendChannel) {}

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        Err(VuError::InvalidOperation("not a GPU"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(VuError::InvalidOperation("no shared objects"))
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> VuResult<(VhostUserInflight, File)> {
        Err(VuError::InvalidOperation("INFLIGHT_SHMFD not offered"))
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> VuResult<()> {
        Err(VuError::InvalidOperation("INFLIGHT_SHMFD not offered"))
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Err(VuError::InvalidOperation("CONFIGURE_MEM_SLOTS not offered"))
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        Err(VuError::InvalidOperation("CONFIGURE_MEM_SLOTS not offered"))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        Err(VuError::InvalidOperation("CONFIGURE_MEM_SLOTS not offered"))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        Err(VuError::InvalidOperation("no migration"))
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        Err(VuError::InvalidOperation("no migration"))
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(VuError::InvalidOperation("no shared memory regions"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VuResult<()> {
        Err(VuError::InvalidOperation("LOG_SHMFD not offered"))
    }
}

impl Drop for VhostNetHandler {
    fn drop(&mut self) {
        self.stop_worker();
    }
}
