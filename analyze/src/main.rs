//! `analyze`: thin CLI over the analyze library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use analyze::chrome::ChromeOptions;
use analyze::interval::parse_duration;
use analyze::stalls::StallOptions;
use analyze::timeline::{AtTime, Selection, TimelineOptions};
use analyze::{Error, OutputFormat, ReadOptions, ReportOptions, Unit};
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

/// Output of timeline-like subcommands.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EventsFormat {
    Text,
    Json,
}

#[derive(Args, Clone)]
struct InputArgs {
    /// Trace CSV or log files; `-` reads stdin; gzip is detected and decompressed.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Skip and count bad lines instead of stopping at the first.
    #[arg(long)]
    lenient: bool,
    /// How far back in time an event may arrive and still be put in order (e.g. 250ms).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
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
    /// Every event around one episode, with the wake-ups that explain its retries.
    Timeline {
        #[command(flatten)]
        input: InputArgs,
        /// The N-th episode (1-based, in order of first failure).
        #[arg(long, conflicts_with_all = ["slowest", "at"])]
        episode: Option<u64>,
        /// The K longest resolved episodes.
        #[arg(long, conflicts_with = "at")]
        slowest: Option<usize>,
        /// The episode open at TIME (or the next one): `+12.5s` from the start, an RFC 3339
        /// time, or a ts_ns value.
        #[arg(long)]
        at: Option<AtTime>,
        /// How much time before the first failure to show.
        #[arg(long, default_value = "100us", value_parser = parse_duration)]
        before: i64,
        #[arg(long, value_enum, default_value_t = EventsFormat::Text)]
        format: EventsFormat,
    },
    /// A Chrome trace-event JSON file for Perfetto (ui.perfetto.dev) or chrome://tracing.
    Chrome {
        #[command(flatten)]
        input: InputArgs,
        /// Output file (default: stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Also emit every frame read/written as an instant.
        #[arg(long)]
        frames: bool,
    },
    /// Two reports side by side with the change per row.
    Compare {
        /// The baseline (one file, or several joined with a comma).
        a: PathBuf,
        /// The other side.
        b: PathBuf,
        #[arg(long)]
        lenient: bool,
        #[arg(long, default_value = "100ms", value_parser = parse_duration)]
        reorder_window: i64,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        #[arg(long, value_enum, default_value_t = Unit::Us)]
        unit: Unit,
        /// Names for A and B (default: the file names).
        #[arg(long)]
        name_a: Option<String>,
        #[arg(long)]
        name_b: Option<String>,
    },
    /// Episodes longer than the threshold and episodes never resolved, with their timelines.
    Stalls {
        #[command(flatten)]
        input: InputArgs,
        #[arg(long, default_value = "10ms", value_parser = parse_duration)]
        threshold: i64,
        #[arg(long, default_value = "100us", value_parser = parse_duration)]
        before: i64,
        #[arg(long, value_enum, default_value_t = EventsFormat::Text)]
        format: EventsFormat,
    },
}

/// `chrome -o PATH`: refused when PATH is an input; written beside it and renamed into place
/// only when the whole trace was written.
fn write_chrome_file(
    path: &std::path::Path,
    inputs: &[PathBuf],
    opts: &ChromeOptions,
) -> Result<(u64, analyze::pipeline::InputSummary), Error> {
    let file = analyze::output::OutputFile::create(path, inputs)?;
    let name = file.name().to_string();
    let mut w = std::io::BufWriter::new(file);
    let written = analyze::chrome::write_chrome(inputs, opts, &mut w)?;
    let file = w
        .into_inner()
        .map_err(|e| Error::io(&name, e.into_error()))?;
    file.commit()?;
    Ok(written)
}

/// Every input a subcommand reads, for the output-is-input check.
fn inputs_of(cmd: &Cmd) -> Vec<PathBuf> {
    let split = |p: &PathBuf| -> Vec<PathBuf> {
        p.to_string_lossy().split(',').map(PathBuf::from).collect()
    };
    match cmd {
        Cmd::Report { input, .. }
        | Cmd::Timeline { input, .. }
        | Cmd::Chrome { input, .. }
        | Cmd::Stalls { input, .. } => input.files.clone(),
        Cmd::Compare { a, b, .. } => split(a).into_iter().chain(split(b)).collect(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let writes_stdout = !matches!(cli.cmd, Cmd::Chrome { .. });
    if writes_stdout {
        // Checked before reading: `>> input` would otherwise grow the input as it is read.
        if let Err(e) = analyze::output::check_stdout_not_input(&inputs_of(&cli.cmd)) {
            eprintln!("analyze: {e}");
            return ExitCode::from(e.exit_code());
        }
    }
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
        Cmd::Timeline {
            input,
            episode,
            slowest,
            at,
            before,
            format,
        } => {
            let select = match (episode, slowest, at) {
                (Some(n), _, _) => Selection::Id(n),
                (_, Some(k), _) => Selection::Slowest(k),
                (_, _, Some(t)) => Selection::At(t),
                _ => Selection::Slowest(1),
            };
            let mut opts = TimelineOptions::new(select);
            opts.before_ns = before;
            opts.read = input.read();
            analyze::timeline::collect(&input.files, &opts).and_then(|(t, summary)| {
                if t.is_empty() {
                    return Err(Error::Usage(format!(
                        "no matching episode ({} events read)",
                        summary.events
                    )));
                }
                Ok(match format {
                    EventsFormat::Json => analyze::timeline::render_json(&t),
                    EventsFormat::Text => analyze::timeline::render_text(&t),
                })
            })
        }
        Cmd::Chrome {
            input,
            output,
            frames,
        } => {
            let opts = ChromeOptions {
                frames,
                read: input.read(),
            };
            let result = match &output {
                Some(path) => write_chrome_file(path, &input.files, &opts),
                None => analyze::output::check_stdout_not_input(&input.files).and_then(|_| {
                    let stdout = std::io::stdout();
                    let mut w = std::io::BufWriter::new(stdout.lock());
                    analyze::chrome::write_chrome(&input.files, &opts, &mut w)
                }),
            };
            result.map(|(n, _)| match &output {
                Some(p) => {
                    eprintln!("analyze: wrote {n} trace events to {}", p.display());
                    String::new()
                }
                None => String::new(),
            })
        }
        Cmd::Compare {
            a,
            b,
            lenient,
            reorder_window,
            format,
            unit,
            name_a,
            name_b,
        } => {
            let read = ReadOptions {
                lenient,
                reorder_window_ns: reorder_window,
            };
            let build = |p: &PathBuf, name: Option<String>| {
                let paths: Vec<PathBuf> =
                    p.to_string_lossy().split(',').map(PathBuf::from).collect();
                let opts = ReportOptions {
                    name,
                    read: read.clone(),
                    ..Default::default()
                };
                analyze::build_report(&paths, &opts)
            };
            build(&a, name_a).and_then(|ra| {
                let rb = build(&b, name_b)?;
                Ok(analyze::compare::render(&ra, &rb, format, unit))
            })
        }
        Cmd::Stalls {
            input,
            threshold,
            before,
            format,
        } => {
            let opts = StallOptions {
                threshold_ns: threshold,
                before_ns: before,
                read: input.read(),
            };
            analyze::stalls::find(&input.files, &opts).map(|t| match format {
                EventsFormat::Json => analyze::timeline::render_json(&t),
                EventsFormat::Text => analyze::stalls::render_text(&t, threshold),
            })
        }
    };
    let result = result.and_then(|out| {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(out.as_bytes())
            .and_then(|_| stdout.flush())
            .map_err(|e| Error::io("standard output", e))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `analyze report big.csv | head -3`: the reader has what it wanted.
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("analyze: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
