//! The VM runner behind `vnet-vm`: builds a guest image, boots it in QEMU with passt
//! behind either our vhost-user daemon or QEMU's own virtio-net, and collects iperf3's
//! results from the guest console.
#![cfg(target_os = "linux")]

pub mod capture;
pub mod cli;
pub mod cpio;
pub mod image;
pub mod iperf;
pub mod process;
pub mod qmp;
pub mod rounds;
pub mod runner;
pub mod summary;
