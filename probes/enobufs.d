#!/usr/sbin/dtrace -Cs
/*
 * enobufs.d - Write every vnet USDT probe firing as the vnetscope trace CSV.
 *
 * The macOS twin of enobufs.bt (same rows, same columns; a test in
 * device/sim/tests/probe_scripts.rs keeps the two from drifting). Output is the
 * trace CSV of design.md: one clock comment line, the header, then one row
 * per probe firing, for `analyze report` and the notebooks.
 *
 * USAGE: sudo dtrace -C -s probes/enobufs.d [-D FRAMES=0] -p PID      [-o FILE]
 *        sudo dtrace -C -s probes/enobufs.d [-D FRAMES=0] -c 'CMD ARGS' [-o FILE]
 *
 *   -C      runs the C preprocessor over the script; required (without it
 *           dtrace rejects the #if lines below)
 *   -D FRAMES=0
 *           leaves tx_frame/rx_frame out for long runs (they are most of
 *           the rows). Their clauses are not compiled, so those probes are
 *           never enabled: no cost per frame, and the device's is-enabled
 *           check skips them. Default (no -D, or FRAMES=1): record them.
 *   -o FILE writes the CSV to FILE (remove an old FILE first: dtrace may append)
 *   probes/capture.sh wraps this, sorts rows by time and turns DTrace's
 *   drop messages into a warning and a comment line in the CSV.
 *
 * Example: a 10-minute iperf3 run against krunkit with the vnet probes
 *   sudo dtrace -C -s probes/enobufs.d -p $(pgrep -n krunkit) -o trace.csv
 *
 * Buffers: a bidirectional iperf3 run with 8 streams fires well under 200k
 * probes/s; a row is ~70 bytes in the principal buffer, so 16 MiB per CPU
 * drained 100 times a second has >10x headroom. When DTrace still cannot
 * keep up it prints "dtrace: N drops on CPU M" on stderr; that is the
 * warning to look for (rows are missing from the CSV). Runtime errors
 * (dtrace:::ERROR) are counted and reported in a '# warning' comment at exit.
 *
 * Columns (design.md): ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno
 * ts_ns is `timestamp`; the clock line pairs it with `walltimestamp`.
 */

#ifndef FRAMES
#define FRAMES 1
#endif

#pragma D option quiet
#pragma D option bufsize=16m
#pragma D option bufresize=manual
#pragma D option switchrate=100hz
#pragma D option dynvarsize=4m
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
