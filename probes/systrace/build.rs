//! Compiles src/bpf/systrace.bpf.c into a BPF object that the loader embeds. Linux targets
//! only: elsewhere the binary says it is Linux-only and nothing is compiled.
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "src/bpf/systrace.bpf.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=CLANG");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86",
        Ok("aarch64") => "arm64",
        Ok(other) => panic!("vnet-systrace: no BPF build for target arch {other}"),
        Err(e) => panic!("vnet-systrace: CARGO_CFG_TARGET_ARCH: {e}"),
    };
    let multiarch = match arch {
        "x86" => "x86_64-linux-gnu",
        _ => "aarch64-linux-gnu",
    };
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("systrace.bpf.o");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-D__TARGET_ARCH_{arch}"))
        // linux/bpf.h includes asm/types.h, which Debian keeps under the multiarch dir
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", source, "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("vnet-systrace: cannot run {clang} to build the BPF object: {e} (bash .ci/setup.sh installs clang and libbpf-dev)")
        });
    assert!(
        status.success(),
        "vnet-systrace: {clang} failed on {source}"
    );
}
