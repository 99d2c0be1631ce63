#!/usr/bin/env bash
# Installs the system packages the test suite and the VM runner need, idempotently.
# Safe to run many times: it only calls apt-get when something is missing.
# Root is needed for apt; without root it only reports what is missing.
set -euo pipefail

# Debian's QEMU 7.2 breaks vhost-user; QEMU 10 lives in bookworm-backports. Derive the
# backports entry from the machine's own Debian entry so the same mirror is used.
enable_backports() {
  local dst=/etc/apt/sources.list.d/vnetscope-backports.sources
  [ -f "$dst" ] && return 0
  local src=/etc/apt/sources.list.d/debian.sources
  if [ -f "$src" ]; then
    # First stanza whose Suites line names the release itself (not -security).
    awk -v RS= -v ORS='\n\n' '/Suites:[^\n]*bookworm( |$|\n)/ && !/security/ {print; exit}' "$src" \
      | sed -E 's/^Suites:.*/Suites: bookworm-backports/' > "$dst.tmp"
  elif [ -f /etc/apt/sources.list ]; then
    grep -E '^deb [^ ]+ bookworm ' /etc/apt/sources.list | head -1 \
      | sed -E 's/ bookworm / bookworm-backports /' > "$dst.tmp"
  fi
  if [ -s "$dst.tmp" ]; then mv "$dst.tmp" "$dst"; else rm -f "$dst.tmp"; echo "setup: no Debian apt entry to derive backports from" >&2; return 1; fi
  NEED_UPDATE=1
}

NEED_UPDATE=0
# clang, libbpf-dev, libelf-dev, zlib1g-dev, pkg-config: vnet-systrace (probes/systrace) compiles its BPF
# object with clang and links libbpf, which needs libelf and zlib
# valgrind, linux-perf: the bench's callgrind.sh and worker-profile.sh (device/sim/benches/test-scripts.sh)
pkgs=(bpftrace passt iperf3 busybox-static python3-venv cpio hyperfine binutils xz-utils zstd
      clang libbpf-dev libelf-dev zlib1g-dev pkg-config valgrind linux-perf)
bpo_pkgs=(qemu-system-x86)

missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
need_qemu=0
qv=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
case "$qv" in *bpo12*|1:1[0-9].*) ;; *) need_qemu=1 ;; esac

if [ ${#missing[@]} -eq 0 ] && [ $need_qemu -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "setup: missing ${missing[*]} ${bpo_pkgs[*]}; run as root to install" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
[ $need_qemu -eq 1 ] && enable_backports || true
apt-get update -qq
[ ${#missing[@]} -gt 0 ] && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [ $need_qemu -eq 1 ]; then
  apt-get install -y -qq --no-install-recommends -t bookworm-backports "${bpo_pkgs[@]}" >/dev/null
fi
echo "setup: installed ${missing[*]} $( [ $need_qemu -eq 1 ] && echo "${bpo_pkgs[*]}")"
