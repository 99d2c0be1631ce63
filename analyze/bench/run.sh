#!/usr/bin/env bash
# Benchmark (not a test): `analyze report` against the same queries in polars and DuckDB on a
# generated 10M-row trace, ratios measured in this one run; then analyze's peak RSS while a
# 100M-row trace streams through a pipe (never stored on disk).
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
"$venv/bin/python" analyze/bench/measure.py "$bin/analyze" "$bin/gen-trace" "$venv/bin/python" "$trace" "$RUNS" "$BIG_ROWS"
