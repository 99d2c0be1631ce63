//! vnet-device: a virtio-net device that forwards guest frames to a user-space network
//! proxy over a Unix socket, retries frames the proxy cannot take yet, and reports every
//! step through USDT probes, an in-process trace recorder and counters.
//!
//! Front ends (the simulated guest in [`sim`], the vhost-user daemon in `vhost_user`) set up
//! guest memory and queues and hand them to [`worker::spawn`]; there is one data path.

pub mod backend;
pub mod episode;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod poller;
pub mod probes;
pub mod recorder;
pub mod worker;

pub mod sim;

#[cfg(target_os = "linux")]
pub mod vhost_user;
#[cfg(target_os = "linux")]
pub mod vm;
