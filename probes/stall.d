#!/usr/sbin/dtrace -Cs
/*
 * stall.d - Catch a deferred-frame hang while it happens (macOS twin of stall.bt).
 *
 * Prints a line the moment a backpressure episode (a frame the proxy could
 * not take) has lasted longer than a threshold, and another when the deferred
 * frame has seen no write event, no retry timer and no TX-queue kick for
 * that long: nothing is left that would retry it - the ENOBUFS hang of libkrun
 * issue 555, caught live instead of after a VM restart. A line follows when
 * the episode finally resolves. A healthy run prints only the banner.
 *
 * USAGE: sudo dtrace -C -s probes/stall.d [-D NAME=VALUE ...] [MS] -p PID
 *        sudo dtrace -C -s probes/stall.d [-D NAME=VALUE ...] [MS] -c 'CMD ARGS'
 *
 *   MS   threshold in milliseconds (default 10)
 *   -C   runs the C preprocessor (required: the options below are macros).
 *        Apple's dtrace runs it as /usr/bin/clang -E, which the Xcode Command
 *        Line Tools provide (xcode-select --install).
 *   -D SWITCHRATE=200hz   how often dtrace drains its buffers (default 100hz)
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
 * Example: sudo dtrace -C -s probes/stall.d 10 -p $(pgrep -n vnet-sim)
 *
 * Watches one deferred frame at a time (the first fd that enters an episode;
 * a device has one proxy socket), checked every millisecond by tick-1ms.
 * Not run in CI (no DTrace on Linux); the probe names are checked against
 * dtrace/vnet.d by device/sim/tests/probe_scripts.rs.
 */

#ifndef SWITCHRATE
#define SWITCHRATE 100hz
#endif
/* cpp does not expand macros in #pragma lines; it does in _Pragma's argument */
#define VNET_STR(x) #x
#define VNET_OPTION(x) _Pragma(VNET_STR(D option x))

#pragma D option quiet
#pragma D option defaultargs
VNET_OPTION(switchrate=SWITCHRATE)

/* the one deferred frame being watched; declared so arg0 (uint64_t) compares as signed */
int64_t dfd, since, wake, len, fails, writes, small, timers, kicks, thresh;
int told_long, told_quiet;

dtrace:::BEGIN
{
	thresh = $1 > 0 ? $1 * 1000000 : 10000000;
	dfd = -1;
	printf("Watching for episodes longer than %d ms and deferred frames nothing retries. Ctrl-C to end.\n",
	    thresh / 1000000);
	printf("%-20s %-12s %s\n", "TIME", "EVENT", "DETAILS");
}

vnet$target:::enobufs_begin
/dfd == -1/
{
	dfd = arg0;
	since = timestamp;
	wake = timestamp;
	len = arg1;
	fails = 1;
	writes = 0;
	small = 0;
	timers = 0;
	kicks = 0;
	told_long = 0;
	told_quiet = 0;
}

vnet$target:::enobufs_retry
/arg0 == dfd/
{
	fails = arg1;
	wake = timestamp;
}

vnet$target:::kevent_write
/arg0 == dfd/
{
	writes++;
	/* args are uint64_t: compare as signed so data=-1 (unknown) is not "room" */
	small += ((int64_t)arg1 >= 0 && (int64_t)arg1 < len) ? 1 : 0;
	wake = timestamp;
}

vnet$target:::timer_fired
/dfd != -1/
{
	timers++;
	wake = timestamp;
}

/* only a TX-queue kick (odd queue index in virtio-net) makes the device retry */
vnet$target:::guest_kick
/dfd != -1 && arg0 % 2 == 1/
{
	kicks++;
	wake = timestamp;
}

profile:::tick-1ms
/dfd != -1 && told_long == 0 && timestamp - since > thresh/
{
	printf("%Y %-12s fd=%d frame=%d deferred %d ms: %d failed sends, %d write events (%d too small), %d timers, %d TX kicks\n",
	    walltimestamp, "LONG", dfd, len, (timestamp - since) / 1000000, fails, writes, small, timers, kicks);
	told_long = 1;
}

profile:::tick-1ms
/dfd != -1 && told_quiet == 0 && timestamp - wake > thresh/
{
	printf("%Y %-12s fd=%d frame=%d deferred %d ms, nothing for %d ms: no write event, no timer, no TX kick will retry it\n",
	    walltimestamp, "STALL", dfd, len, (timestamp - since) / 1000000, (timestamp - wake) / 1000000);
	told_quiet = 1;
}

vnet$target:::enobufs_resolved
/arg0 == dfd && (told_long || told_quiet)/
{
	printf("%Y %-12s fd=%d after %d retries, waited %d ms\n", walltimestamp, "RESOLVED", arg0, arg1,
	    arg2 / 1000000);
}

vnet$target:::enobufs_resolved
/arg0 == dfd/
{
	dfd = -1;
}

dtrace:::END
/dfd != -1/
{
	printf("at exit: fd=%d still deferred for %d ms (%d failed sends)\n", dfd, (timestamp - since) / 1000000,
	    fails);
}
