#!/usr/bin/env bash
# Benchmark (not a test): `analyze report` against the same queries in polars and DuckDB on a
# generated 10M-row trace, ratios measured in this one run; then analyze's peak RSS while a
# 100M-row trace streams through a pipe (never stored on disk); then the same 10M rows
# interleaved per CPU as bpftrace prints them, against the rows in time order.
#
#   analyze/bench/run.sh                  # defaults below
#   ROWS=2000000 BIG_ROWS=0 RUNS=1 analyze/bench/run.sh   # quick look
#
# Installs polars and DuckDB into target/bench-venv (pip) on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${ROWS:-10000000}
BIG_ROWS=${BIG_ROWS:-100000000}
RUNS=${RUNS:-3}

cargo build --release -p analyze --bins
bin=target/release
work=target/analyze-bench
mkdir -p "$work"

venv=target/bench-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import polars, duckdb' 2>/dev/null || "$venv/bin/pip" install -q polars duckdb

trace="$work/trace-$ROWS.csv"
if [ ! -s "$trace" ]; then
  echo "generating $trace"
  "$bin/gen-trace" "$ROWS" > "$trace.tmp" && mv "$trace.tmp" "$trace"
fi

"$venv/bin/python" -c 'import polars, duckdb; print(f"polars {polars.__version__}, duckdb {duckdb.__version__}")'
# bpftrace prints a busy capture per CPU, one buffer after the other: the same rows, 4 CPUs.
cpu_trace="$work/trace-$ROWS-4cpu.csv"
if [ ! -s "$cpu_trace" ]; then
  echo "generating $cpu_trace"
  "$bin/gen-trace" "$ROWS" 1 4 > "$cpu_trace.tmp" && mv "$cpu_trace.tmp" "$cpu_trace"
fi

"$venv/bin/python" analyze/bench/measure.py "$bin/analyze" "$bin/gen-trace" "$venv/bin/python" "$trace" "$RUNS" "$BIG_ROWS"
"$venv/bin/python" analyze/bench/interleaved.py "$bin/analyze" "$trace" "$cpu_trace" "$RUNS"
