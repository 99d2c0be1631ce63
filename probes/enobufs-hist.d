#!/usr/sbin/dtrace -Cs
/*
 * enobufs-hist.d - Backpressure summary every N seconds (macOS twin of
 *                  enobufs-hist.bt): how long episodes wait, how many retries
 *                  they need, and how many write wake-ups could not have
 *                  succeeded.
 *
 * Every interval prints a power-of-2 histogram of episode wait times (first
 * failed send to the frame written, microseconds), a linear histogram of
 * retries per episode (failed sends, the first included: the N of "resolved
 * after N retries"), and counts of write wake-ups during an episode split by
 * whether the free send space (kqueue's data) could hold the pending frame:
 * the data=17996 wake-ups for a 65226-byte frame of libkrun PR 556.
 * Aggregations reset every interval.
 *
 * USAGE: sudo dtrace -C -s probes/enobufs-hist.d [-D NAME=VALUE ...] [SECS] -p PID
 *        sudo dtrace -C -s probes/enobufs-hist.d [-D NAME=VALUE ...] [SECS] -c 'CMD ARGS'
 *
 *   SECS  print interval in seconds (default 1)
 *   -C   runs the C preprocessor (required: the options below are macros).
 *        Apple's dtrace runs it as /usr/bin/clang -E, which the Xcode Command
 *        Line Tools provide (xcode-select --install).
 *   -D DYNVARSIZE=8m      dynamic variable space (default 4m)
 *        Macros, because dtrace's -x cannot override a "#pragma D option" in
 *        the script: the pragma wins.
 *
 * Attach to a process with the vnet provider (vnet-sim, or another program
 * built on vnet-device); an unmodified VMM (krunkit, vfkit) has none, and
 * dtrace stops with "probe description ... does not match any probes".
 * SIP: with System Integrity Protection's DTrace restriction on, dtrace
 * refuses restricted (Apple-signed or hardened) processes; a locally built
 * vnet-sim is neither.
 *
 * Example: sudo dtrace -C -s probes/enobufs-hist.d 5 -p $(pgrep -n vnet-sim)
 *
 * Not run in CI (no DTrace on Linux); the probe names are checked against
 * dtrace/vnet.d by device/sim/tests/probe_scripts.rs.
 */

#ifndef DYNVARSIZE
#define DYNVARSIZE 4m
#endif
/* cpp does not expand macros in #pragma lines; it does in _Pragma's argument */
#define VNET_STR(x) #x
#define VNET_OPTION(x) _Pragma(VNET_STR(D option x))

#pragma D option quiet
#pragma D option defaultargs
VNET_OPTION(dynvarsize=DYNVARSIZE)

int64_t pending[int64_t];	/* fd -> size of the frame deferred on it */
int64_t every, ticks;

dtrace:::BEGIN
{
	every = $1 > 0 ? $1 : 1;
	ticks = 0;
	printf("Backpressure every %d s: episode waits, retries, useless write wake-ups. Ctrl-C to end.\n", every);
}

vnet$target:::enobufs_begin
{
	pending[arg0] = arg1;
}

/* args are uint64_t: data=-1 (free space unknown) must compare as signed */
vnet$target:::kevent_write
/pending[arg0] && (int64_t)arg1 < 0/
{
	@wakeups["free space unknown"] = count();
}

vnet$target:::kevent_write
/pending[arg0] && (int64_t)arg1 >= 0 && (int64_t)arg1 < pending[arg0]/
{
	@wakeups["too little room for the frame"] = count();
}

vnet$target:::kevent_write
/pending[arg0] && (int64_t)arg1 >= pending[arg0]/
{
	@wakeups["room for the frame"] = count();
}

vnet$target:::enobufs_resolved
{
	pending[arg0] = 0;
	@wait_us = quantize(arg2 / 1000);
	@retries = lquantize(arg1, 0, 10, 1);
	@episodes = count();
}

profile:::tick-1s
{
	ticks++;
}

profile:::tick-1s
/ticks >= every/
{
	ticks = 0;
	printf("\n%Y\n", walltimestamp);
	printa("episodes resolved: %@d\n", @episodes);
	printf("episode wait (us):");
	printa(@wait_us);
	printf("retries per episode:");
	printa(@retries);
	printf("write wake-ups during episodes:\n");
	printa("    %-32s %@d\n", @wakeups);
	trunc(@episodes);
	trunc(@wait_us);
	trunc(@retries);
	trunc(@wakeups);
}

dtrace:::END
{
	printf("\n%Y (last interval)\n", walltimestamp);
	printa("episodes resolved: %@d\n", @episodes);
	printa(@wait_us);
	printa(@retries);
	printa("    %-32s %@d\n", @wakeups);
}
