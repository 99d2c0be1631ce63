// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * systrace.bpf.c - probes/syscalls.bt as one BPF object, loaded by vnet-systrace.
 *
 * The same rows from the same system calls, by the same rules (probes/syscalls.bt's
 * comments say why each rule is what it is; this file says where it differs). What
 * changes is how a row leaves the kernel: syscalls.bt keeps rows in a hash map that a
 * timer prints three to a line through bpftrace's perf ring, then awk turns the lines
 * into CSV. Here a row is one 48-byte record in one BPF ring buffer
 * (bpf_ringbuf_output, no wake-up: vnet-systrace reads the ring on a timer), and the
 * CSV is written by the loader. probes/README.md "Cost" has the numbers.
 *
 * Per-call state and episode state are hash maps, as in the script. The loader fills
 * the read-only config below before loading, seeds epoll registrations made before the
 * capture into epdata/epdata_of/fd_epfd, and attaches every return before any entry,
 * so no entry can leave state that no return will take.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the loader before load (vnet-systrace's Config, src/tracer.rs, has this layout).
 * Alone in its section, so the loader finds it at offset 0 of that section's map. */
struct config {
	__u32 target_tgid;
	__s32 only_fd;	/* -1: every AF_UNIX socket of the process */
	__u32 frames;	/* 0: no tx_frame rows (receives are not loaded) */
	__u32 pad;
};

const volatile struct config cfg SEC(".rodata.config") = { .only_fd = -1, .frames = 1 };

/* ---- the kernel's structs, only the fields read (CO-RE relocates their offsets) ---- */
struct inode {
	unsigned short i_mode;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct {
	struct files_struct *files;
} __attribute__((preserve_access_index));

struct sk_buff {
	unsigned int len;
} __attribute__((preserve_access_index));

struct sk_buff_head {
	struct sk_buff *next;
	__u32 qlen;
} __attribute__((preserve_access_index));

struct sock_common {
	unsigned short skc_family;
} __attribute__((preserve_access_index));

typedef struct {
	int counter;
} atomic_t;

typedef struct refcount_struct {
	atomic_t refs;
} refcount_t;

struct sock {
	struct sock_common __sk_common;
	struct sk_buff_head sk_receive_queue;
	int sk_sndbuf;
	refcount_t sk_wmem_alloc;
	unsigned short sk_type;
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));

/* ---- tracepoint contexts: tracefs events/syscalls/sys_{enter,exit}_X/format ---- */
struct sys_enter_ctx {
	__u64 common;
	__s32 nr;
	__s32 pad;
	__u64 args[6];
};

struct sys_exit_ctx {
	__u64 common;
	__s32 nr;
	__s32 pad;
	__s64 ret;
};

/* ---- the rows: vnet-systrace's Record (src/record.rs) has this layout ---- */
enum probe {
	P_BEGIN = 1,
	P_RETRY = 2,
	P_RESOLVED = 3,
	P_TX_FRAME = 4,
	P_RX_FRAME = 5,
	P_KEVENT_READ = 6,
	P_KEVENT_WRITE = 7,
};

struct row {
	__u64 ts_ns;
	__u32 tid;
	__u32 probe;
	__s64 fd;
	__s64 a;
	__s64 b;
	__s64 c;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);	/* the loader may resize it (--ring-mib) */
} rows SEC(".maps");

/* [0]: rows made, [1]: rows the ring had no room for, [2]: calls or episodes a full map
 * could not hold (more threads inside a traced call at once than `calls` holds, more
 * open episodes than `episodes`): per CPU, summed and reported by the loader */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

/* ---- per-call state, keyed by thread id ---- */
struct call {
	__s64 fd;
	__s64 len;	/* sendto/write: the count asked for */
	__u64 iov;	/* sendmsg/sendmmsg (first message)/writev: the iovec array */
	__s64 iovlen;
	__u64 mmsg;	/* sendmmsg/recvmmsg: the mmsghdr array */
	__s64 nr;	/* the system call number, checked by the return */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct call);
} calls SEC(".maps");

struct wait_call {
	__u64 events;	/* epoll_event array or pollfd array */
	__s64 n;	/* poll: nfds; epoll: the epoll fd */
	__s64 nr;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct wait_call);
} waits SEC(".maps");

/* ---- episodes, keyed by fd (one process is traced) ---- */
struct episode {
	__s64 start_ns;
	__s64 retries;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __s64);
	__type(value, struct episode);
} episodes SEC(".maps");

/* ---- epoll registrations: (epfd, data) -> fd + 1, (epfd, fd) -> data, fd -> epfd + 1 ---- */
struct ep_key {
	__s64 epfd;
	__u64 val;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ep_key);
	__type(value, __s64);
} epdata SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ep_key);
	__type(value, __u64);
} epdata_of SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __s64);
	__type(value, __s64);
} fd_epfd SEC(".maps");

/* struct epoll_event is packed on x86_64 (12 bytes), not on arm64 (16) */
#if defined(__TARGET_ARCH_x86)
#define EPOLL_EVENT_SIZE 12
#define EPOLL_DATA_OFF 4
#else
#define EPOLL_EVENT_SIZE 16
#define EPOLL_DATA_OFF 8
#endif
/* LP64: struct user_msghdr's msg_iov and msg_iovlen; struct mmsghdr's msg_len */
#define MSGHDR_IOV_OFF 16
#define MSGHDR_IOVLEN_OFF 24
#define MMSGHDR_SIZE 64
#define MMSGHDR_LEN_OFF 56
/* Linux's UIO_MAXIOV: the most iovecs (and mmsghdrs) one call accepts */
#define UIO_MAXIOV 1024

#define EAGAIN 11
#define ENOBUFS 105

static __always_inline int traced_process(void)
{
	return (bpf_get_current_pid_tgid() >> 32) == cfg.target_tgid;
}

static __always_inline __u32 current_tid(void)
{
	return (__u32)bpf_get_current_pid_tgid();
}

/* The socket behind fd in the current task's file table, or NULL when fd is no socket. */
static __always_inline struct sock *sock_of(__s64 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *f = 0;

	if (!fdt || fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	if (!f || (BPF_CORE_READ(f, f_inode, i_mode) & 0xf000) != 0xc000)
		return 0;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	return BPF_CORE_READ(sock, sk);
}

/* An AF_UNIX socket, and the FD given if one is: a process may close the traced socket
 * and reuse its number for a file (glibc's malloc reads /proc/sys/vm/overcommit_memory at
 * exit), which is not the socket. */
static __always_inline int traced_fd(__s64 fd)
{
	struct sock *sk;

	if (cfg.only_fd >= 0 && fd != cfg.only_fd)
		return 0;
	sk = sock_of(fd);
	return sk && BPF_CORE_READ(sk, __sk_common.skc_family) == 1;
}

static __always_inline void count(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&counts, &which);

	if (n)
		*n += 1;
}

static __always_inline void emit(__u64 now, __u32 probe, __s64 fd, __s64 a, __s64 b, __s64 c)
{
	struct row r = {
		.ts_ns = now,
		.tid = current_tid(),
		.probe = probe,
		.fd = fd,
		.a = a,
		.b = b,
		.c = c,
	};

	count(0);
	if (bpf_ringbuf_output(&rows, &r, sizeof(r), BPF_RB_NO_WAKEUP))
		count(1);
}

static __always_inline void remember(struct sys_enter_ctx *ctx, __s64 len, __u64 iov, __s64 iovlen, __u64 mmsg)
{
	__u32 tid = current_tid();
	struct call c = {
		.fd = (__s64)ctx->args[0],
		.len = len,
		.iov = iov,
		.iovlen = iovlen,
		.mmsg = mmsg,
		.nr = ctx->nr,
	};

	if (bpf_map_update_elem(&calls, &tid, &c, BPF_ANY))
		count(2);
}

/* ---- entries ---- */
SEC("tp/syscalls/sys_enter_sendto")
int enter_sendto(struct sys_enter_ctx *ctx)
{
	if (traced_process() && traced_fd((__s64)ctx->args[0]))
		remember(ctx, (__s64)ctx->args[2], 0, 0, 0);
	return 0;
}

SEC("tp/syscalls/sys_enter_write")
int enter_write(struct sys_enter_ctx *ctx)
{
	if (traced_process() && traced_fd((__s64)ctx->args[0]))
		remember(ctx, (__s64)ctx->args[2], 0, 0, 0);
	return 0;
}

static __always_inline void remember_msghdr(struct sys_enter_ctx *ctx, __u64 msg, __u64 mmsg)
{
	__u64 iov = 0;
	__s64 iovlen = 0;

	bpf_probe_read_user(&iov, sizeof(iov), (void *)(msg + MSGHDR_IOV_OFF));
	bpf_probe_read_user(&iovlen, sizeof(iovlen), (void *)(msg + MSGHDR_IOVLEN_OFF));
	remember(ctx, 0, iov, iovlen, mmsg);
}

SEC("tp/syscalls/sys_enter_sendmsg")
int enter_sendmsg(struct sys_enter_ctx *ctx)
{
	if (traced_process() && traced_fd((__s64)ctx->args[0]))
		remember_msghdr(ctx, ctx->args[1], 0);
	return 0;
}

SEC("tp/syscalls/sys_enter_sendmmsg")
int enter_sendmmsg(struct sys_enter_ctx *ctx)
{
	if (traced_process() && traced_fd((__s64)ctx->args[0]))
		remember_msghdr(ctx, ctx->args[1], ctx->args[1]);
	return 0;
}

SEC("tp/syscalls/sys_enter_writev")
int enter_writev(struct sys_enter_ctx *ctx)
{
	if (traced_process() && traced_fd((__s64)ctx->args[0]))
		remember(ctx, 0, ctx->args[1], (__s64)ctx->args[2], 0);
	return 0;
}

/* receives: only with frame rows (the loader does not load them otherwise) */
static __always_inline int enter_receive(struct sys_enter_ctx *ctx, __u64 mmsg)
{
	if (traced_process() && traced_fd((__s64)ctx->args[0]))
		remember(ctx, 0, 0, 0, mmsg);
	return 0;
}

SEC("tp/syscalls/sys_enter_recvfrom")
int enter_recvfrom(struct sys_enter_ctx *ctx) { return enter_receive(ctx, 0); }

SEC("tp/syscalls/sys_enter_read")
int enter_read(struct sys_enter_ctx *ctx) { return enter_receive(ctx, 0); }

SEC("tp/syscalls/sys_enter_recvmsg")
int enter_recvmsg(struct sys_enter_ctx *ctx) { return enter_receive(ctx, 0); }

SEC("tp/syscalls/sys_enter_readv")
int enter_readv(struct sys_enter_ctx *ctx) { return enter_receive(ctx, 0); }

SEC("tp/syscalls/sys_enter_recvmmsg")
int enter_recvmmsg(struct sys_enter_ctx *ctx) { return enter_receive(ctx, ctx->args[1]); }

/* ---- sends: episodes and tx_frame (syscalls.bt's send return, rule for rule) ---- */
/* Loops over up to UIO_MAXIOV entries go through bpf_loop (Linux 5.17): the verifier then
 * checks the body once, where an unrolled or bounded loop took it 1.8 s per load. */
struct iov_sum {
	__u64 iov;
	__s64 len;
};

static long add_iov(__u32 i, struct iov_sum *sum)
{
	__u64 piece = 0;

	bpf_probe_read_user(&piece, sizeof(piece), (void *)(sum->iov + (__u64)i * 16 + 8));
	sum->len += (__s64)piece;
	return 0;
}

static __always_inline __s64 iov_total(__u64 iov, __s64 n)
{
	struct iov_sum sum = { .iov = iov };

	if (n > UIO_MAXIOV)
		return -1;
	if (n > 0)
		bpf_loop((__u32)n, add_iov, &sum, 0);
	return sum.len;
}

static __always_inline __s64 mmsg_len(__u64 mmsg, __s64 i)
{
	__u32 len = 0;

	bpf_probe_read_user(&len, sizeof(len), (void *)(mmsg + (__u64)i * MMSGHDR_SIZE + MMSGHDR_LEN_OFF));
	return len;
}

/* one frame row per message of a sendmmsg/recvmmsg (msg_len, filled by the kernel) */
struct mmsg_rows {
	__u64 now;
	__u64 mmsg;
	__s64 fd;
	__u32 probe;
};

static long mmsg_row(__u32 i, struct mmsg_rows *m)
{
	emit(m->now, m->probe, m->fd, mmsg_len(m->mmsg, i), 0, 0);
	return 0;
}

static __always_inline void emit_mmsg_rows(__u64 now, __u32 probe, __s64 fd, __u64 mmsg, __s64 n)
{
	struct mmsg_rows m = { .now = now, .mmsg = mmsg, .fd = fd, .probe = probe };

	if (n > UIO_MAXIOV)
		n = UIO_MAXIOV;
	if (n > 0)
		bpf_loop((__u32)n, mmsg_row, &m, 0);
}

/* The state this thread's entry left, taken out of the map; 0 when there is none or it
 * was left by another system call (the number is checked, as syscalls.bt does). */
static __always_inline int take_call(struct sys_exit_ctx *ctx, struct call *c)
{
	__u32 tid = current_tid();
	struct call *found = bpf_map_lookup_elem(&calls, &tid);

	if (!found)
		return 0;
	*c = *found;
	bpf_map_delete_elem(&calls, &tid);
	return c->nr == ctx->nr;
}

static __always_inline int send_return(struct sys_exit_ctx *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	struct episode *ep;
	struct call c;
	__s64 ret = ctx->ret, len;
	int failed, begin, resolved;

	if (!take_call(ctx, &c))
		return 0;
	ep = bpf_map_lookup_elem(&episodes, &c.fd);
	failed = ret == -EAGAIN || ret == -ENOBUFS;
	begin = failed && !ep;
	resolved = ret >= 0 && ep;
	len = c.len;
	if ((begin || resolved) && c.iov) {
		struct sock *sk = resolved ? sock_of(c.fd) : 0;
		int dgram = sk && BPF_CORE_READ(sk, sk_type) != 1;

		if (resolved && dgram)
			len = c.mmsg ? mmsg_len(c.mmsg, 0) : ret;
		else
			len = iov_total(c.iov, c.iovlen);
	}
	if (failed) {
		if (!ep) {
			struct episode fresh = { .start_ns = (__s64)now, .retries = 1 };

			if (bpf_map_update_elem(&episodes, &c.fd, &fresh, BPF_ANY))
				count(2);
			emit(now, P_BEGIN, c.fd, len, -ret, 0);
		} else {
			ep->retries += 1;
			emit(now, P_RETRY, c.fd, ep->retries, -ret, 0);
		}
	}
	if (ret >= 0 && ep) {
		emit(now, P_RESOLVED, c.fd, len, ep->retries, (__s64)now - ep->start_ns);
		bpf_map_delete_elem(&episodes, &c.fd);
	}
	if (cfg.frames && ret >= 0) {
		if (!c.mmsg) {
			emit(now, P_TX_FRAME, c.fd, ret, 0, 0);
		} else {
			emit_mmsg_rows(now, P_TX_FRAME, c.fd, c.mmsg, ret);
		}
	}
	return 0;
}

SEC("tp/syscalls/sys_exit_sendto")
int exit_sendto(struct sys_exit_ctx *ctx) { return send_return(ctx); }

SEC("tp/syscalls/sys_exit_write")
int exit_write(struct sys_exit_ctx *ctx) { return send_return(ctx); }

SEC("tp/syscalls/sys_exit_sendmsg")
int exit_sendmsg(struct sys_exit_ctx *ctx) { return send_return(ctx); }

SEC("tp/syscalls/sys_exit_writev")
int exit_writev(struct sys_exit_ctx *ctx) { return send_return(ctx); }

SEC("tp/syscalls/sys_exit_sendmmsg")
int exit_sendmmsg(struct sys_exit_ctx *ctx) { return send_return(ctx); }

/* ---- receives: rx_frame ---- */
static __always_inline int receive_return(struct sys_exit_ctx *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	struct call c;
	__s64 ret = ctx->ret;

	if (!take_call(ctx, &c) || ret <= 0)
		return 0;
	if (!c.mmsg) {
		emit(now, P_RX_FRAME, c.fd, ret, 0, 0);
		return 0;
	}
	emit_mmsg_rows(now, P_RX_FRAME, c.fd, c.mmsg, ret);
	return 0;
}

SEC("tp/syscalls/sys_exit_recvfrom")
int exit_recvfrom(struct sys_exit_ctx *ctx) { return receive_return(ctx); }

SEC("tp/syscalls/sys_exit_read")
int exit_read(struct sys_exit_ctx *ctx) { return receive_return(ctx); }

SEC("tp/syscalls/sys_exit_recvmsg")
int exit_recvmsg(struct sys_exit_ctx *ctx) { return receive_return(ctx); }

SEC("tp/syscalls/sys_exit_readv")
int exit_readv(struct sys_exit_ctx *ctx) { return receive_return(ctx); }

SEC("tp/syscalls/sys_exit_recvmmsg")
int exit_recvmmsg(struct sys_exit_ctx *ctx) { return receive_return(ctx); }

/* ---- the poller ---- */
static __always_inline void forget_registration(__s64 epfd, __s64 fd)
{
	struct ep_key of = { .epfd = epfd, .val = (__u64)fd };
	__u64 *data = bpf_map_lookup_elem(&epdata_of, &of);

	if (data) {
		struct ep_key k = { .epfd = epfd, .val = *data };
		__s64 *mapped = bpf_map_lookup_elem(&epdata, &k);

		if (mapped && *mapped == fd + 1)
			bpf_map_delete_elem(&epdata, &k);
	}
	bpf_map_delete_elem(&epdata_of, &of);
}

SEC("tp/syscalls/sys_enter_epoll_ctl")
int enter_epoll_ctl(struct sys_enter_ctx *ctx)
{
	__s64 epfd = (__s64)ctx->args[0], op = (__s64)ctx->args[1], fd = (__s64)ctx->args[2];
	struct ep_key k = { .epfd = epfd };

	if (!traced_process())
		return 0;
	if (op == 2) {	/* EPOLL_CTL_DEL */
		forget_registration(epfd, fd);
		return 0;
	}
	bpf_probe_read_user(&k.val, sizeof(k.val), (void *)(ctx->args[3] + EPOLL_DATA_OFF));
	if (traced_fd(fd)) {
		struct ep_key of = { .epfd = epfd, .val = (__u64)fd };
		__s64 fd1 = fd + 1, epfd1 = epfd + 1;

		bpf_map_update_elem(&epdata, &k, &fd1, BPF_ANY);
		bpf_map_update_elem(&epdata_of, &of, &k.val, BPF_ANY);
		bpf_map_update_elem(&fd_epfd, &fd, &epfd1, BPF_ANY);
	} else {
		bpf_map_delete_elem(&epdata, &k);
	}
	return 0;
}

SEC("tp/syscalls/sys_enter_close")
int enter_close(struct sys_enter_ctx *ctx)
{
	__s64 fd = (__s64)ctx->args[0];
	__s64 *epfd1;

	if (!traced_process())
		return 0;
	bpf_map_delete_elem(&episodes, &fd);
	epfd1 = bpf_map_lookup_elem(&fd_epfd, &fd);
	if (epfd1) {
		forget_registration(*epfd1 - 1, fd);
		bpf_map_delete_elem(&fd_epfd, &fd);
	}
	return 0;
}

/* kevent_read's data: a datagram socket's next datagram size (FIONREAD), else -1;
 * kevent_write's: SO_SNDBUF minus SIOCOUTQ (unix: sk_wmem_alloc, which counts 1 extra) */
static __always_inline void wake_rows(__u64 now, __s64 fd, struct sock *sk, __u32 revents)
{
	if (revents & 0x1) {
		__s64 waiting = -1;

		if (sk && BPF_CORE_READ(sk, sk_type) == 2)
			waiting = BPF_CORE_READ(sk, sk_receive_queue.qlen) == 0
				? 0 : (__s64)BPF_CORE_READ(sk, sk_receive_queue.next, len);
		emit(now, P_KEVENT_READ, fd, waiting, 0, 0);
	}
	if (revents & 0x4) {
		__s64 space = -1;

		if (sk)
			space = (__s64)BPF_CORE_READ(sk, sk_sndbuf)
				- ((__s64)BPF_CORE_READ(sk, sk_wmem_alloc.refs.counter) - 1);
		emit(now, P_KEVENT_WRITE, fd, space, 0, 0);
	}
}

static __always_inline int remember_wait(struct sys_enter_ctx *ctx, __u64 events, __s64 n)
{
	__u32 tid = current_tid();
	struct wait_call w = { .events = events, .n = n, .nr = ctx->nr };

	if (traced_process() && bpf_map_update_elem(&waits, &tid, &w, BPF_ANY))
		count(2);
	return 0;
}

SEC("tp/syscalls/sys_enter_epoll_wait")
int enter_epoll_wait(struct sys_enter_ctx *ctx) { return remember_wait(ctx, ctx->args[1], (__s64)ctx->args[0]); }

SEC("tp/syscalls/sys_enter_epoll_pwait")
int enter_epoll_pwait(struct sys_enter_ctx *ctx) { return remember_wait(ctx, ctx->args[1], (__s64)ctx->args[0]); }

SEC("tp/syscalls/sys_enter_epoll_pwait2")
int enter_epoll_pwait2(struct sys_enter_ctx *ctx) { return remember_wait(ctx, ctx->args[1], (__s64)ctx->args[0]); }

static __always_inline int take_wait(struct sys_exit_ctx *ctx, struct wait_call *w)
{
	__u32 tid = current_tid();
	struct wait_call *found = bpf_map_lookup_elem(&waits, &tid);

	if (!found)
		return 0;
	*w = *found;
	bpf_map_delete_elem(&waits, &tid);
	return w->nr == ctx->nr && ctx->ret > 0;
}

/* the returned events, one bpf_loop step each (see add_iov) */
struct wait_scan {
	__u64 now;
	struct wait_call w;
};

static long epoll_event_rows(__u32 i, struct wait_scan *scan)
{
	__u64 at = scan->w.events + (__u64)i * EPOLL_EVENT_SIZE;
	struct ep_key k = { .epfd = scan->w.n };
	__u32 ev = 0;
	__s64 *fd1;

	bpf_probe_read_user(&ev, sizeof(ev), (void *)at);
	if (!(ev & 0x5))
		return 0;
	bpf_probe_read_user(&k.val, sizeof(k.val), (void *)(at + EPOLL_DATA_OFF));
	fd1 = bpf_map_lookup_elem(&epdata, &k);
	if (fd1 && *fd1 > 0)
		wake_rows(scan->now, *fd1 - 1, sock_of(*fd1 - 1), ev);
	return 0;
}

static __always_inline int epoll_return(struct sys_exit_ctx *ctx)
{
	struct wait_scan scan = { .now = bpf_ktime_get_ns() };

	if (!take_wait(ctx, &scan.w))
		return 0;
	/* 64 events at most per return, as syscalls.bt */
	bpf_loop(ctx->ret < 64 ? (__u32)ctx->ret : 64, epoll_event_rows, &scan, 0);
	return 0;
}

SEC("tp/syscalls/sys_exit_epoll_wait")
int exit_epoll_wait(struct sys_exit_ctx *ctx) { return epoll_return(ctx); }

SEC("tp/syscalls/sys_exit_epoll_pwait")
int exit_epoll_pwait(struct sys_exit_ctx *ctx) { return epoll_return(ctx); }

SEC("tp/syscalls/sys_exit_epoll_pwait2")
int exit_epoll_pwait2(struct sys_exit_ctx *ctx) { return epoll_return(ctx); }

SEC("tp/syscalls/sys_enter_poll")
int enter_poll(struct sys_enter_ctx *ctx) { return remember_wait(ctx, ctx->args[0], (__s64)ctx->args[1]); }

SEC("tp/syscalls/sys_enter_ppoll")
int enter_ppoll(struct sys_enter_ctx *ctx) { return remember_wait(ctx, ctx->args[0], (__s64)ctx->args[1]); }

/* poll, ppoll (QEMU's main loop, glib): the pollfd array names the fd itself */
static long pollfd_rows(__u32 i, struct wait_scan *scan)
{
	__u64 at = scan->w.events + (__u64)i * 8;	/* struct pollfd: int fd, short events, short revents */
	__s32 fd = -1;
	__u16 rev = 0;
	struct sock *sk;
	int ok;

	bpf_probe_read_user(&fd, sizeof(fd), (void *)at);
	bpf_probe_read_user(&rev, sizeof(rev), (void *)(at + 6));
	if (fd < 0 || !(rev & 0x5))
		return 0;
	sk = sock_of(fd);
	ok = (cfg.only_fd < 0 || fd == cfg.only_fd) && sk &&
	     BPF_CORE_READ(sk, __sk_common.skc_family) == 1;
	if (ok)
		wake_rows(scan->now, fd, sk, rev);
	return 0;
}

static __always_inline int poll_return(struct sys_exit_ctx *ctx)
{
	struct wait_scan scan = { .now = bpf_ktime_get_ns() };

	if (!take_wait(ctx, &scan.w))
		return 0;
	/* the first 64 entries (syscalls.bt: 32, its verifier limit) */
	if (scan.w.n > 0)
		bpf_loop(scan.w.n < 64 ? (__u32)scan.w.n : 64, pollfd_rows, &scan, 0);
	return 0;
}

SEC("tp/syscalls/sys_exit_poll")
int exit_poll(struct sys_exit_ctx *ctx) { return poll_return(ctx); }

SEC("tp/syscalls/sys_exit_ppoll")
int exit_ppoll(struct sys_exit_ctx *ctx) { return poll_return(ctx); }
