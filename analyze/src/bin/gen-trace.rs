//! `gen-trace ROWS [SEED]`: writes a synthetic trace CSV of ROWS rows to stdout (benchmarks).

use std::io::{self, BufWriter};

fn main() {
    let mut args = std::env::args().skip(1);
    let rows: u64 = match args.next().and_then(|a| a.replace('_', "").parse().ok()) {
        Some(n) => n,
        None => {
            eprintln!("usage: gen-trace ROWS [SEED]");
            std::process::exit(2);
        }
    };
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let stdout = io::stdout().lock();
    let mut out = BufWriter::with_capacity(1 << 20, stdout);
    match analyze::gen::generate(&mut out, rows, seed).and_then(|_| {
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
