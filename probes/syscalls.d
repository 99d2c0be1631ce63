#!/usr/sbin/dtrace -Cs
/*
 * syscalls.d - The trace CSV of enobufs.d for a process WITHOUT our probes.
 *
 * The macOS twin of syscalls.bt: for one unmodified process (krunkit, vfkit,
 * QEMU, gvproxy, vmnet-helper, ...) it watches the system calls on its unix
 * sockets and writes the vnetscope trace CSV (dtrace/README.md), for `analyze`, the
 * notebooks and the timelines:
 *
 *   enobufs_begin     a send failed with ENOBUFS (55) or EAGAIN (35) and that
 *                     fd had no open episode (len = bytes asked for, errno)
 *   enobufs_retry     each further failed send on that fd (retries = 2, 3, ...)
 *   enobufs_resolved  the first successful send after that (retries = failed
 *                     sends, the first included; wait_ns from the first failure)
 *   tx_frame/rx_frame a successful send/receive (len = bytes it moved; one row
 *                     per message of sendmsg_x/recvmsg_x)
 *   kevent_write/_read kevent/kevent64/kevent_qos returned EVFILT_WRITE /
 *                     EVFILT_READ for a traced fd; data = the event's data:
 *                     free send space / bytes waiting, exactly the value a
 *                     VMM's "kevent: WRITE fd=.. data=.." log line shows
 *
 * Sends: sendto, sendmsg, sendmsg_x, write, writev (and their _nocancel
 * forms). Receives: recvfrom, recvmsg, recvmsg_x, read, readv (and
 * _nocancel). The returned kevents are copied in from the process (copyin)
 * at the return; kqueue's ident is the fd, so no registration is needed.
 *
 * NOT RUN: there is no macOS here. Written against Apple's D (syscall
 * provider, errno, copyin, $target, fds[]) and XNU's bsd/sys/event.h and
 * socket.h layouts for 64-bit processes, checked by reading; the cpp part
 * (option macros below) checked with clang -E. syscalls.d_example.txt shows
 * the expected shape, not a capture.
 *
 * USAGE: sudo dtrace -C -s probes/syscalls.d -p PID [-D FD=N] [-o FILE]
 *        sudo dtrace -C -s probes/syscalls.d -c 'CMD ARGS' [-D FD=N] [-o FILE]
 *
 *   -C      runs the C preprocessor; required (macros below)
 *   -D FD=N trace only fd N (probes/capture.sh --syscalls --socket PATH finds
 *           it with lsof)
 *   -D 'TRACED(fd)=(...)'
 *           any predicate on the fd instead; capture.sh passes the process's
 *           unix-socket fds as lsof lists them at the start. Default, with
 *           neither: every socket (Darwin's fds[] names a socket "<socket>"),
 *           so TCP/UDP sockets of the process are counted too
 *   -D FRAMES=0
 *           episodes and wake-ups only: the receive probes are not enabled
 *           and sends write no tx_frame rows (capture.sh --no-frames)
 *   -D BUFSIZE=64m -D SWITCHRATE=200hz -D DYNVARSIZE=16m
 *           buffer options (defaults 16m, 100hz, 8m); macros, because an
 *           option set by #pragma in the script cannot be overridden
 *
 * Limits: events past the 16th of one kevent return, and messages past the
 * 8th of one sendmsg_x/recvmsg_x, are not decoded (D has no loops: one clause
 * per index); a '# warning' line at the end counts them. A send's length is
 * summed over at most 128 iovecs (32 per sendmsg_x message): with more,
 * enobufs_begin's len is -1, enobufs_resolved's is the return value, a
 * sendmsg_x tx_frame's is -1 (syscalls.bt sums up to Linux's limit, 1024).
 *
 * Stream sockets (socket_vmnet, QEMU -netdev stream): rows are per system
 * call, not per frame (a frame is a 4-byte length and the payload, possibly
 * in several calls). A PARTIAL write (fewer bytes than asked, > 0) ends an
 * episode: the kernel took bytes; if the rest then fails, that is a new
 * episode. Datagram sockets (gvproxy, vmnet-helper, vfkit) are one frame per
 * call and match the device's own probes row for row.
 *
 * Other errors (EPIPE, ...) write no row and leave an episode open; closing
 * the fd ends it without a row. Rows come from per-CPU buffers: sort by ts_ns
 * (capture.sh does). ts_ns is `timestamp` at the system call's return.
 *
 * Rows are printed from the probes, unlike syscalls.bt (which keeps them in
 * maps and prints every 100 ms, because a bpftrace printf wakes its reader and
 * that delayed the traced thread): DTrace's printf only fills the per-CPU
 * buffer, which dtrace drains SWITCHRATE times a second, so the traced thread
 * never waits for the consumer. Not measured (no macOS here).
 * Columns (dtrace/README.md): ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno
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
#define DYNVARSIZE 8m
#endif
/* "#pragma D option bufsize=BUFSIZE" would not expand the macro: build the
 * pragma with _Pragma from a string that does */
#define VNET_STR(x) #x
#define VNET_OPTION(x) _Pragma(VNET_STR(D option x))
VNET_OPTION(bufsize=BUFSIZE)
VNET_OPTION(switchrate=SWITCHRATE)
VNET_OPTION(dynvarsize=DYNVARSIZE)
#pragma D option quiet
#pragma D option bufresize=manual
#pragma D option strsize=32

#if defined(FD)
#define TRACED(fd) ((fd) == FD)
#elif !defined(TRACED)
#define TRACED(fd) (fds[fd].fi_name == "<socket>")
#endif

/* XNU errno values */
#define VNET_EAGAIN 35
#define VNET_ENOBUFS 55
#define VNET_FAILED(ret) ((int64_t)(ret) < 0 && (errno == VNET_EAGAIN || errno == VNET_ENOBUFS))
/* EVFILT_READ, EVFILT_WRITE; EV_ERROR marks a changelist error, not an event */
#define VNET_EVFILT_READ (-1)
#define VNET_EVFILT_WRITE (-2)
#define VNET_EV_ERROR 0x4000

/* user-space layouts, 64-bit processes (bsd/sys/socket.h, bsd/sys/uio.h) */
struct vnet_iovec {
	uint64_t base;
	uint64_t len;
};
struct vnet_msghdr {		/* struct msghdr: 48 bytes */
	uint64_t name;
	uint32_t namelen;
	uint32_t pad0;
	uint64_t iov;
	int32_t iovlen;
	int32_t pad1;
	uint64_t control;
	uint32_t controllen;
	int32_t flags;
};
struct vnet_msghdr_x {		/* struct msghdr_x (sendmsg_x/recvmsg_x): 56 bytes */
	uint64_t name;
	uint32_t namelen;
	uint32_t pad0;
	uint64_t iov;
	int32_t iovlen;
	int32_t pad1;
	uint64_t control;
	uint32_t controllen;
	int32_t flags;
	uint64_t datalen;	/* recvmsg_x: bytes received into this message */
};
/*
 * The returned events (bsd/sys/event.h), read by offset since the three
 * layouts differ only in size and where `data` sits:
 *   struct kevent (user64_kevent)  32 bytes: ident@0 filter@8 flags@10 data@16
 *   struct kevent64_s              48 bytes: ident@0 filter@8 flags@10 data@16
 *   struct kevent_qos_s            72 bytes: ident@0 filter@8 flags@10 data@32
 */
struct vnet_kevent_head {
	uint64_t ident;
	int16_t filter;
	uint16_t flags;
};

/* signed: -1 stands for "more iovecs than the sum covers" */
self int64_t len;

dtrace:::BEGIN
{
	printf("# clock mono_ns=%d wall_ns=%d\n", timestamp, walltimestamp);
	printf("ts_ns,tid,probe,fd,queue,len,data,retries,wait_ns,errno\n");
	undecoded = 0;
}

/* --- entries: remember the fd (+1: 0 means none) and what a send asked for ---------------- */
syscall::sendto:entry, syscall::sendto_nocancel:entry,
syscall::write:entry, syscall::write_nocancel:entry
/pid == $target && TRACED(arg0)/
{
	self->fd = arg0 + 1;
	self->len = arg2;
}

syscall::sendmsg:entry, syscall::sendmsg_nocancel:entry
/pid == $target && TRACED(arg0)/
{
	self->fd = arg0 + 1;
	this->m = (struct vnet_msghdr *)copyin(arg1, sizeof (struct vnet_msghdr));
	self->iov = this->m->iov;
	self->iovcnt = this->m->iovlen;
}

syscall::sendmsg_x:entry
/pid == $target && TRACED(arg0)/
{
	self->fd = arg0 + 1;
	this->mx = (struct vnet_msghdr_x *)copyin(arg1, sizeof (struct vnet_msghdr_x));
	self->iov = this->mx->iov;
	self->iovcnt = this->mx->iovlen;
	self->msgs = arg1;
}

syscall::writev:entry, syscall::writev_nocancel:entry
/pid == $target && TRACED(arg0)/
{
	self->fd = arg0 + 1;
	self->iov = arg1;
	self->iovcnt = arg2;
}

/*
 * The length asked for: the sum of EVERY iovec, up to VNET_IOV_BOUND of them. D has no
 * loops, so the sum is written out term by term (VNET_SUM32: 32 terms, each guarded by
 * the count), over one copyin of the array. A frame of the device is at most 32 pieces
 * (device/core/src/frame.rs MAX_IOV); its stream backend puts up to 1024 iovecs (IOV_MAX)
 * in one call (device/core/src/backend/stream_tx.rs IOV_LIMIT), and 128 covers a batch
 * of small frames but not all. Above the bound no partial sum is made: len is -1 on
 * enobufs_begin, and enobufs_resolved takes the return value instead (the bytes the
 * kernel took: the whole message on a datagram socket, maybe part of it on a stream).
 * Written against XNU's struct iovec (bsd/sys/uio.h), not run (no macOS here).
 */
#define VNET_IOV_BOUND 128
#define VNET_T(v, k, j) ((k) > (j) ? (v)[j].len : 0)
#define VNET_SUM8(v, k, j) (VNET_T(v, k, (j)) + VNET_T(v, k, (j) + 1) + VNET_T(v, k, (j) + 2) + \
	VNET_T(v, k, (j) + 3) + VNET_T(v, k, (j) + 4) + VNET_T(v, k, (j) + 5) + \
	VNET_T(v, k, (j) + 6) + VNET_T(v, k, (j) + 7))
#define VNET_SUM32(v, k, j) (VNET_SUM8(v, k, (j)) + VNET_SUM8(v, k, (j) + 8) + \
	VNET_SUM8(v, k, (j) + 16) + VNET_SUM8(v, k, (j) + 24))

syscall::sendmsg:entry, syscall::sendmsg_nocancel:entry, syscall::sendmsg_x:entry,
syscall::writev:entry, syscall::writev_nocancel:entry
/self->fd && self->iovcnt > VNET_IOV_BOUND/
{
	self->len = -1;
	self->iov = 0;
	self->iovcnt = 0;
}

syscall::sendmsg:entry, syscall::sendmsg_nocancel:entry, syscall::sendmsg_x:entry,
syscall::writev:entry, syscall::writev_nocancel:entry
/self->fd && self->iovcnt > 0/
{
	this->k = self->iovcnt;
	this->v = (struct vnet_iovec *)copyin(self->iov, this->k * sizeof (struct vnet_iovec));
	self->len = VNET_SUM32(this->v, this->k, 0);
	self->len += this->k > 32 ? VNET_SUM32(this->v, this->k, 32) : 0;
	self->len += this->k > 64 ? VNET_SUM32(this->v, this->k, 64) : 0;
	self->len += this->k > 96 ? VNET_SUM32(this->v, this->k, 96) : 0;
	self->iov = 0;
	self->iovcnt = 0;
}

#if FRAMES
syscall::recvfrom:entry, syscall::recvfrom_nocancel:entry,
syscall::recvmsg:entry, syscall::recvmsg_nocancel:entry,
syscall::read:entry, syscall::read_nocancel:entry,
syscall::readv:entry, syscall::readv_nocancel:entry
/pid == $target && TRACED(arg0)/
{
	self->fd = arg0 + 1;
}

syscall::recvmsg_x:entry
/pid == $target && TRACED(arg0)/
{
	self->fd = arg0 + 1;
	self->msgs = arg1;
}
#endif

/* --- sends: episodes and tx_frame ------------------------------------------------------- */
syscall::sendto:return, syscall::sendto_nocancel:return,
syscall::write:return, syscall::write_nocancel:return,
syscall::sendmsg:return, syscall::sendmsg_nocancel:return,
syscall::sendmsg_x:return,
syscall::writev:return, syscall::writev_nocancel:return
/self->fd/
{
	/* one clock reading per return: begin's ts and the episode start, or
	 * resolved's ts and its wait, are the same instant */
	this->now = timestamp;
	this->fd = self->fd - 1;
	this->failed = VNET_FAILED(arg0);
	this->open = ep_start[pid, this->fd] != 0;
	this->ok = (int64_t)arg0 >= 0;
}

syscall::sendto:return, syscall::sendto_nocancel:return,
syscall::write:return, syscall::write_nocancel:return,
syscall::sendmsg:return, syscall::sendmsg_nocancel:return,
syscall::sendmsg_x:return,
syscall::writev:return, syscall::writev_nocancel:return
/self->fd && this->failed && !this->open/
{
	ep_start[pid, this->fd] = this->now;
	ep_retries[pid, this->fd] = 1;
	printf("%d,%d,enobufs_begin,%d,,%d,,,,%d\n", this->now, tid, this->fd, self->len, errno);
}

syscall::sendto:return, syscall::sendto_nocancel:return,
syscall::write:return, syscall::write_nocancel:return,
syscall::sendmsg:return, syscall::sendmsg_nocancel:return,
syscall::sendmsg_x:return,
syscall::writev:return, syscall::writev_nocancel:return
/self->fd && this->failed && this->open/
{
	ep_retries[pid, this->fd]++;
	printf("%d,%d,enobufs_retry,%d,,,,%d,,%d\n", this->now, tid, this->fd, ep_retries[pid, this->fd], errno);
}

syscall::sendto:return, syscall::sendto_nocancel:return,
syscall::write:return, syscall::write_nocancel:return,
syscall::sendmsg:return, syscall::sendmsg_nocancel:return,
syscall::sendmsg_x:return,
syscall::writev:return, syscall::writev_nocancel:return
/self->fd && this->ok && this->open/
{
	printf("%d,%d,enobufs_resolved,%d,,%d,,%d,%d,\n", this->now, tid, this->fd,
	    self->len >= 0 ? self->len : (int64_t)arg0,
	    ep_retries[pid, this->fd], this->now - ep_start[pid, this->fd]);
	ep_start[pid, this->fd] = 0;
	ep_retries[pid, this->fd] = 0;
}

/*
 * close: an episode still open on the fd ends with it, so the next socket that gets the
 * number starts clean (its first send is a tx_frame, not the old episode's
 * "resolved"). syscalls.bt does the same; test.sh checks it there.
 */
syscall::close:entry, syscall::close_nocancel:entry
/pid == $target && ep_start[pid, arg0] != 0/
{
	ep_start[pid, arg0] = 0;
	ep_retries[pid, arg0] = 0;
}

#if FRAMES
/* sendto/write/sendmsg/writev return the bytes sent */
syscall::sendto:return, syscall::sendto_nocancel:return,
syscall::write:return, syscall::write_nocancel:return,
syscall::sendmsg:return, syscall::sendmsg_nocancel:return,
syscall::writev:return, syscall::writev_nocancel:return
/self->fd && this->ok/
{
	printf("%d,%d,tx_frame,%d,,%d,,,,\n", this->now, tid, this->fd, (int64_t)arg0);
}

/*
 * sendmsg_x returns the number of messages sent: one tx_frame per message,
 * len = the sum of its iovecs (a datagram frame: at most 32 pieces, the device's
 * MAX_IOV; a message with more gets -1, not a partial sum). D has no loops: one
 * clause per message index, up to 8.
 */
#define VNET_SENT_MSG(i) \
syscall::sendmsg_x:return \
/self->fd && this->ok && (int64_t)arg0 > i/ \
{ \
	this->mx = (struct vnet_msghdr_x *)copyin(self->msgs + i * sizeof (struct vnet_msghdr_x), \
	    sizeof (struct vnet_msghdr_x)); \
	this->k = this->mx->iovlen > 32 ? 32 : this->mx->iovlen; \
	this->v = (struct vnet_iovec *)copyin(this->mx->iov, (this->k > 0 ? this->k : 1) * sizeof (struct vnet_iovec)); \
	printf("%d,%d,tx_frame,%d,,%d,,,,\n", this->now, tid, this->fd, \
	    this->mx->iovlen > 32 ? (int64_t)-1 : (int64_t)VNET_SUM32(this->v, this->k, 0)); \
}
VNET_SENT_MSG(0)
VNET_SENT_MSG(1)
VNET_SENT_MSG(2)
VNET_SENT_MSG(3)
VNET_SENT_MSG(4)
VNET_SENT_MSG(5)
VNET_SENT_MSG(6)
VNET_SENT_MSG(7)

syscall::sendmsg_x:return
/self->fd && this->ok && (int64_t)arg0 > 8/
{
	undecoded += (int64_t)arg0 - 8;
}
#endif

syscall::sendto:return, syscall::sendto_nocancel:return,
syscall::write:return, syscall::write_nocancel:return,
syscall::sendmsg:return, syscall::sendmsg_nocancel:return,
syscall::sendmsg_x:return,
syscall::writev:return, syscall::writev_nocancel:return
/self->fd/
{
	self->fd = 0;
	self->len = 0;
	self->msgs = 0;
}

#if FRAMES
/* --- receives: rx_frame ------------------------------------------------------------------ */
syscall::recvfrom:return, syscall::recvfrom_nocancel:return,
syscall::recvmsg:return, syscall::recvmsg_nocancel:return,
syscall::read:return, syscall::read_nocancel:return,
syscall::readv:return, syscall::readv_nocancel:return
/self->fd && (int64_t)arg0 > 0/
{
	printf("%d,%d,rx_frame,%d,,%d,,,,\n", timestamp, tid, self->fd - 1, (int64_t)arg0);
}

/* recvmsg_x returns the number of messages; each one's msg_datalen holds its bytes */
#define VNET_RECEIVED_MSG(i) \
syscall::recvmsg_x:return \
/self->fd && (int64_t)arg0 > i/ \
{ \
	this->mx = (struct vnet_msghdr_x *)copyin(self->msgs + i * sizeof (struct vnet_msghdr_x), \
	    sizeof (struct vnet_msghdr_x)); \
	printf("%d,%d,rx_frame,%d,,%d,,,,\n", timestamp, tid, self->fd - 1, this->mx->datalen); \
}
VNET_RECEIVED_MSG(0)
VNET_RECEIVED_MSG(1)
VNET_RECEIVED_MSG(2)
VNET_RECEIVED_MSG(3)
VNET_RECEIVED_MSG(4)
VNET_RECEIVED_MSG(5)
VNET_RECEIVED_MSG(6)
VNET_RECEIVED_MSG(7)

syscall::recvmsg_x:return
/self->fd && (int64_t)arg0 > 8/
{
	undecoded += (int64_t)arg0 - 8;
}

syscall::recvfrom:return, syscall::recvfrom_nocancel:return,
syscall::recvmsg:return, syscall::recvmsg_nocancel:return,
syscall::recvmsg_x:return,
syscall::read:return, syscall::read_nocancel:return,
syscall::readv:return, syscall::readv_nocancel:return
/self->fd/
{
	self->fd = 0;
	self->msgs = 0;
}
#endif

/* --- the poller: kevent, kevent64, kevent_qos -------------------------------------------- */
/* the event list (arg3 of all three) is only filled at the return: remember it */
syscall::kevent:entry, syscall::kevent64:entry, syscall::kevent_qos:entry
/pid == $target && arg3 != 0 && (int)arg4 > 0/
{
	self->evlist = arg3;
	self->evsize = probefunc == "kevent" ? 32 : probefunc == "kevent64" ? 48 : 72;
	self->evdata = probefunc == "kevent_qos" ? 32 : 16;
}

syscall::kevent:return, syscall::kevent64:return, syscall::kevent_qos:return
/self->evlist/
{
	this->now = timestamp;
}

/* one clause per returned event, up to 16 */
#define VNET_EVENT(i) \
syscall::kevent:return, syscall::kevent64:return, syscall::kevent_qos:return \
/self->evlist && (int)arg0 > i/ \
{ \
	this->ev = (char *)copyin(self->evlist + i * self->evsize, self->evsize); \
	this->head = (struct vnet_kevent_head *)this->ev; \
	this->evfd = (int)this->head->ident; \
	this->traced = (this->head->flags & VNET_EV_ERROR) == 0 && \
	    (this->head->filter == VNET_EVFILT_READ || this->head->filter == VNET_EVFILT_WRITE) && \
	    TRACED(this->evfd); \
	this->evdata = *(int64_t *)(this->ev + self->evdata); \
} \
syscall::kevent:return, syscall::kevent64:return, syscall::kevent_qos:return \
/self->evlist && (int)arg0 > i && this->traced && this->head->filter == VNET_EVFILT_WRITE/ \
{ \
	printf("%d,%d,kevent_write,%d,,,%d,,,\n", this->now, tid, this->evfd, this->evdata); \
} \
syscall::kevent:return, syscall::kevent64:return, syscall::kevent_qos:return \
/self->evlist && (int)arg0 > i && this->traced && this->head->filter == VNET_EVFILT_READ/ \
{ \
	printf("%d,%d,kevent_read,%d,,,%d,,,\n", this->now, tid, this->evfd, this->evdata); \
}
VNET_EVENT(0)
VNET_EVENT(1)
VNET_EVENT(2)
VNET_EVENT(3)
VNET_EVENT(4)
VNET_EVENT(5)
VNET_EVENT(6)
VNET_EVENT(7)
VNET_EVENT(8)
VNET_EVENT(9)
VNET_EVENT(10)
VNET_EVENT(11)
VNET_EVENT(12)
VNET_EVENT(13)
VNET_EVENT(14)
VNET_EVENT(15)

syscall::kevent:return, syscall::kevent64:return, syscall::kevent_qos:return
/self->evlist && (int)arg0 > 16/
{
	undecoded += (int)arg0 - 16;
}

syscall::kevent:return, syscall::kevent64:return, syscall::kevent_qos:return
/self->evlist/
{
	self->evlist = 0;
}

dtrace:::END
/undecoded > 0/
{
	printf("# warning: %d kevents or messages past the per-call limit were not decoded\n", undecoded);
}
