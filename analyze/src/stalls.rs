//! `stalls --threshold 10ms`: episodes at least that long and episodes never resolved, each
//! with its timeline. A never-resolved episode at the end of a capture is the ENOBUFS hang.

use std::fmt::Write;
use std::path::PathBuf;

use crate::error::Error;
use crate::pipeline::ReadOptions;
use crate::timeline::{self, Selection, Timeline, TimelineOptions};

pub struct StallOptions {
    pub threshold_ns: i64,
    pub before_ns: i64,
    pub read: ReadOptions,
}

pub fn find(paths: &[PathBuf], opts: &StallOptions) -> Result<Vec<Timeline>, Error> {
    let mut t = TimelineOptions::new(Selection::Threshold(opts.threshold_ns));
    t.before_ns = opts.before_ns;
    t.read = opts.read.clone();
    Ok(timeline::collect(paths, &t)?.0)
}

pub fn render_text(stalls: &[Timeline], threshold_ns: i64) -> String {
    let mut out = String::new();
    let never = stalls.iter().filter(|t| t.episode.end_ns.is_none()).count();
    let _ = writeln!(
        out,
        "{} {} of {} or longer, {} never resolved",
        stalls.len() - never,
        if stalls.len() - never == 1 {
            "episode"
        } else {
            "episodes"
        },
        timeline::offset(threshold_ns).trim_start_matches('+'),
        never
    );
    if !stalls.is_empty() {
        out.push('\n');
        out.push_str(&timeline::render_text(stalls));
    }
    out
}
