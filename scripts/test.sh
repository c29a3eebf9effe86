#!/usr/bin/env bash
# The project's one test command (CI runs exactly this through .ci/run):
# dependencies, formatting, lints, then every test target.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

# Runs one named step; on failure says which step failed and exits with its status.
step() {
    local name=$1
    shift
    printf '==> %s\n' "$name"
    local rc=0
    "$@" || rc=$?
    if [ "$rc" -ne 0 ]; then
        printf '==> FAILED: %s (exit %d)\n' "$name" "$rc" >&2
        exit "$rc"
    fi
}

step "setup-deps" bash scripts/setup-deps.sh
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --all-targets -- -D warnings
step "cargo test" cargo test --all-targets
step "vivid V4L2 in qemu" bash scripts/vivid-test.sh
