/*
 * The vnet USDT provider: the single source of truth for probe names and argument types.
 * Compiled into the device by the `usdt` crate (device/core/build.rs). Integer arguments only:
 * the usdt crate's char* arguments are unreliable in optimised builds.
 * Names are a contract: arguments may be appended, never reordered.
 */
provider vnet {
	/* first failed send of a frame: an episode starts */
	probe enobufs_begin(int64_t, int64_t, int64_t); /* fd, frame_len, err */
	/* every later failed send of the same frame; attempt = 2 for the second failed send */
	probe enobufs_retry(int64_t, int64_t, int64_t); /* fd, attempt, err */
	/* the deferred frame went out; retries = failed sends, the first included */
	probe enobufs_resolved(int64_t, int64_t, int64_t, int64_t); /* fd, retries, wait_ns, frame_len */
	/* poller reported the socket writable; data = free send space, -1 when unknown */
	probe kevent_write(int64_t, int64_t); /* fd, data */
	/* poller reported a readable fd; data = bytes waiting, -1 when unknown */
	probe kevent_read(int64_t, int64_t); /* fd, data */
	/* the one-shot retry timer fired */
	probe timer_fired(int64_t); /* delay_us */
	/* a frame was written to the proxy */
	probe tx_frame(int64_t, int64_t); /* fd, len */
	/* a frame was read from the proxy */
	probe rx_frame(int64_t, int64_t); /* fd, len */
	/* the guest notified a queue */
	probe guest_kick(int64_t); /* queue */
	/* the device signalled a used queue */
	probe guest_irq(int64_t); /* queue */
	/* a frame was dropped, or a guest chain rejected; reason codes (DropReason in
	 * device/core/src/probes.rs): 1 rx_oversize, 2 rx_no_room, 3 tx_bad_chain,
	 * 4 rx_empty, 5 peer_gone, 6 guest_driver_error (a chain the ring cannot describe:
	 * head past the ring, loop, next past the table, indirect descriptor, TX buffer
	 * the kernel cannot read; len 0), 7 retry_exhausted (--retry-policy bounded:N
	 * gave up on a deferred TX frame after N + 1 failed sends; len = the frame's; its
	 * episode ends with this row and no enobufs_resolved) */
	probe frame_drop(int64_t, int64_t, int64_t); /* fd, len, reason */
};
