# noframes.awk - Print a probe script without its tx_frame/rx_frame clauses.
#
# bpftrace 0.17 has no preprocessor conditionals and attaches every clause it is given, so
# the only way to leave the per-frame probes unattached (no uprobe trap per frame, and their
# USDT semaphores stay 0, so the device skips them) is to hand it a script without them.
# probes/capture.sh --no-frames does this into a temp file; by hand:
#
#   awk -f probes/noframes.awk probes/enobufs.bt > /tmp/enobufs-noframes.bt
#   sudo bpftrace -q -o trace.csv /tmp/enobufs-noframes.bt BINARY -p PID
#
# A clause starts at a line that is just its attach point and ends at the first line that
# is just "}" (the layout of every script here). Exits 1 unless it removed exactly one
# tx_frame and one rx_frame clause, so a reformatted script cannot slip through whole.

/^(usdt:\$1:vnet:|vnet\$target:::)(tx_frame|rx_frame)[ \t]*$/ {
	skipping = 1
	if ($0 ~ /tx_frame/) tx++; else rx++
	next
}
skipping && /^}[ \t]*$/ { skipping = 0; dropblank = 1; next }
skipping { next }
# the blank line that separated the removed clause from the next one
dropblank && /^[ \t]*$/ { dropblank = 0; next }
{ dropblank = 0; print }
END {
	if (skipping || tx != 1 || rx != 1) {
		printf("noframes.awk: %s: expected one tx_frame and one rx_frame clause, removed %d and %d%s\n",
			FILENAME, tx, rx, skipping ? " (the last one has no closing \"}\" line)" : "") > "/dev/stderr"
		exit 1
	}
}
