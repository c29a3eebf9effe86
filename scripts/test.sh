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
# setup-deps installs rustup into ~/.cargo/bin when the machine had no usable Rust; its cargo
# goes first, ahead of an older distribution cargo.
if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --all-targets -- -D warnings
step "cargo clippy (cisco-openh264)" cargo clippy --lib --features cisco-openh264 -- -D warnings
step "cargo test" cargo test --all-targets

# The boards: the aarch64 release build, and the end-to-end test (MQTT control, test pattern
# → RTMP into nginx-rtmp, ffprobe) with that binary under qemu-user.
step "aarch64 release build" cargo build --release --target aarch64-unknown-linux-gnu
step "aarch64 end-to-end under qemu-user" env \
    DOCKCAST_BIN=target/aarch64-unknown-linux-gnu/release/dockcast \
    DOCKCAST_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
    cargo test --test e2e_control -- --exact \
    start_push_records_h264_then_stop lens_and_quality_changes_keep_one_recording \
    sigterm_stops_sessions_and_exits_zero
step "debian packages" bash scripts/package.sh
step "systemd unit" bash scripts/check-unit.sh
step "systemd watchdog restart" bash scripts/watchdog-test.sh
step "vivid V4L2 in qemu" bash scripts/vivid-test.sh
