//! The vhost-user front end behind `vnet-vhost`: QEMU's virtio-net device, our data path.
//!
//! QEMU owns the PCI/MMIO side and the config space; over the vhost-user socket it hands
//! us guest memory (fds), ring addresses and kick/call eventfds, and we run the same
//! [`vnet_device::worker`] as the simulated VM against them.
#![cfg(target_os = "linux")]

pub mod handler;
pub mod memory;
pub mod session;
pub mod shared_backend;
pub mod sigbus;

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

pub use handler::{HandshakeStats, VhostNetHandler};
pub use session::{SessionEnd, SessionError};

use vnet_device::backend::{BackendError, BackendOptions, BackendSpec};
use vnet_device::metrics::Metrics;
use vnet_device::worker::WorkerOptions;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("vhost-user socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("vhost-user socket {path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("vhost-user socket {path}: another process is listening on it")]
    SocketInUse { path: PathBuf },
    #[error("proxy {proxy}: {source}")]
    Proxy {
        proxy: String,
        #[source]
        source: BackendError,
    },
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl DaemonError {
    /// A refusal the user has to resolve (a path that is not ours to take) rather than a
    /// failure of the run: the binary exits 2 for these, as for a bad flag.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            DaemonError::NotASocket { .. } | DaemonError::SocketInUse { .. }
        )
    }
}

/// Set by SIGINT/SIGTERM; the request loop and the accept loop watch it.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// The vhost-user socket this run created, identified by inode so that at exit we unlink
/// our own socket and nothing else: whoever replaced it meanwhile keeps theirs.
#[derive(Debug)]
pub struct OwnedSocket {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl OwnedSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unlinks the path if it is still the socket we bound; says whether it did.
    pub fn remove(self) -> bool {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino);
        ours && std::fs::remove_file(&self.path).is_ok()
    }
}

/// Checks what sits at `path` before we bind there. Nothing is fine; a socket nobody listens
/// on (connect() is refused: a daemon before us died) is stale and may be replaced; a live
/// socket or anything that is not a socket is someone else's and is refused.
fn clear_stale_socket(path: &Path) -> Result<(), DaemonError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(DaemonError::Socket {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(DaemonError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(DaemonError::SocketInUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            tracing::info!(socket = %path.display(), "replacing a stale socket nobody listens on");
            std::fs::remove_file(path).map_err(|source| DaemonError::Socket {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(DaemonError::Socket {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Creates the listening socket readable and writable by its owner only: whoever can
/// connect gets to map memory into our process and feed us descriptors.
pub fn listen(path: &Path) -> Result<(UnixListener, OwnedSocket), DaemonError> {
    let err = |source| DaemonError::Socket {
        path: path.to_path_buf(),
        source,
    };
    clear_stale_socket(path)?;
    // umask narrows the mode at bind time, so there is no window with a wider one.
    // SAFETY: umask only swaps the process mask.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    // bind() never replaces an existing path (EADDRINUSE), so a file that appeared since the
    // check above is left alone.
    let l = l.map_err(err)?;
    let meta = std::fs::symlink_metadata(path).map_err(err)?;
    let owned = OwnedSocket {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        owned.remove();
        return Err(err(e));
    }
    Ok((l, owned))
}

/// The outcome of one daemon run.
pub struct DaemonRun {
    pub end: SessionEnd,
    pub handshake: HandshakeStats,
}

/// Accepts one QEMU connection on `listener` and serves it to the end.
pub fn run(
    listener: UnixListener,
    path: &Path,
    handler: Arc<Mutex<VhostNetHandler>>,
    stop: &AtomicBool,
    request_timeout: Duration,
) -> Result<DaemonRun, DaemonError> {
    let err = |source| DaemonError::Socket {
        path: path.to_path_buf(),
        source,
    };
    listener.set_nonblocking(true).map_err(err)?;
    let sock = loop {
        if stop.load(Ordering::SeqCst) {
            let handshake = handler.lock().unwrap_or_else(|e| e.into_inner()).stats();
            return Ok(DaemonRun {
                end: SessionEnd::Stopped,
                handshake,
            });
        }
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(err(e)),
        }
    };
    sock.set_nonblocking(false).map_err(err)?;
    tracing::info!(socket = %path.display(), "QEMU connected");
    let end = session::serve(sock, handler.clone(), stop, request_timeout);
    let mut h = handler.lock().unwrap_or_else(|e| e.into_inner());
    // A fault in the session's last moments still reaches the summary.
    h.check_memory_faults();
    h.stop_worker();
    let handshake = h.stats();
    Ok(DaemonRun {
        end: end?,
        handshake,
    })
}

/// Builds the handler, connected to the proxy.
pub fn connect_handler(
    proxy: &BackendSpec,
    opts: &BackendOptions,
    worker: WorkerOptions,
    metrics: Arc<Metrics>,
) -> Result<VhostNetHandler, DaemonError> {
    VhostNetHandler::new(proxy, opts, worker, metrics).map_err(|source| DaemonError::Proxy {
        proxy: proxy.to_string(),
        source,
    })
}

/// The `--json` summary: the metrics snapshot's counters at top level, plus how the run
/// ended and what the handshake negotiated.
pub fn summary_json(
    metrics: &Metrics,
    run: &DaemonRun,
    trace: Option<&Path>,
    trace_rows: Option<u64>,
) -> Value {
    let mut v = serde_json::to_value(metrics.snapshot()).unwrap_or_else(|_| json!({}));
    if let Value::Object(m) = &mut v {
        m.insert("end".into(), json!(run.end));
        m.insert("handshake".into(), json!(run.handshake));
        m.insert("trace".into(), json!(trace));
        m.insert("trace_rows".into(), json!(trace_rows));
    }
    v
}
