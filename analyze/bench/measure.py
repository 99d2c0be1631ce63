"""Times `analyze report` against polars and DuckDB on one trace, checks they agree, and
measures analyze's peak RSS streaming a huge generated trace through a pipe.

usage: measure.py ANALYZE GEN_TRACE PYTHON TRACE RUNS BIG_ROWS
Wall time is the best of RUNS (the machine is shared; the best run is the least disturbed);
CPU time (user+sys of the process and its threads) is reported beside it.
"""
import json
import os
import subprocess
import sys
import time

analyze, gen, python, trace, runs, big_rows = sys.argv[1:7]
runs, big_rows = int(runs), int(big_rows)
here = os.path.dirname(os.path.abspath(__file__))


def timed(cmd, stdin=None):
    """Runs cmd; returns (wall s, cpu s, peak RSS KB, stdout)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read()
    if status != 0:
        sys.exit(f"{cmd[0]} failed: {err.decode()}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss, out.decode()


def best(cmd):
    results = [timed(cmd) for _ in range(runs)]
    return min(results, key=lambda r: r[0])


rows = sum(1 for _ in open(trace, "rb")) - 2
size_mb = os.path.getsize(trace) / 1e6
print(f"trace: {trace} ({rows} rows, {size_mb:.0f} MB), best of {runs} runs each")

# Agreement first (untimed): analyze's JSON against both engines' answers.
ref = json.loads(timed([analyze, "report", trace, "--format", "json"])[3])
want = {
    "total": ref["total"],
    "by_retries": [[r["retries"], r["count"], r["min_us"], r["avg_us"], r["p99_us"], r["max_us"]] for r in ref["by_retries"]],
    "overall_us": [ref["overall"][k] for k in ("min_us", "avg_us", "p50_us", "p99_us", "max_us")],
    "write_wakeups": [ref["write_wakeups"]["during_episodes"], ref["write_wakeups"]["low_room"]],
    "frames": [["rx_frame", ref["frames"]["rx_frames"], ref["frames"]["rx_bytes"]],
               ["tx_frame", ref["frames"]["tx_frames"], ref["frames"]["tx_bytes"]]],
}

results = {}
results["analyze"] = best([analyze, "report", trace])
for engine in ("polars", "duckdb"):
    r = best([python, os.path.join(here, "queries.py"), engine, trace])
    got = json.loads(r[3].split("RESULT ", 1)[1])
    # Averages may differ by one in the last digit (float mean vs exact); everything else exact.
    for a, b in zip(got["by_retries"], want["by_retries"]):
        b = list(b)
        if abs(a[3] - b[3]) <= 1:
            b[3] = a[3]
        assert a == b, f"{engine} disagrees on a row: {a} vs {b}"
    assert got["total"] == want["total"], f"{engine} total {got['total']} vs {want['total']}"
    assert got["write_wakeups"] == want["write_wakeups"], (engine, got["write_wakeups"], want["write_wakeups"])
    assert got["frames"] == want["frames"], (engine, got["frames"], want["frames"])
    results[engine] = r
print(f"all three agree: {want['total']} episodes, overall {want['overall_us']} us")
print()
print(f"{'tool':<10}{'wall s':>9}{'in-engine s':>13}{'cpu s':>9}{'peak RSS MB':>13}")
for name, (wall, cpu, rss, out) in results.items():
    inner = float(out.split("ENGINE_SECONDS ", 1)[1].split()[0]) if "ENGINE_SECONDS" in out else wall
    results[name] = (wall, cpu, rss, out, inner)
    print(f"{name:<10}{wall:>9.2f}{inner:>13.2f}{cpu:>9.2f}{rss / 1024:>13.1f}")
aw, ac = results["analyze"][0], results["analyze"][1]
for engine in ("polars", "duckdb"):
    w, c, inner = results[engine][0], results[engine][1], results[engine][4]
    verdict = "ok" if inner / aw >= 2 else "BELOW TARGET"
    print(f"analyze vs {engine}: {inner / aw:.1f}x faster than the engine's own query time "
          f"(target >= 2x: {verdict}); {w / aw:.1f}x by process wall time; {c / ac:.1f}x less CPU")

if big_rows > 0:
    print()
    t0 = time.perf_counter()
    g = subprocess.Popen([gen, str(big_rows)], stdout=subprocess.PIPE)
    a = subprocess.Popen([analyze, "report", "-"], stdin=g.stdout, stdout=subprocess.PIPE)
    g.stdout.close()
    out = a.stdout.read().decode()
    _, status, ru = os.wait4(a.pid, 0)
    g.wait()
    wall = time.perf_counter() - t0
    assert status == 0, "analyze failed on the streamed trace"
    rss_mb = ru.ru_maxrss / 1024
    verdict = "ok" if rss_mb < 200 else "OVER TARGET"
    print(f"streamed {big_rows} rows through a pipe: peak RSS {rss_mb:.1f} MB (target < 200 MB: {verdict}), {wall:.1f} s")
    print("  " + out.splitlines()[0])
