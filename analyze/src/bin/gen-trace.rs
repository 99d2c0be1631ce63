//! `gen-trace ROWS [SEED [CPUS]]`: writes a synthetic trace CSV of ROWS rows to stdout
//! (benchmarks). With CPUS > 1 the rows come out as bpftrace prints a busy capture: per-CPU
//! buffers of 4096 rows one after the other, so only each CPU's rows are in time order.

use std::io::{self, BufWriter};

fn main() {
    let mut args = std::env::args().skip(1);
    let rows: u64 = match args.next().and_then(|a| a.replace('_', "").parse().ok()) {
        Some(n) => n,
        None => {
            eprintln!("usage: gen-trace ROWS [SEED [CPUS]]");
            std::process::exit(2);
        }
    };
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let cpus: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let stdout = io::stdout().lock();
    let mut out = BufWriter::with_capacity(1 << 20, stdout);
    let result = if cpus > 1 {
        let mut per_cpu = analyze::gen::PerCpu::new(&mut out, cpus, 4096, seed);
        analyze::gen::generate(&mut per_cpu, rows, seed)
            .and_then(|_| per_cpu.finish())
            .map(|_| ())
    } else {
        analyze::gen::generate(&mut out, rows, seed).map(|_| ())
    };
    match result.and_then(|_| {
        use std::io::Write;
        out.flush()
    }) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => {
            eprintln!("gen-trace: {e}");
            std::process::exit(1);
        }
    }
}
