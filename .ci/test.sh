#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (apt packages when
# run as root, Python packages into notebooks/.venv), builds, and runs every test.
# Steps that need root (bpftrace, QEMU) skip themselves with a printed reason otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

# Root runs everything. Otherwise re-run through sudo when it exists (keeping the caller's
# cargo and rustup, which sudo's reset PATH and HOME would lose); without sudo, carry on as
# this user: setup skips apt and the root-only steps skip themselves with a reason.
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo env PATH="$PATH" CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" \
      RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" bash "$0" "$@"
  fi
  echo "test.sh: not root and no sudo: running the steps that need no root"
fi

passed=0
failed=0
failed_names=()
step() {
  local name=$1; shift
  echo "==> $name: $*"
  local t0=$SECONDS
  if "$@"; then
    passed=$((passed + 1)); echo "<== $name ok ($((SECONDS - t0)) s)"
  else
    failed=$((failed + 1)); failed_names+=("$name"); echo "<== $name FAILED ($((SECONDS - t0)) s)"
  fi
}

bash .ci/setup.sh || { echo "setup failed"; exit 1; }

step fmt cargo fmt --all -- --check
step build cargo build --release --workspace --all-targets
step clippy cargo clippy --release --workspace --all-targets -- -D warnings
step macos-check bash .ci/macos-check.sh
step cargo-test cargo test --release --workspace --no-fail-fast
step bench-scripts bash device/sim/benches/test-scripts.sh
[ -f probes/test.sh ] && step probes bash probes/test.sh
[ -f notebooks/run.sh ] && step notebooks bash notebooks/run.sh
[ -f device/vm/tests/vm.sh ] && step vm bash device/vm/tests/vm.sh

echo
[ $failed -gt 0 ] && echo "failed steps: ${failed_names[*]}"
echo "suite: $passed passed, $failed failed"
[ $failed -eq 0 ]
