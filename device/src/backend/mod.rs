//! Proxy backends behind one trait.
// INTERFACE (fixed, front ends depend on it):
//   pub enum BackendSpec { UnixGram(PathBuf), UnixStream(PathBuf) }  + FromStr for
//       "unixgram:/path" and "unixstream:/path" (error names the accepted forms)
//   pub struct BackendOptions { pub vfkit: bool, pub retry_delay: Option<Option<Duration>>,
//       pub local_path: Option<PathBuf>, pub sndbuf: Option<usize>, pub rcvbuf: Option<usize>,
//       pub fault: FaultConfig }   (Default)
//   pub struct FaultConfig { pub enobufs_every: u32 /* 0 = never; inject ENOBUFS on every
//       Nth send */, pub enobufs_burst: u32 /* consecutive injected failures per hit */ } (Default)
//   pub fn connect(spec: &BackendSpec, opts: &BackendOptions) -> Result<Box<dyn Backend>, BackendError>
//   unixgram::UnixGram::from_socket(std::os::unix::net::UnixDatagram, &BackendOptions)
//   unixstream::UnixStreamBackend::from_socket(std::os::unix::net::UnixStream, &BackendOptions)
//   pub trait Backend: Send { fn raw_fd(&self) -> RawFd; fn retry_delay(&self) -> Option<Duration>;
//       ...read/write methods chosen by the device implementer... }
