//! The simulated VM: a guest virtio-net driver and a proxy peer around the real device.
//!
//! [`run::run`] builds guest memory and split rings ([`driver`], [`guest`]), hands the
//! device side of the same rings to [`vnet_device::worker::spawn`] (the one data path every
//! front end uses), connects a peer (the built-in [`proxy`], or a real proxy reached with
//! [`real_proxy`]'s UDP frames), drives a [`workload`], checks every frame ([`integrity`])
//! and returns a [`summary::Summary`]. [`wake_cost`] prices the machine's thread
//! wake-ups, which the throughput bench prints beside its ratios.

pub mod driver;
pub mod guest;
pub mod integrity;
pub mod latency;
pub mod proxy;
pub mod real_proxy;
pub mod run;
pub mod summary;
pub mod wake_cost;
pub mod workload;

pub use run::{run, BuiltinKind, SimConfig, SimError};
pub use summary::Summary;
