#!/usr/bin/env python3
"""Synthetic trace CSV for notebook development and the 10M-row plotting check.

Not used by CI (CI plots real vnet-sim traces). Shapes follow libkrun PR 556: mostly
1-retry episodes of tens to hundreds of microseconds, write wake-ups that often report
less free space than the 65226-byte frame, a retry timer, guest kicks, TSO frames out and
ACK-sized frames in. Usage: synth_trace.py OUT.csv [ROWS] [SEED]
"""
import sys

import numpy as np

HEADER = "ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno"


def main() -> None:
    out = sys.argv[1]
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    rng = np.random.default_rng(int(sys.argv[3]) if len(sys.argv) > 3 else 7)
    FD, TID, TX = 7, 4242, 65226
    t0 = 1_000_000_000_000
    # frames make ~90% of rows; one TX frame in 60 starts an episode
    n_frames = int(rows * 0.9)
    gaps = rng.exponential(6_000, n_frames).astype(np.int64)
    ts = t0 + np.cumsum(gaps)
    is_tx = rng.random(n_frames) < 0.5
    # a burst in the middle third triples the episode rate
    span = ts[-1] - t0
    burst = (ts > t0 + span // 3) & (ts < t0 + 2 * span // 3)
    p_ep = np.where(burst, 0.05, 0.012)
    ep = is_tx & (rng.random(n_frames) < p_ep)
    cols = {k: [] for k in ["ts", "probe", "fd", "queue", "len", "data", "retries", "wait", "errno"]}

    def add(t, probe, fd="", queue="", ln="", data="", retries="", wait="", errno=""):
        cols["ts"].append(t); cols["probe"].append(probe); cols["fd"].append(fd); cols["queue"].append(queue)
        cols["len"].append(ln); cols["data"].append(data); cols["retries"].append(retries)
        cols["wait"].append(wait); cols["errno"].append(errno)

    lines = []
    for i in np.nonzero(ep)[0]:
        tb = int(ts[i]) - 1
        k = int(min(rng.geometric(0.93), 6))
        wait = int(rng.lognormal(np.log(70_000 + 90_000 * (k - 1)), 0.8))
        add(tb, "enobufs_begin", FD, "", TX, "", "", "", 105)
        for a in range(2, k + 1):
            tr = tb + wait * (a - 1) // k
            add(tr - 300, "kevent_write", FD, "", "", int(rng.integers(2_000, TX)))
            add(tr, "enobufs_retry", FD, "", "", "", a, "", 105)
        if rng.random() < 0.5:
            add(tb + 50_000, "timer_fired", "", "", "", 50)
        if rng.random() < 0.2:
            add(tb + wait // 2, "guest_kick", "", 0)
        add(tb + wait - 200, "kevent_write", FD, "", "", int(rng.integers(TX, 7 * 1024 * 1024)))
        add(tb + wait, "enobufs_resolved", FD, "", TX, "", k, wait, "")
        ts[i] = tb + wait + 100
    with open(out, "w") as f:
        f.write(f"# clock mono_ns={t0} wall_ns={1_764_000_000_000_000_000 + t0 % 10**9}\n{HEADER}\n")
        probe = np.where(is_tx, "tx_frame", "rx_frame")
        ln = np.where(is_tx, TX, np.where(rng.random(n_frames) < 0.7, 66, 65550))
        for t, p, l in zip(ts.tolist(), probe.tolist(), ln.tolist()):
            lines.append((t, f"{t},{TID},{p},{FD},,{l},,,,"))
            if p == "rx_frame":
                lines.append((t - 500, f"{t - 500},{TID},kevent_read,{FD},,,{l},,,"))
        for j in range(len(cols["ts"])):
            c = {k: v[j] for k, v in cols.items()}
            lines.append((c["ts"], f"{c['ts']},{TID},{c['probe']},{c['fd']},{c['queue']},{c['len']},{c['data']},{c['retries']},{c['wait']},{c['errno']}"))
        lines.sort(key=lambda x: x[0])
        f.write("\n".join(l for _, l in lines))
        f.write("\n")


if __name__ == "__main__":
    main()
