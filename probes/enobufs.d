#!/usr/sbin/dtrace -Cs
/*
 * enobufs.d - Write every vnet USDT probe firing as the vnetscope trace CSV.
 *
 * The macOS twin of enobufs.bt (same rows, same columns; a test in
 * device/sim/tests/probe_scripts.rs keeps the two from drifting). Output is the
 * trace CSV of dtrace/README.md: one clock comment line, the header, then one row
 * per probe firing, for `analyze report` and the notebooks.
 *
 * USAGE: sudo dtrace -C -s probes/enobufs.d [-D NAME=VALUE ...] -p PID       [-o FILE]
 *        sudo dtrace -C -s probes/enobufs.d [-D NAME=VALUE ...] -c 'CMD ARGS' [-o FILE]
 *
 *   -C      runs the C preprocessor over the script; required (without it
 *           dtrace rejects the #if lines below). Apple's dtrace runs it as
 *           /usr/bin/clang -E, which the Xcode Command Line Tools provide
 *           (xcode-select --install).
 *   -D FRAMES=0
 *           leaves tx_frame/rx_frame out for long runs (they are most of
 *           the rows). Their clauses are not compiled, so those probes are
 *           never enabled: no cost per frame, and the device's is-enabled
 *           check skips them. Default (no -D, or FRAMES=1): record them.
 *   -D BUFSIZE=64m      principal buffer per CPU (default 16m)
 *   -D SWITCHRATE=200hz how often dtrace drains it (default 100hz)
 *   -D DYNVARSIZE=8m    dynamic variable space (default 4m)
 *           These are macros because dtrace's -x cannot override a
 *           "#pragma D option" in the script: the pragma wins.
 *   -o FILE writes the CSV to FILE (remove an old FILE first: dtrace may append)
 *   probes/capture.sh wraps this, sorts rows by time and turns DTrace's
 *   drop messages into a warning and a comment line in the CSV.
 *
 * The process must carry the vnet provider: a vnet-sim (or another program
 * built on vnet-device). An unmodified VMM (krunkit, vfkit, QEMU) has no
 * vnet probes, and dtrace stops with "probe description vnet<pid>:::...
 * does not match any probes"; VMMs without them are traced at the system
 * call level by the syscall scripts instead.
 *
 * Example: a 30 s simulated VM with injected ENOBUFS
 *   sudo dtrace -C -s probes/enobufs.d -o trace.csv \
 *       -c 'target/release/vnet-sim --duration 30 --inject-enobufs 50'
 *   or attach: sudo dtrace -C -s probes/enobufs.d -p $(pgrep -n vnet-sim) -o trace.csv
 *
 * SIP: with System Integrity Protection's DTrace restriction on (the
 * default), dtrace refuses restricted processes (Apple-signed, or hardened
 * runtime without the get-task-allow entitlement). A locally built vnet-sim
 * is neither, so it can be traced with SIP on.
 *
 * Buffers: a bidirectional iperf3 run with 8 streams fires well under 200k
 * probes/s; a row is ~70 bytes in the principal buffer, so 16 MiB per CPU
 * drained 100 times a second has >10x headroom. When DTrace still cannot
 * keep up it prints "dtrace: N drops on CPU M" on stderr; that is the
 * warning to look for (rows are missing from the CSV). Runtime errors
 * (dtrace:::ERROR) are counted and reported in a '# warning' comment at exit.
 *
 * Columns (dtrace/README.md): ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno
 * ts_ns is `timestamp` (mach_absolute_time in ns: it stops while the Mac
 * sleeps); the clock line pairs it with `walltimestamp`. The in-process
 * recorder uses CLOCK_UPTIME_RAW on macOS, the same clock, so its rows and
 * these compare directly.
 */

#ifndef FRAMES
#define FRAMES 1
#endif

#ifndef BUFSIZE
#define BUFSIZE 16m
#endif
#ifndef SWITCHRATE
#define SWITCHRATE 100hz
#endif
#ifndef DYNVARSIZE
#define DYNVARSIZE 4m
#endif
/* cpp does not expand macros in #pragma lines; it does in _Pragma's argument */
#define VNET_STR(x) #x
#define VNET_OPTION(x) _Pragma(VNET_STR(D option x))

#pragma D option quiet
VNET_OPTION(bufsize=BUFSIZE)
#pragma D option bufresize=manual
VNET_OPTION(switchrate=SWITCHRATE)
VNET_OPTION(dynvarsize=DYNVARSIZE)
#pragma D option strsize=32

dtrace:::BEGIN
{
	printf("# clock mono_ns=%d wall_ns=%d\n", timestamp, walltimestamp);
	printf("ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno\n");
}

vnet$target:::enobufs_begin
{
	/* fd, frame_len, errno */
	printf("%d,%d,enobufs_begin,%d,,%d,,,,%d\n", timestamp, tid, arg0, arg1, arg2);
}

vnet$target:::enobufs_retry
{
	/* fd, attempt, errno */
	printf("%d,%d,enobufs_retry,%d,,,,%d,,%d\n", timestamp, tid, arg0, arg1, arg2);
}

vnet$target:::enobufs_resolved
{
	/* fd, retries, wait_ns, frame_len */
	printf("%d,%d,enobufs_resolved,%d,,%d,,%d,%d,\n", timestamp, tid, arg0, arg3, arg1, arg2);
}

vnet$target:::kevent_write
{
	/* fd, data = free send space */
	printf("%d,%d,kevent_write,%d,,,%d,,,\n", timestamp, tid, arg0, arg1);
}

vnet$target:::kevent_read
{
	/* fd, data = bytes waiting */
	printf("%d,%d,kevent_read,%d,,,%d,,,\n", timestamp, tid, arg0, arg1);
}

vnet$target:::timer_fired
{
	/* delay_us goes to data */
	printf("%d,%d,timer_fired,,,,%d,,,\n", timestamp, tid, arg0);
}

#if FRAMES
vnet$target:::tx_frame
{
	/* fd, len */
	printf("%d,%d,tx_frame,%d,,%d,,,,\n", timestamp, tid, arg0, arg1);
}

vnet$target:::rx_frame
{
	/* fd, len */
	printf("%d,%d,rx_frame,%d,,%d,,,,\n", timestamp, tid, arg0, arg1);
}
#endif

vnet$target:::guest_kick
{
	/* queue */
	printf("%d,%d,guest_kick,,%d,,,,,\n", timestamp, tid, arg0);
}

vnet$target:::guest_irq
{
	/* queue */
	printf("%d,%d,guest_irq,,%d,,,,,\n", timestamp, tid, arg0);
}

vnet$target:::frame_drop
{
	/* fd, len, reason goes to data */
	printf("%d,%d,frame_drop,%d,,%d,%d,,,\n", timestamp, tid, arg0, arg1, arg2);
}

dtrace:::ERROR
{
	@errors = count();
}

dtrace:::END
{
	printa("# warning: %@d DTrace runtime errors while tracing; rows are missing\n", @errors);
}
