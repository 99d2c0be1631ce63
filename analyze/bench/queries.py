"""The `analyze report` queries in Python, for the benchmark: polars or DuckDB.

usage: queries.py polars|duckdb TRACE.csv

Same questions as `analyze report`: episodes paired per fd (begin -> resolved), per retry
count: count, share, min, avg, p99 (nearest rank), max of first-failure-to-resolution time;
overall min, avg, p50, p99, max; write wake-ups during episodes and how many had less free
space than the pending frame; frames and bytes each way. Prints a compact summary so the
benchmark can check the engines agree with analyze.
"""
import sys


def run_polars(path):
    import polars as pl

    df = pl.read_csv(
        path,
        comment_prefix="#",
        schema_overrides={
            "ts_ns": pl.Int64, "tid": pl.Int64, "probe": pl.Utf8, "fd": pl.Int64,
            "queue": pl.Int64, "len": pl.Int64, "data": pl.Int64, "retries": pl.Int64,
            "wait_ns": pl.Int64, "errno": pl.Int64,
        },
    )
    ep = (
        df.filter(pl.col("probe").is_in(["enobufs_begin", "enobufs_resolved"]))
        .sort(["fd", "ts_ns"], maintain_order=True)
        .with_columns(
            prev_probe=pl.col("probe").shift(1).over("fd"),
            prev_ts=pl.col("ts_ns").shift(1).over("fd"),
            prev_len=pl.col("len").shift(1).over("fd"),
        )
        .filter((pl.col("probe") == "enobufs_resolved") & (pl.col("prev_probe") == "enobufs_begin"))
        .select(
            fd="fd", begin="prev_ts", end="ts_ns", retries="retries", frame_len="prev_len",
            dur=pl.col("ts_ns") - pl.col("prev_ts"),
        )
    )
    total = ep.height
    rows = (
        ep.group_by("retries")
        .agg(
            count=pl.len(),
            min=pl.col("dur").min(),
            avg=pl.col("dur").mean(),
            # nearest rank: the ceil(0.99 n)-th smallest
            p99=pl.col("dur").sort().gather((pl.len() * 99 / 100).ceil().cast(pl.Int64) - 1).first(),
            max=pl.col("dur").max(),
        )
        .sort("retries")
    )
    s = ep.get_column("dur").sort()
    n = s.len()
    overall = (s.min(), s.mean(), s[(n * 50 + 99) // 100 - 1], s[(n * 99 + 99) // 100 - 1], s.max())
    writes = df.filter(pl.col("probe") == "kevent_write").select("ts_ns", "fd", "data").sort("ts_ns")
    j = writes.join_asof(ep.sort("begin"), left_on="ts_ns", right_on="begin", by="fd", strategy="backward")
    during = j.filter(pl.col("ts_ns") <= pl.col("end"))
    low = during.filter((pl.col("data") >= 0) & (pl.col("data") < pl.col("frame_len"))).height
    frames = (
        df.filter(pl.col("probe").is_in(["tx_frame", "rx_frame"]))
        .group_by("probe").agg(n=pl.len(), bytes=pl.col("len").sum()).sort("probe")
    )
    return total, [tuple(r) for r in rows.iter_rows()], overall, (during.height, low), [tuple(r) for r in frames.iter_rows()]


def run_duckdb(path):
    import duckdb

    con = duckdb.connect()
    con.execute(f"""
        CREATE TEMP TABLE t AS SELECT * FROM read_csv('{path}', skip=1, delim=',', header=true,
          columns={{'ts_ns':'BIGINT','tid':'BIGINT','probe':'VARCHAR','fd':'BIGINT','queue':'BIGINT',
                   'len':'BIGINT','data':'BIGINT','retries':'BIGINT','wait_ns':'BIGINT','errno':'BIGINT'}})
    """)
    con.execute("""
        CREATE TEMP TABLE ep AS
        SELECT fd, prev_ts AS "begin", ts_ns AS "end", retries, prev_len AS frame_len, ts_ns - prev_ts AS dur
        FROM (SELECT *, lag(probe) OVER w AS prev_probe, lag(ts_ns) OVER w AS prev_ts, lag(len) OVER w AS prev_len
              FROM t WHERE probe IN ('enobufs_begin', 'enobufs_resolved')
              WINDOW w AS (PARTITION BY fd ORDER BY ts_ns))
        WHERE probe = 'enobufs_resolved' AND prev_probe = 'enobufs_begin'
    """)
    total = con.execute("SELECT count(*) FROM ep").fetchone()[0]
    rows = con.execute("""
        SELECT retries, count(*), min(dur), avg(dur), quantile_disc(dur, 0.99), max(dur)
        FROM ep GROUP BY retries ORDER BY retries
    """).fetchall()
    overall = con.execute(
        "SELECT min(dur), avg(dur), quantile_disc(dur, 0.5), quantile_disc(dur, 0.99), max(dur) FROM ep"
    ).fetchone()
    during, low = con.execute("""
        SELECT count(*), count(*) FILTER (WHERE w.data >= 0 AND w.data < ep.frame_len)
        FROM (SELECT ts_ns, fd, data FROM t WHERE probe = 'kevent_write') w
        ASOF JOIN ep ON w.fd = ep.fd AND w.ts_ns >= ep."begin"
        WHERE w.ts_ns <= ep."end"
    """).fetchone()
    frames = con.execute("""
        SELECT probe, count(*), sum(len) FROM t WHERE probe IN ('tx_frame', 'rx_frame')
        GROUP BY probe ORDER BY probe
    """).fetchall()
    return total, rows, overall, (during, low), frames


if __name__ == "__main__":
    import json

    import time

    engine, path = sys.argv[1], sys.argv[2]
    # Import outside the timed part: the engine's own time, without interpreter start-up.
    if engine == "polars":
        import polars  # noqa: F401
    else:
        import duckdb  # noqa: F401
    t0 = time.perf_counter()
    total, rows, overall, writes, frames = (run_polars if engine == "polars" else run_duckdb)(path)
    engine_s = time.perf_counter() - t0
    summary = {
        "total": total,
        "by_retries": [[int(r[0]), int(r[1]), round(r[2] / 1000), round(r[3] / 1000), round(r[4] / 1000), round(r[5] / 1000)] for r in rows],
        "overall_us": [round(v / 1000) for v in overall],
        "write_wakeups": [int(writes[0]), int(writes[1])],
        "frames": [[str(f[0]), int(f[1]), int(f[2])] for f in frames],
    }
    print(f"{engine}: {total} events")
    for r in rows:
        print("  retries={} count={} min_us={:.0f} avg_us={:.0f} p99_us={:.0f} max_us={:.0f}".format(
            r[0], r[1], r[2] / 1000, r[3] / 1000, r[4] / 1000, r[5] / 1000))
    print("  overall min={:.0f}us avg={:.0f}us p50={:.0f}us p99={:.0f}us max={:.0f}us".format(
        *[v / 1000 for v in overall]))
    print(f"  write wake-ups during episodes={writes[0]} low_room={writes[1]}")
    print(f"  frames={frames}")
    print(f"ENGINE_SECONDS {engine_s:.4f}")
    print("RESULT " + json.dumps(summary))
