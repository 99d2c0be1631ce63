//! `vnet-vm`: boots a Linux guest on vnet-vhost (and optionally on QEMU's own virtio-net)
//! and prints iperf3 throughput through passt. See `vnet-vm --help`.

use clap::Parser;

fn main() {
    let args = vnet_device::vm::cli::Args::parse();
    if let Err(e) = vnet_device::vm::cli::run(&args) {
        eprintln!("vnet-vm: error: {e}");
        std::process::exit(1);
    }
}
