//! `vnet-vhost`: a vhost-user virtio-net daemon for QEMU that forwards frames to a
//! user-space proxy (passt, gvproxy, ...) on the instrumented device worker.
//!
//!     vnet-vhost --socket /tmp/vnet.sock --proxy unixstream:/tmp/passt.sock [--trace t.csv] [--json]
//!     qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=512M,share=on \
//!         -machine memory-backend=mem -chardev socket,id=c0,path=/tmp/vnet.sock \
//!         -netdev vhost-user,id=n0,chardev=c0 -device virtio-net-pci,netdev=n0
//!
//! vhost-user with memfd-backed guest memory is what QEMU offers on Linux; on other OSes the
//! binary only says so, so that `cargo build --workspace` works everywhere.

#[cfg(target_os = "linux")]
mod cli;

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("vnet-vhost: vhost-user is supported on Linux only");
    std::process::ExitCode::from(2)
}
