//! `vnet-vm`: boots a Linux guest on vnet-vhost (and optionally on QEMU's own virtio-net)
//! and prints iperf3 throughput through passt. See `vnet-vm --help`.
//! The runner drives QEMU, passt and Linux tools: on other OSes the binary only says so.

#[cfg(target_os = "linux")]
fn main() {
    use clap::Parser;
    let args = vnet_vm::cli::Args::parse();
    if let Err(e) = vnet_vm::cli::run(&args) {
        eprintln!("vnet-vm: error: {e}");
        std::process::exit(e.exit_code());
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("vnet-vm: the QEMU + passt runner is supported on Linux only");
    std::process::exit(2);
}
