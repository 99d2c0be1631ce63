# syscalls-rows.awk - syscalls.bt's output -> the trace CSV of dtrace/README.md.
#
# syscalls.bt keeps its rows in a BPF map and prints each CPU's new ones every 4 ms, three
# to a line (a slot whose TS_NS is 0 is empty),
#   R CPU  TS_NS TID PROBE FD A B C  TS_NS TID PROBE FD A B C  TS_NS TID PROBE FD A B C
# and, at its end, those still in the map as map lines,
#   @rows[CPU, N]: (TS_NS, TID, PROBE, FD, A, B, C)
# (why: the header of its profile probe). This turns each into the CSV row, passes the
# clock line, the header and any other text through, and drops bpftrace's empty lines.
# Rows come in per-CPU batches, not in time order: sort the file by ts_ns (stable, so
# the rows of one system call keep their order; capture.sh does). At the end
# syscalls.bt prints how many rows each CPU made (@cpu_rows); a row that did not fit in
# the map was counted there but never printed, and the difference is reported in one
# line on stderr. capture.sh --syscalls runs it; by hand:
#
#   bpftrace -q probes/syscalls.bt PID -p PID | awk -f probes/syscalls-rows.awk \
#     | sort -t, -k1,1n -s > trace.csv      # (keeps the two comment/header lines first)
#
# Any POSIX awk (mawk, gawk, BSD awk).
BEGIN {
  # syscalls.bt's probe numbers: the row's name, then the columns its values A, B, C go to
  # (device/sim/tests/probe_scripts.rs checks them against the trace schema)
  layout[1] = "enobufs_begin len errno"
  layout[2] = "enobufs_retry retries errno"
  layout[3] = "enobufs_resolved len retries wait_ns"
  layout[4] = "tx_frame len"
  layout[5] = "rx_frame len"
  layout[6] = "kevent_read data"
  layout[7] = "kevent_write data"
  ncol = split("ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno", col, ",")
  # fmt[p]: probe p's row as a printf format taking ts_ns, tid, fd, A, B, C in that order
  # (a row is printed with one printf: this awk reads tens of thousands of rows a second
  # on the CPUs the traced process runs on). A, B, C must fill columns left to right.
  for (p in layout) {
    k = split(layout[p], w, " ")
    fmt[p] = ""
    next_value = 2
    for (i = 1; i <= ncol; i++) {
      c = col[i] == "ts_ns" || col[i] == "tid" || col[i] == "fd" ? "%s" : col[i] == "probe" ? w[1] : ""
      for (j = 2; j <= k; j++) {
        if (w[j] != col[i]) continue
        if (j != next_value) { printf "syscalls-rows.awk: layout of %s: values out of column order\n", w[1] > "/dev/stderr"; exit 2 }
        next_value++
        c = "%s"
      }
      fmt[p] = fmt[p] (i > 1 ? "," : "") c
    }
    fmt[p] = fmt[p] "\n"
  }
  rows = 0; counted = 0; total = 0
}

# drained rows, three a line: R CPU then (TS TID P FD A B C) x 3; a slot with TS 0 is empty.
# Lines a CPU printed before the header reached us (bpftrace reads each CPU's buffer in
# turn) wait for it.
/^R / {
  if (!header) { pending[++npending] = $0; next }
  drained()
  next
}

/^ts_ns,/ {
  print; fflush()
  header = 1
  replay()
  next
}

# a row still in the map at the end: @rows[CPU, N]: (TS, TID, P, FD, A, B, C)
/^@rows\[/ {
  n = split($0, f, /[^0-9-]+/)
  # f[1] is empty (the line starts with "@rows["): f[2] CPU, f[3] N, f[4..10] the row
  if (n < 11 || !emit(f[2], f[4], f[5], f[6], f[7], f[8], f[9], f[10])) not_a_row()
  next
}

/^@cpu_rows\[/ {
  split($0, f, /[^0-9-]+/)
  made[f[2]] = f[3] + 0
  total += f[3]
  counted = 1
  next
}

/^$/ { next }

# syscalls.bt's padding after the header (why: its header probe, the last one)
/^# *$/ { next }

{ print; fflush() }

function drained(   i) {
  if (NF != 23) { not_a_row(); return }
  for (i = 3; i <= 17; i += 7) {
    if ($i == 0) continue
    if (!emit($2, $i, $(i + 1), $(i + 2), $(i + 3), $(i + 4), $(i + 5), $(i + 6))) {
      not_a_row()
      return
    }
  }
}

# One row of CPU cpu into the CSV, counted for the lost-row check; 0 for an unknown probe.
function emit(cpu, ts, tid, p, fd, a, b, c) {
  if (!(p in fmt)) return 0
  printf fmt[p], ts, tid, fd, a, b, c
  seen[cpu]++
  rows++
  return 1
}

# The row lines that came before the header, now that it is out.
function replay(   i) {
  for (i = 1; i <= npending; i++) { $0 = pending[i]; drained() }
  npending = 0
}

function not_a_row() {
  printf "syscalls-rows.awk: line %d: not a row of syscalls.bt: %s\n", NR, $0 > "/dev/stderr"
  bad++
}

END {
  # (no header at all: the lines that waited for it are rows all the same)
  replay()
  if (!counted) {
    if (rows > 0)
      print "syscalls-rows.awk: no row count at the end (bpftrace did not reach its END probe): cannot tell whether rows were lost" > "/dev/stderr"
  } else {
    lost = 0
    for (c in made) lost += made[c] - seen[c]
    if (lost > 0)
      printf "syscalls-rows.awk: lost %d rows of %d: more arrived between two drains than the row map holds (BPFTRACE_MAP_KEYS_MAX); this trace is incomplete\n", lost, total > "/dev/stderr"
  }
  if (bad) exit 1
}
