# syscalls-rows.awk - syscalls.bt's output -> the trace CSV of dtrace/README.md.
#
# syscalls.bt keeps its rows in BPF maps and prints them every 100 ms as map lines,
#   @rows_a[TID, N]: (TS_NS, PROBE, FD, A, B, C)
# (why: the header of its interval probe). This turns each into the CSV row, sorts each
# batch by ts_ns (then tid and N: one thread's rows in the order they happened), passes the
# clock line, the header and any other text through, and drops bpftrace's empty lines. At
# the end syscalls.bt prints how many rows each thread produced (@rows_n); a row that did
# not fit in the map was counted there but never printed, and the difference is reported
# in one line on stderr. capture.sh --syscalls runs it; by hand:
#
#   bpftrace -q probes/syscalls.bt PID -p PID | awk -f probes/syscalls-rows.awk > trace.csv
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
  # src[p, i]: which field of the split map line fills column i of probe p's rows
  # (2 tid, 4 ts_ns, 6 fd, 7-9 A-C); 0: empty
  for (p in layout) {
    k = split(layout[p], w, " ")
    name[p] = w[1]
    for (i = 1; i <= ncol; i++) {
      src[p, i] = col[i] == "ts_ns" ? 4 : col[i] == "tid" ? 2 : col[i] == "fd" ? 6 : 0
      for (j = 2; j <= k; j++) if (w[j] == col[i]) src[p, i] = 5 + j
    }
  }
  sorter = "sort -t, -k1,1n -k2,2n -k11,11n | cut -d, -f1-10"
  open_sort = 0; rows = 0; counted = 0; total = 0
}

/^@rows_[ab]\[/ {
  # @rows_a[TID, N]: (TS, P, FD, A, B, C) -> f[2] TID, f[3] N, f[4] TS, f[5] P, f[6] FD, f[7-9]
  n = split($0, f, /[^0-9-]+/)
  p = f[5] + 0
  if (n < 9 || !(p in name)) {
    printf "syscalls-rows.awk: line %d: not a row of syscalls.bt: %s\n", NR, $0 > "/dev/stderr"
    bad++
    next
  }
  r = ""
  for (i = 1; i <= ncol; i++)
    r = r (i > 1 ? "," : "") (col[i] == "probe" ? name[p] : src[p, i] ? f[src[p, i]] : "")
  if (!open_sort) { fflush(); open_sort = 1 }
  # N rides along as an 11th field for the sort and is cut off after it
  print r "," f[3] | sorter
  seen[f[2]]++
  rows++
  next
}

/^@rows_n\[/ {
  split($0, f, /[^0-9-]+/)
  made[f[2]] = f[3] + 0
  total += f[3]
  counted = 1
  next
}

/^$/ { flush_rows(); next }

{ flush_rows(); print; fflush() }

function flush_rows() {
  if (open_sort) { close(sorter); open_sort = 0 }
}

END {
  flush_rows()
  if (!counted) {
    if (rows > 0)
      print "syscalls-rows.awk: no row count at the end (bpftrace did not reach its END probe): cannot tell whether rows were lost" > "/dev/stderr"
  } else {
    lost = 0
    for (t in made) lost += made[t] - seen[t]
    if (lost > 0)
      printf "syscalls-rows.awk: lost %d rows of %d: more arrived between two prints than the row map holds (BPFTRACE_MAP_KEYS_MAX); this trace is incomplete\n", lost, total > "/dev/stderr"
  }
  if (bad) exit 1
}
