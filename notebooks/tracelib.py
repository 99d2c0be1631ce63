"""Reading a vnetscope trace CSV (dtrace/README.md) with polars, shared by the notebooks.

Everything here stays lazy until the last step and reduces before collecting, so a
10M-row trace costs one or two streaming scans, never a 10M-point plot.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

HEADER = "ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno"
INT_COLUMNS = ["ts_ns", "tid", "fd", "queue", "len", "data", "retries", "wait_ns", "errno"]
FRAME_PROBES = ["tx_frame", "rx_frame"]
# Episode-related probes are few; everything else but frames is kept in memory.
CLOCK_RE = re.compile(r"#\s*clock\s+mono_ns=(-?\d+)\s+wall_ns=(-?\d+)")


class TraceError(Exception):
    """A file that is not a trace CSV; the message names the file and line."""


@dataclass
class Trace:
    path: Path
    lf: pl.LazyFrame
    mono_ns: int | None
    wall_ns: int | None

    @property
    def name(self) -> str:
        return self.path.name

    def wall_time(self, ts_ns: int) -> str | None:
        """Wall-clock time of a monotonic timestamp, from the clock comment line."""
        if self.mono_ns is None or self.wall_ns is None:
            return None
        import datetime as dt

        t = dt.datetime.fromtimestamp((ts_ns - self.mono_ns + self.wall_ns) / 1e9, dt.timezone.utc)
        return t.strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def open_trace(path: str | os.PathLike) -> Trace:
    """Lazily scans a trace. Tolerates bpftrace's 'Attaching N probes...' line (printed
    when the capture ran without -q) and any comment lines before the header."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    mono = wall = None
    # polars drops comment lines itself; skip_rows counts only the other lines before the header
    skip = 0
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            s = line.strip()
            if s.startswith("#"):
                m = CLOCK_RE.match(s)
                if m:
                    mono, wall = int(m.group(1)), int(m.group(2))
                continue
            if s.startswith("ts_ns,"):
                if not s.startswith(HEADER):
                    raise TraceError(f"{path}:{line_no}: header is {s!r}, expected {HEADER!r}")
                break
            if s.startswith("Attaching "):
                skip += 1
                continue
            raise TraceError(f"{path}:{line_no}: expected the header {HEADER!r}, found {s[:80]!r}")
        else:
            raise TraceError(f"{path}: no header line {HEADER!r}")
    lf = pl.scan_csv(
        path,
        skip_rows=skip,
        comment_prefix="#",
        has_header=True,
        schema_overrides={c: pl.Int64 for c in INT_COLUMNS} | {"probe": pl.String},
    ).select(["ts_ns", "tid", "probe", *INT_COLUMNS[2:]])
    return Trace(path, lf, mono, wall)


def load_events(tr: Trace) -> pl.DataFrame:
    """Every row except the per-frame ones, sorted by time (bpftrace writes per-CPU
    buffers, so a capture is only ordered per CPU)."""
    return tr.lf.filter(~pl.col("probe").is_in(FRAME_PROBES)).collect().sort("ts_ns")


def start_ns(tr: Trace) -> int:
    return tr.lf.select(pl.col("ts_ns").min()).collect().item()


def episodes(ev: pl.DataFrame) -> pl.DataFrame:
    """One row per resolved episode: fd, begin ts, end ts, retries, wait_ns, frame_len.
    Episodes still open at the end of the trace have no resolved row and are left out."""
    res = ev.filter(pl.col("probe") == "enobufs_resolved").select(
        "fd", "tid", pl.col("ts_ns").alias("end_ns"), "retries", "wait_ns", pl.col("len").alias("frame_len")
    )
    return res.with_columns(
        (pl.col("end_ns") - pl.col("wait_ns")).alias("begin_ns"),
        (pl.col("wait_ns") / 1000.0).alias("wait_us"),
    ).sort("end_ns")


def retry_table(ep: pl.DataFrame) -> pl.DataFrame:
    """The PR's table: per retry count, count, share, min/avg/p99/max wait (nearest-rank)."""
    if ep.height == 0:
        return pl.DataFrame()
    total = ep.height
    return (
        ep.group_by("retries")
        .agg(
            pl.len().alias("count"),
            pl.col("wait_us").min().alias("min_us"),
            pl.col("wait_us").mean().alias("avg_us"),
            pl.col("wait_us").quantile(0.99, interpolation="higher").alias("p99_us"),
            pl.col("wait_us").max().alias("max_us"),
        )
        .with_columns((pl.col("count") / total * 100).alias("pct"))
        .sort("retries")
        .select("retries", "count", "pct", "min_us", "avg_us", "p99_us", "max_us")
    )


def pool_retries(ep: pl.DataFrame, at: int) -> pl.DataFrame:
    """Episodes with `at` or more retries counted as `at` (shown as "at+"): a long tail of
    single episodes at 23, 41, 70 retries is one fact, not thirty bars."""
    return ep.with_columns(pl.col("retries").clip(upper_bound=at))


def format_retry_table(ep: pl.DataFrame, title: str, pool_at: int | None = None) -> str:
    """Text in the layout of the PR's published tables, with its '#' histogram below.
    With pool_at, the last row holds every episode with pool_at or more retries."""
    if ep.height == 0:
        return f"{title}: 0 events (no ENOBUFS/EAGAIN episode resolved in this trace)"
    pooled = pool_at is not None and ep["retries"].max() > pool_at
    t = retry_table(pool_retries(ep, pool_at) if pooled else ep)
    label = (lambda n: f"{n}+" if pooled and n == pool_at else str(n))
    w = ep["wait_us"]
    lines = [f"{title}: {ep.height} events", ""]
    lines.append(f"{'Retries':>9} {'Count':>7} {'%':>7} {'Min':>9} {'Avg':>9} {'P99':>9} {'Max':>9}")
    for r in t.iter_rows(named=True):
        lines.append(
            f"{label(r['retries']):>9} {r['count']:>7} {r['pct']:>6.1f}% {r['min_us']:>7.0f}us {r['avg_us']:>7.0f}us"
            f" {r['p99_us']:>7.0f}us {r['max_us']:>7.0f}us"
        )
    p50 = w.quantile(0.5, interpolation="higher")
    p99 = w.quantile(0.99, interpolation="higher")
    lines.append(
        f"Overall: min={w.min():.0f}us avg={w.mean():.0f}us p50={p50:.0f}us p99={p99:.0f}us max={w.max():.0f}us"
    )
    lines.append("")
    peak = t["count"].max()
    for r in t.iter_rows(named=True):
        bar = "#" * max(1, round(r["count"] / peak * 50))
        lines.append(f"{label(r['retries']):>3} {bar} {r['count']}")
    return "\n".join(lines)


def wakeups(ev: pl.DataFrame) -> pl.DataFrame:
    """Write wake-ups that happened while a frame was deferred on that fd, with the
    pending frame's size: free space below it means the retry could not succeed."""
    marks = (
        ev.filter(pl.col("probe").is_in(["enobufs_begin", "enobufs_resolved"]))
        .select(
            "ts_ns",
            "fd",
            pl.col("probe").alias("last_mark"),
            pl.col("len").alias("pending_len"),
        )
        .sort("ts_ns")
    )
    kw = ev.filter(pl.col("probe") == "kevent_write").select("ts_ns", "fd", "data").sort("ts_ns")
    if kw.height == 0 or marks.height == 0:
        return pl.DataFrame(schema={"ts_ns": pl.Int64, "fd": pl.Int64, "data": pl.Int64, "pending_len": pl.Int64})
    # both sides are sorted by ts_ns above; polars cannot verify that per "by" group
    j = kw.join_asof(marks, on="ts_ns", by="fd", strategy="backward", check_sortedness=False)
    return (
        j.filter((pl.col("last_mark") == "enobufs_begin") & (pl.col("data") >= 0))
        .select("ts_ns", "fd", "data", "pending_len")
        .with_columns((pl.col("data") >= pl.col("pending_len")).alias("fits"))
    )


def per_interval(tr: Trace, t0: int, interval_ns: int) -> pl.DataFrame:
    """Per-interval episodes, failed sends, and TX/RX bytes, in one streaming scan."""
    lf = tr.lf.filter(pl.col("probe").is_in(["enobufs_begin", "enobufs_retry", *FRAME_PROBES]))
    agg = (
        lf.with_columns(((pl.col("ts_ns") - t0) // interval_ns).alias("bin"))
        .group_by("bin", "probe")
        .agg(pl.len().alias("n"), pl.col("len").sum().alias("bytes"))
        .collect()
    )
    if agg.height == 0:
        return pl.DataFrame(
            schema={"bin": pl.Int64, "t_s": pl.Float64, "episodes": pl.UInt32, "failed_sends": pl.UInt32,
                    "tx_gbit": pl.Float64, "rx_gbit": pl.Float64}
        )
    wide = agg.pivot(on="probe", index="bin", values=["n", "bytes"], aggregate_function="sum")
    nbins = int(agg["bin"].max()) + 1
    full = pl.DataFrame({"bin": pl.arange(0, nbins, eager=True).cast(pl.Int64)}).join(wide, on="bin", how="left")

    def col(name: str) -> pl.Expr:
        return pl.col(name).fill_null(0) if name in full.columns else pl.lit(0)

    secs = interval_ns / 1e9
    return full.select(
        "bin",
        ((pl.col("bin") + 0.5) * secs).alias("t_s"),
        col("n_enobufs_begin").alias("episodes"),
        (col("n_enobufs_begin") + col("n_enobufs_retry")).alias("failed_sends"),
        (col("bytes_tx_frame") * 8 / secs / 1e9).alias("tx_gbit"),
        (col("bytes_rx_frame") * 8 / secs / 1e9).alias("rx_gbit"),
        (col("n_tx_frame") + col("n_rx_frame")).alias("frames"),
    )


def pick_interval(span_ns: int, target_bins: int = 200) -> int:
    """A round interval giving at most ~target_bins bins over span_ns."""
    for step in [1e6, 2e6, 5e6, 1e7, 2e7, 5e7, 1e8, 2e8, 5e8, 1e9, 2e9, 5e9, 1e10, 3e10, 6e10, 3e11, 6e11]:
        if span_ns / step <= target_bins:
            return int(step)
    return int(span_ns // target_bins) + 1


def cdf_points(values: pl.Series, max_points: int = 400) -> tuple[list[float], list[float]]:
    """An empirical CDF reduced to at most max_points quantiles: plotting 10M points
    draws the same line, slower."""
    s = values.drop_nulls().sort()
    n = s.len()
    if n == 0:
        return [], []
    if n <= max_points:
        return s.to_list(), [(i + 1) / n for i in range(n)]
    idx = [round(i * (n - 1) / (max_points - 1)) for i in range(max_points)]
    return s.gather(idx).to_list(), [(i + 1) / n for i in idx]


def downsample(df: pl.DataFrame, max_rows: int, seed: int = 1) -> pl.DataFrame:
    return df if df.height <= max_rows else df.sample(max_rows, seed=seed)


def out_dir() -> Path:
    d = Path(os.environ.get("OUT", "out"))
    d.mkdir(parents=True, exist_ok=True)
    return d
