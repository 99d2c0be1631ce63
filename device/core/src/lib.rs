//! vnet-device: a virtio-net device that forwards guest frames to a user-space network
//! proxy over a Unix socket, retries frames the proxy cannot take yet, and reports every
//! step through USDT probes, an in-process trace recorder and counters.
//!
//! Front ends (the simulated guest in crate `vnet-sim`, the vhost-user daemon in crate
//! `vnet-vhost`) set up guest memory and queues and hand them to [`worker::spawn`]; there is
//! one data path, and it lives here.

pub mod backend;
pub mod bufsize;
pub mod csum;
pub mod device;
pub mod episode;
pub mod events;
pub mod flow;
pub mod frame;
pub mod gro;
pub mod gso;
pub mod inet;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod poller;
pub mod probes;
pub mod recorder;
pub mod retry_policy;
pub mod retry_timer;
pub mod sockopt;
pub mod thread_usage;
pub mod usage;
pub mod worker;
