#!/usr/bin/env bash
# Type-checks and lints the whole workspace (lib, bins, tests, benches) for macOS on this
# Linux machine: the cfg(target_os = "macos") halves are compiled by rustc and linted by
# clippy with -D warnings. Nothing is linked or run: there is no macOS SDK or machine here.
#
# aarch64 builds the device without the `probes` feature: the usdt build script emits the
# build host's probe flavour (x86 stapsdt asm) when cross-compiling. x86_64 keeps it, which
# at least type-checks every probe call site.
#
# Installs what it needs idempotently (rustup targets; Debian clang and llvm, as root). If
# rustup cannot fetch a target it falls back to Debian's rustc-web with -Zbuild-std (a check
# without clippy); if neither works it skips with the reason.
set -uo pipefail
cd "$(dirname "$0")/.."

targets=(aarch64-apple-darwin x86_64-apple-darwin)

need_apt=()
command -v clang >/dev/null || need_apt+=(clang)
command -v llvm-ar >/dev/null || need_apt+=(llvm)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
      || { echo "macos-check: apt-get install ${need_apt[*]} failed"; exit 1; }
  else
    echo "macos-check: skipped: ${need_apt[*]} missing and not root to install them"
    exit 0
  fi
fi

have_rustup_targets=1
if command -v rustup >/dev/null; then
  installed=$(rustup target list --installed)
  for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$installed" && continue
    rustup target add "$t" || { have_rustup_targets=0; break; }
  done
else
  have_rustup_targets=0
fi

export CC_aarch64_apple_darwin=clang AR_aarch64_apple_darwin=llvm-ar
export CC_x86_64_apple_darwin=clang AR_x86_64_apple_darwin=llvm-ar

# The arguments for each target: aarch64 without probes, x86_64 with them.
target_args() {
  case $1 in
    aarch64-apple-darwin) echo "--target aarch64-apple-darwin --no-default-features" ;;
    x86_64-apple-darwin) echo "--target x86_64-apple-darwin" ;;
  esac
}

status=0
if [ $have_rustup_targets = 1 ]; then
  for t in "${targets[@]}"; do
    # shellcheck disable=SC2046
    echo "macos-check: cargo clippy --workspace --all-targets $(target_args "$t") -- -D warnings"
    # shellcheck disable=SC2046
    cargo clippy --workspace --all-targets $(target_args "$t") -- -D warnings || status=1
  done
  exit $status
fi

# Fallback: Debian's own toolchain builds std for the target from source (no clippy there).
echo "macos-check: rustup cannot provide the macOS targets; trying Debian rustc-web with -Zbuild-std"
if ! [ -x /usr/bin/cargo ] || ! dpkg -s rust-web-src >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      rustc-web cargo-web rust-web-src >/dev/null || true
  fi
fi
if ! [ -x /usr/bin/cargo ] || ! dpkg -s rust-web-src >/dev/null 2>&1; then
  echo "macos-check: skipped: no rustup macOS targets and no Debian rustc-web/rust-web-src"
  exit 0
fi
# No -D warnings here: RUSTFLAGS would reach the std sources built for the target too.
echo "macos-check: fallback type-checks only (no clippy, warnings not denied)"
for t in "${targets[@]}"; do
  # shellcheck disable=SC2046
  RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=target/build-std /usr/bin/cargo check \
    -Zbuild-std=std,panic_abort,proc_macro,test --workspace --all-targets $(target_args "$t") \
    || status=1
done
exit $status
