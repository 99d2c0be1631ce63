//! The analyzer core: read traces and logs, build episodes, render reports, timelines,
//! Perfetto traces, comparisons and stall lists. The `analyze` binary is a thin CLI over this.
//!
//! Entry point for other crates: [`render_report`].

pub mod chrome;
pub mod compare;
pub mod episodes;
pub mod error;
pub mod event;
pub mod gen;
pub mod input;
pub mod interval;
pub mod log;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod render;
pub mod report;
pub mod stalls;
pub mod stats;
pub mod timeline;
pub mod trace;

pub use error::Error;
pub use pipeline::ReadOptions;
pub use report::{build_report, render_report, OutputFormat, Report, ReportOptions, Unit};
