//! The analyzer core: read traces and logs, build episodes, render reports.
