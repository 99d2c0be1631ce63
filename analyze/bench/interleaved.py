"""Times `analyze report` on bpftrace-style per-CPU interleaved rows against the same rows in
time order, in the same run, and checks both give the same report.

usage: interleaved.py ANALYZE ORDERED_TRACE INTERLEAVED_TRACE RUNS
The interleaved trace is `gen-trace ROWS SEED CPUS`: the same rows as `gen-trace ROWS SEED`,
printed per CPU in blocks, so most rows arrive after later ones and the reorder window puts
them back. The ratio shows what that costs.
"""
import os
import subprocess
import sys
import time

analyze, ordered, interleaved, runs = sys.argv[1:5]
runs = int(runs)


def timed(path):
    t0 = time.perf_counter()
    p = subprocess.Popen([analyze, "report", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        sys.exit(f"analyze failed on {path}: {p.stderr.read().decode()}")
    return wall, ru.ru_maxrss, out.decode()


def best(path):
    return min((timed(path) for _ in range(runs)), key=lambda r: r[0])


def without_reorder_note(report):
    lines = report.splitlines()
    kept = [l for l in lines if "arrived out of time order" not in l]
    # The note section may now be empty: drop trailing blank lines.
    while kept and not kept[-1].strip():
        kept.pop()
    return kept, len(lines) - len(kept)


o_wall, o_rss, o_out = best(ordered)
i_wall, i_rss, i_out = best(interleaved)
o_lines, _ = without_reorder_note(o_out)
i_lines, notes = without_reorder_note(i_out)
assert notes >= 1, "the interleaved trace reported no reordered events"
assert o_lines[1:] == i_lines[1:], "the interleaved trace gives a different report"
reordered = [l for l in i_out.splitlines() if "arrived out of time order" in l][0].split()[1]
print(f"per-CPU interleaved input ({reordered} rows put back in order): same report as in time order")
print(f"{'input':<14}{'wall s':>9}{'peak RSS MB':>13}")
print(f"{'in order':<14}{o_wall:>9.2f}{o_rss / 1024:>13.1f}")
print(f"{'interleaved':<14}{i_wall:>9.2f}{i_rss / 1024:>13.1f}")
print(f"interleaved vs in order: {i_wall / o_wall:.2f}x the time")
