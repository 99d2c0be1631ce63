//! `analyze`: thin CLI over the analyze library.

use std::path::PathBuf;
use std::process::ExitCode;

use analyze::interval::parse_duration;
use analyze::{OutputFormat, ReadOptions, ReportOptions, Unit};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "analyze",
    version,
    about = "Retry tables, episode timelines and Perfetto traces from a vnetscope trace CSV or a reference VMM log"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct InputArgs {
    /// Trace CSV or log files; `-` reads stdin; gzip is detected and decompressed.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Skip and count bad lines instead of stopping at the first.
    #[arg(long)]
    lenient: bool,
    /// How far back in time an event may arrive and still be put in order (e.g. 10ms).
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    reorder_window: i64,
}

impl InputArgs {
    fn read(&self) -> ReadOptions {
        ReadOptions {
            lenient: self.lenient,
            reorder_window_ns: self.reorder_window,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// The PR's retry-count table, overall line and histogram, plus open episodes and splits.
    Report {
        #[command(flatten)]
        input: InputArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        #[arg(long, value_enum, default_value_t = Unit::Us)]
        unit: Unit,
        /// Title of the table (default: the file names).
        #[arg(long)]
        name: Option<String>,
        /// Add a per-interval table (episodes/s, frames/s, Gbit/s), e.g. 10s.
        #[arg(long, value_parser = parse_duration)]
        by_interval: Option<i64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Report {
            input,
            format,
            unit,
            name,
            by_interval,
        } => {
            let opts = ReportOptions {
                format,
                unit,
                name,
                by_interval_ns: by_interval,
                read: input.read(),
            };
            analyze::render_report(&input.files, &opts)
        }
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("analyze: {e}");
            ExitCode::FAILURE
        }
    }
}
