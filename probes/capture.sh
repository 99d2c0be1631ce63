#!/usr/bin/env bash
# capture.sh - Capture a trace CSV with the platform's tracer and check it is complete.
#
# Runs probes/enobufs.bt (Linux, bpftrace) or probes/enobufs.d (macOS, DTrace), or with
# --syscalls vnet-systrace or probes/syscalls.bt (Linux) / probes/syscalls.d (macOS) (any
# process, no probes needed), then:
# warns at exit, on stderr and as a '# warning:' line in the CSV, when the tracer reported
# lost records (bpftrace "Lost N events", DTrace "N drops on CPU M"), and sorts the rows by
# ts_ns (both tracers write per-CPU buffers, so raw captures are ordered per CPU only).
#
# USAGE: sudo probes/capture.sh -o FILE [--no-frames] -p PID BINARY
#        sudo probes/capture.sh -o FILE [--no-frames] -c 'BINARY ARGS' BINARY
#        sudo probes/capture.sh -o FILE --syscalls [--no-frames] -p PID [--socket PATH | --fd N]
#        sudo probes/capture.sh -o FILE --syscalls [--no-frames] -c 'CMD ARGS' [--fd N]
#        any of the -p forms with --ready FILE; any --syscalls form with --tracer T
#
#   BINARY       executable with the vnet probes (bpftrace needs its path; DTrace ignores it)
#   --no-frames  leave out tx_frame/rx_frame, for long runs: they are not attached at all
#                (bpftrace gets a copy of enobufs.bt without them, from noframes.awk;
#                DTrace gets -D FRAMES=0), so they cost nothing and the device skips them
#   --syscalls   trace the process's unix-socket system calls instead (syscalls.bt/.d):
#                every AF_UNIX socket, or the one --fd N, or the one at --socket PATH (a
#                socket of PID bound at PATH, else one connected to the socket bound there);
#                with --no-frames the receives are not traced and sends write no tx_frame
#                (episodes and wake-ups only: the '/* frames { */' blocks cut out, -D FRAMES=0);
#                on Linux with vnet-systrace (probes/systrace: the same rules as one BPF
#                object; rows through a BPF ring buffer; about a tenth of syscalls.bt's cost,
#                probes/README.md "Cost") when it is built, else with syscalls.bt, whose row
#                lines syscalls-rows.awk turns into the CSV, counting rows its map could not
#                hold (reported as lost records; it sets BPFTRACE_MAP_KEYS_MAX=65536, about
#                100 MiB of kernel memory)
#   --tracer T   with --syscalls on Linux: systrace (vnet-systrace: $VNET_SYSTRACE, else
#                target/release/vnet-systrace of this checkout, else one on PATH) or
#                bpftrace (probes/syscalls.bt); default systrace when it is found
#   --ready FILE create FILE (it must not exist) once every probe is attached (the tracer
#                printed its header), so a script can start the load then; -p only: -c
#                holds the command until then anyway
#
# Example: sudo probes/capture.sh -o trace.csv -c 'target/release/vnet-sim --duration 30' \
#              target/release/vnet-sim && target/release/analyze report trace.csv
#          sudo probes/capture.sh -o passt.csv --syscalls -p "$(pgrep -n passt)" --socket /tmp/passt.sock
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
usage() { sed -n 's/^# \{0,1\}//; 11,41p' "$0" >&2; exit 2; }
# usage errors: one line naming the problem, exit 2
die() { echo "capture.sh: $*" >&2; exit 2; }
need() { [ $# -ge 2 ] || die "$1 needs a value"; }

out="" frames=1 target=() binary="" syscalls=0 socket="" fd="" ready="" watcher="" tracer=""
while [ $# -gt 0 ]; do
  case $1 in
    -o) need "$@"; out=$2; shift 2 ;;
    --no-frames) frames=0; shift ;;
    --syscalls) syscalls=1; shift ;;
    --ready) need "$@"; ready=$2; shift 2 ;;
    --tracer) need "$@"; tracer=$2; shift 2
      [[ $tracer =~ ^(systrace|bpftrace)$ ]] || die "--tracer $tracer: systrace or bpftrace" ;;
    --socket) need "$@"; socket=$2; shift 2 ;;
    --fd) need "$@"; fd=$2; shift 2
      [[ $fd =~ ^[0-9]+$ ]] || die "--fd $fd: not a file descriptor number" ;;
    -p|-c) need "$@"; target=("$1" "$2"); shift 2 ;;
    -h|--help) usage ;;
    -*) echo "capture.sh: unknown option $1" >&2; usage ;;
    *) binary=$1; shift ;;
  esac
done
[ -n "$out" ] && [ ${#target[@]} -eq 2 ] || usage
if [ -n "$ready" ]; then
  [ "${target[0]}" = -p ] || die "--ready goes with -p (with -c the command's output would land in the CSV, and -c holds it until the probes are attached anyway)"
  [ ! -e "$ready" ] && [ ! -L "$ready" ] || die "--ready $ready: exists already (it would say ready at once)"
fi
if [ $syscalls = 1 ]; then
  [ -z "$binary" ] || die "--syscalls takes no BINARY (got $binary)"
  [ -z "$socket" ] || [ -z "$fd" ] || die "give --socket or --fd, not both"
  [ "${target[0]}" = -p ] || [ -z "$socket" ] || die "--socket needs -p PID (a command's sockets do not exist yet)"
  if [ "${target[0]}" = -p ]; then
    [[ ${target[1]} =~ ^[0-9]+$ ]] && [ -d "/proc/${target[1]}" ] || die "-p ${target[1]}: no such process"
  fi
else
  [ -z "$socket$fd" ] || die "--socket and --fd go with --syscalls"
  [ -z "$tracer" ] || die "--tracer goes with --syscalls"
fi
# The tracer writes to a scratch file beside FILE, renamed over FILE when the run ends: FILE
# is never removed or truncated before a capture exists to replace it, and a device or FIFO
# named by -o is refused instead of deleted (dtrace -o appends, so it needs a new file).
[ ! -e "$out" ] || [ -f "$out" ] || die "-o $out: not a regular file"
final=$out
out=$(mktemp "$final.XXXXXX" 2>/dev/null) || die "-o $final: cannot create a file in its directory"
err=$(mktemp)
awkerr=$(mktemp)
tmpscript=$(mktemp)
raw=""
rawdir=""
trap 'stop_watch; rm -f "$err" "$awkerr" "$tmpscript" "$out" ${raw:+"$raw"}; [ -z "$rawdir" ] || rm -rf "$rawdir"' EXIT

# --ready: bpftrace -o and dtrace -o buffer the file until the tracer exits, so with --ready
# the tracer writes to stdout (flushed as it prints) into $out instead, and a watcher creates
# the ready file once the CSV header is there. syscalls.bt prints its header from the
# probe bpftrace attaches last, so it means "attached". enobufs.bt prints it from BEGIN,
# which bpftrace fires BEFORE it attaches the USDT probes (its 11 uprobes take a few ms):
# there the watcher waits half a second more, a margin, not a proof. (DTrace's BEGIN fires
# once every probe is enabled.)
oflag=(-o "$out")
[ -z "$ready" ] || oflag=()
tracer_out() { # CMD...: runs the tracer, its stdout into $out when --ready
  if [ -n "$ready" ]; then "$@" > "$out"; else "$@"; fi
}
start_watch() {
  [ -n "$ready" ] || return 0
  ( while kill -0 $$ 2> /dev/null; do
      if grep -q '^ts_ns,' "$out" 2> /dev/null; then
        [ $syscalls = 1 ] || [ "$(uname)" != Linux ] || sleep 0.5
        : > "$ready"; exit 0
      fi
      sleep 0.1
    done ) &
  watcher=$!
}
stop_watch() { # before any bare 'wait', which would wait for the watcher too
  [ -n "$watcher" ] || return 0
  kill "$watcher" 2> /dev/null || true
  wait "$watcher" 2> /dev/null || true
  watcher=""
}

# Sorts the capture and reports lost records; exits with the tracer's status.
finish() {
  # (a tracer writing to stdout, under --ready, may put its "Lost N events" in the CSV)
  # (syscalls-rows.awk says "lost N rows" when syscalls.bt's row map was full)
  # (vnet-systrace says "lost N rows", and "N calls or episodes did not fit" for full maps)
  lost=$( { grep -hoE 'Lost [0-9]+ events|[0-9]+ drops on CPU|lost [0-9]+ rows|[0-9]+ calls or episodes did not fit' "$err" "$awkerr" "$out" 2> /dev/null || true; } | { grep -oE '^[0-9]+|[0-9]+' || true; } | awk '{s += $1} END {print s + 0}')
  if [ -s "$out" ]; then
    # comment lines and the header stay first; rows sorted by ts_ns, stable (no rows is a
    # capture too: grep's status 1 must not end the script under pipefail)
    tmp=$(mktemp "$out.XXXXXX")
    { grep -E '^(#|ts_ns,)' "$out" || true; { grep -vE '^(#|ts_ns,|Lost [0-9]+ events)' "$out" || true; } | sort -t, -k1,1n -s; } > "$tmp"
    mv "$tmp" "$out"
  fi
  if [ "$lost" -gt 0 ]; then
    echo "# warning: the tracer lost $lost records; this trace is incomplete" >> "$out"
    echo "capture.sh: WARNING: the tracer lost $lost records: $final is incomplete (raise BPFTRACE_PERF_RB_PAGES, BPFTRACE_MAP_KEYS_MAX for --syscalls, or the D script's -D BUFSIZE= for DTrace, or use --no-frames)" >&2
  fi
  rows=$(grep -cvE '^(#|ts_ns,)' "$out" || true)
  if [ -s "$out" ] || [ "$status" = 0 ]; then
    chmod "$(printf '%o' $((0666 & ~$(umask))))" "$out"
    mv "$out" "$final"
    echo "capture.sh: $rows rows in $final" >&2
  else
    echo "capture.sh: the tracer failed before writing anything; $final left as it was" >&2
  fi
  exit "$status"
}

# Linux: the fds of PID's AF_UNIX socket at PATH, lowest first (one socket may sit behind
# several fds: dup, try_clone). First a socket bound at PATH that is not listening (a
# proxy's accepted connection, or a datagram socket), then one connected to a socket bound
# there (the VMM's end: its own name is empty, its peer's inode is in ss -x).
socket_fds_linux() { # PID PATH
  local pid=$1 path=$2 bound inodes peers f ino want
  # /proc/net/unix: Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 = listening
  bound=$(awk -v p="$path" 'NR > 1 && $8 == p { print $7, ($4 == "00010000" ? "listening" : "open") }' /proc/net/unix)
  [ -n "$bound" ] || return 1
  inodes=$(awk '{ print $1 }' <<< "$bound")
  # sockets connected to one bound at PATH (ss -x columns: ... local-inode * peer-inode)
  peers=$(ss -xan 2> /dev/null | awk -v want="$(echo $inodes)" '
    BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) ok[w[i]] = 1 }
    NR > 1 && ($NF in ok) { print $(NF - 2) }')
  for want in open connected listening; do
    for f in /proc/"$pid"/fd/*; do
      ino=$(readlink "$f" 2> /dev/null) || continue
      [[ $ino =~ ^socket:\[([0-9]+)\]$ ]] || continue
      ino=${BASH_REMATCH[1]}
      case $want in
        connected) grep -qx "$ino" <<< "$peers" || continue ;;
        *) grep -qx "$ino $want" <<< "$bound" || continue ;;
      esac
      echo "${f##*/} $ino"
    done | sort -n | awk 'NR == 1 { ino = $2 } $2 == ino { print $1 }' | grep . && return 0
  done
  return 1
}

# Linux: the epoll registrations of fd FD in PID, as "EPFD HI LO" (epoll_data in two unsigned
# 32-bit halves), at most two: made before the capture, syscalls.bt cannot see them happen.
epoll_seeds() { # PID FD
  local pid=$1 want=$2 f epfd tag tfd rest
  for f in /proc/"$pid"/fd/*; do
    [ "$(readlink "$f" 2>/dev/null)" = "anon_inode:[eventpoll]" ] || continue
    epfd=${f##*/}
    # "tfd:       8 events: 8000201d data:                3  pos:0 ino:114b8 sdev:9"
    awk -v fd="$want" -v epfd="$epfd" '$1 == "tfd:" && $2 == fd && $5 == "data:" { print epfd, $6 }' \
      "/proc/$pid/fdinfo/$epfd" 2>/dev/null
  done | head -2 | while read -r epfd data; do
    printf '%s %d %d\n' "$epfd" "$(( (0x$data >> 32) & 0xffffffff ))" "$(( 0x$data & 0xffffffff ))"
  done
}

# macOS: the fd of PID's unix socket whose name (lsof's NAME column) is PATH.
socket_fd_macos() { # PID PATH
  lsof -a -p "$1" -U -F fn 2>/dev/null | awk -v p="$2" '/^f/ { fd = substr($0, 2) } /^n/ && substr($0, 2) == p { print fd; exit }'
}

case $(uname -s) in
  Linux)
    if [ $syscalls = 1 ]; then
      [ "$(id -u)" = 0 ] || die "--syscalls needs root (it attaches BPF programs to the syscall tracepoints)"
      systrace=${VNET_SYSTRACE:-}
      [ -n "$systrace" ] || { [ -x "$here/../target/release/vnet-systrace" ] && systrace=$here/../target/release/vnet-systrace; } \
        || systrace=$(command -v vnet-systrace) || true
      if [ -z "$tracer" ]; then
        tracer=bpftrace; [ -z "$systrace" ] || tracer=systrace
      fi
      if [ "$tracer" = systrace ]; then
        [ -n "$systrace" ] && [ -x "$systrace" ] \
          || die "--tracer systrace: no vnet-systrace (cargo build --release -p vnet-systrace, or set VNET_SYSTRACE)"
      else
        command -v bpftrace > /dev/null || die "--syscalls needs bpftrace, which is not installed (or build vnet-systrace)"
      fi
      # syscall tracepoints live in tracefs; a fresh boot may not have it mounted, and
      # bpftrace then only says "tracepoint not found: syscalls:sys_exit_sendmsg"
      if [ ! -d /sys/kernel/tracing/events/syscalls ] && [ ! -d /sys/kernel/debug/tracing/events/syscalls ]; then
        mount -t tracefs nodev /sys/kernel/tracing 2> /dev/null || true
        [ -d /sys/kernel/tracing/events/syscalls ] \
          || die "no tracefs: syscall tracepoints need it, and 'mount -t tracefs nodev /sys/kernel/tracing' failed"
      fi
      args=()
      if [ "${target[0]}" = -p ]; then
        pid=${target[1]}
        if [ -n "$socket" ]; then
          # a few tries: once in about ten vnet-vm runs QEMU's connected end was not found
          # although passt had accepted it (cause not pinned down; ss's netlink dump of unix
          # sockets on a busy machine is the suspect)
          fds=""
          for _ in 1 2 3 4 5 6 7 8 9 10; do
            fds=$(socket_fds_linux "$pid" "$socket") && break
            sleep 0.2
          done
          [ -n "$fds" ] || die "--socket $socket: no AF_UNIX socket of process $pid is bound there or connected to it"
          fd=$(head -1 <<< "$fds")
          # only a listening socket there: no connection accepted yet, and the capture will
          # see none of the traffic of the one accepted later (it gets a new fd)
          if awk -v p="$socket" 'NR > 1 && $8 == p && $4 == "00010000" { print $7 }' /proc/net/unix \
              | grep -qx "$(readlink "/proc/$pid/fd/$fd" | tr -dc 0-9)"; then
            echo "capture.sh: fd $fd of process $pid is the listening socket at $socket (nothing accepted yet): its connections will not be traced" >&2
          fi
          [ "$(wc -l <<< "$fds")" = 1 ] || echo "capture.sh: fds $(echo $fds) of process $pid are the same socket; tracing fd $fd only" >&2
        fi
        args=("$pid") sargs=(-p "$pid")
        if [ -n "$fd" ]; then
          [ -e "/proc/$pid/fd/$fd" ] || die "--fd $fd: process $pid has no fd $fd"
          args+=("$fd") sargs+=(--fd "$fd")
          read -r -a seeds <<< "$(epoll_seeds "$pid" "$fd" | tr '\n' ' ')"
          args+=(${seeds[@]+"${seeds[@]}"})
          # vnet-systrace takes each as EPFD:DATA (bash's printf prints the 64 bits unsigned)
          for ((i = 0; i + 2 < ${#seeds[@]}; i += 3)); do
            sargs+=(--epoll "$(printf '%s:0x%x' "${seeds[i]}" $(( (seeds[i + 1] << 32) | seeds[i + 2] )))")
          done
          echo "capture.sh: tracing fd $fd of process $pid${seeds:+ (epoll registrations: ${seeds[*]})}" >&2
        fi
        if [ "$tracer" = systrace ]; then
          [ $frames = 1 ] || sargs+=(--no-frames)
          status=0
          # the CSV on stdout, written as it is read from the ring; the header comes once every
          # probe is attached, which is what --ready waits for
          start_watch
          "$systrace" "${sargs[@]}" > "$out" 2> >(tee "$err" >&2) || status=$?
          stop_watch
          wait
          finish
        fi
        cp "$here/syscalls.bt" "$tmpscript"
        # stdout, not -o: the rows go through the awk as they are printed (and --ready sees
        # the header at once); a running process's output is not in the way. Line-buffered:
        # into a pipe bpftrace's stdio would hold the header until 4 KiB had gathered.
        runner=(stdbuf -oL bpftrace -q "$tmpscript" "${args[@]}" -p "$pid")
      elif [ "$tracer" = systrace ]; then
        # vnet-systrace -c holds the command until every probe is attached; -o a new file (it
        # creates it), so the command's own output goes to our stdout, not into the CSV
        sargs=(-c "${target[1]}")
        [ -z "$fd" ] || sargs+=(--fd "$fd")
        [ $frames = 1 ] || sargs+=(--no-frames)
        rawdir=$(mktemp -d)
        status=0
        "$systrace" "${sargs[@]}" -o "$rawdir/rows.csv" 2> >(tee "$err" >&2) || status=$?
        [ ! -f "$rawdir/rows.csv" ] || cat "$rawdir/rows.csv" > "$out"
        rm -rf "$rawdir"; rawdir=""
        wait
        finish
      else
        # bpftrace -c holds the command until every probe is attached; the pid filter is
        # then its child, cpid, which the script cannot name unless -c is given: a copy of
        # syscalls.bt filtering on cpid ($1 is then a placeholder)
        sed 's/pid == \$1/pid == cpid/' "$here/syscalls.bt" > "$tmpscript"
        args=(0); [ -z "$fd" ] || args+=("$fd")
        # -o: the command's own output goes to our stdout, not into the CSV; the row lines
        # are turned into rows once it has ended
        raw=$(mktemp "$final.raw.XXXXXX")
        runner=(bpftrace -q -o "$raw" "$tmpscript" "${args[@]}" -c "${target[1]}")
      fi
      if [ $frames = 0 ]; then
        # bpftrace 0.17 attaches every clause it is given: cut the frame blocks out
        sed -i '/\/\* frames {/,/\/\* } frames \*\//d' "$tmpscript"
      fi
      # syscalls.bt keeps its rows in a map between two drains (4 ms apart on each CPU):
      # 65536 rows instead of bpftrace's default 4096, so that a CPU whose timer is held
      # off for a moment loses nothing. Every map of the script gets that size,
      # preallocated: ~100 MiB of kernel memory while it runs (probes/README.md). The
      # drained rows go through the perf ring: 4 MiB per CPU instead of 256 KiB, so that a
      # bpftrace held off the CPU for a while loses nothing ("Lost N events").
      export BPFTRACE_MAP_KEYS_MAX=${BPFTRACE_MAP_KEYS_MAX:-65536}
      export BPFTRACE_PERF_RB_PAGES=${BPFTRACE_PERF_RB_PAGES:-1024}
      status=0
      if [ "${target[0]}" = -p ]; then
        # (syscalls.bt pads its header so that mawk, which reads a pipe 4 KiB at a time,
        # passes it on at once: the --ready watcher looks for it in $out)
        start_watch
        { "${runner[@]}" | awk -f "$here/syscalls-rows.awk" > "$out"; } 2> >(tee "$err" >&2) || status=$?
        stop_watch
      else
        "${runner[@]}" 2> >(tee "$err" >&2) || status=$?
        awk -f "$here/syscalls-rows.awk" "$raw" > "$out" 2> "$awkerr" || status=$?
        rm -f "$raw"
        cat "$awkerr" >&2
      fi
      wait
      finish
    fi
    [ -n "$binary" ] || { echo "capture.sh: bpftrace needs the BINARY path" >&2; usage; }
    export BPFTRACE_PERF_RB_PAGES=${BPFTRACE_PERF_RB_PAGES:-1024}
    # bpftrace 0.17 attaches every clause it is given (enobufs.bt's FRAMES=0 only filters),
    # so leaving the frame probes out means a script without their clauses
    script=$here/enobufs.bt
    if [ "$frames" = 0 ]; then
      script=$tmpscript
      awk -f "$here/noframes.awk" "$here/enobufs.bt" > "$script"
    fi
    status=0
    start_watch
    tracer_out bpftrace -q ${oflag[@]+"${oflag[@]}"} "$script" "$binary" "${target[@]}" 2> >(tee "$err" >&2) || status=$?
    stop_watch
    ;;
  Darwin)
    if [ $syscalls = 1 ]; then
      [ "$(id -u)" = 0 ] || die "--syscalls needs root (DTrace's syscall provider)"
      dargs=()
      if [ -n "$socket" ]; then
        fd=$(socket_fd_macos "${target[1]}" "$socket") || true
        [ -n "$fd" ] || die "--socket $socket: no unix socket of process ${target[1]} named $socket (lsof)"
      fi
      if [ -n "$fd" ]; then
        dargs=(-D "FD=$fd")
      elif [ "${target[0]}" = -p ]; then
        # every unix socket the process has now (syscalls.d alone would take every socket)
        ufds=$(lsof -a -p "${target[1]}" -U -F f 2> /dev/null | sed -n 's/^f\([0-9][0-9]*\)$/\1/p' | sort -un)
        [ -n "$ufds" ] || die "-p ${target[1]}: the process has no unix sockets (lsof -U)"
        dargs=(-D "TRACED(fd)=($(printf '(fd) == %s || ' $ufds)0)")
      fi
      status=0
      # stderr to a file, shown afterwards (see below: bash 3.2 and process substitution)
      start_watch
      tracer_out dtrace -C -D FRAMES=$frames ${dargs[@]+"${dargs[@]}"} -s "$here/syscalls.d" "${target[@]}" ${oflag[@]+"${oflag[@]}"} 2> "$err" || status=$?
      stop_watch
      cat "$err" >&2
      finish
    fi
    status=0
    # -C runs cpp: enobufs.d's '#if FRAMES' leaves the frame clauses unenabled
    # stderr to a file, shown afterwards: macOS's /bin/bash 3.2 does not wait for a
    # process substitution, so a tee of it could still be writing when we count drops
    start_watch
    tracer_out dtrace -C -D FRAMES=$frames -s "$here/enobufs.d" "${target[@]}" ${oflag[@]+"${oflag[@]}"} 2> "$err" || status=$?
    stop_watch
    cat "$err" >&2
    ;;
  *) echo "capture.sh: no tracer for $(uname -s)" >&2; exit 1 ;;
esac
wait # for the tee of stderr
finish
