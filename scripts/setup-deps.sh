#!/usr/bin/env bash
# Installs everything dockcast's build and tests need on a fresh Debian 12 machine.
#
# Idempotent and fast on re-runs: apt is skipped when every package is already installed.
# The Debian mosquitto/nginx/janus system services are kept off the default ports (tests and the
# demo start their own instances on ports they choose).
set -euo pipefail

BUILD_PKGS=(build-essential pkg-config nasm libclang-dev)
PEER_PKGS=(mosquitto mosquitto-clients nginx-light libnginx-mod-rtmp libnginx-mod-stream ffmpeg)
# file: scripts/package.sh checks each package's binary is built for its architecture.
MISC_PKGS=(curl ca-certificates systemd file)
# Cross builds for the boards (aarch64, armv7) and qemu-user to run them in tests.
CROSS_PKGS=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross
            gcc-arm-linux-gnueabihf g++-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user)
CROSS_TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
# GB/T 28181 tests: SIPp (package sip-tester) plays the platform; GStreamer's mpegpsdemux is the
# PS media server stand-in (rtpmp1sdepay/rtpstreamdepay are in -good, mpegpsdemux in -bad);
# ffprobe (ffmpeg, above) counts what it demuxed.
GB28181_PKGS=(sip-tester gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad)
# V4L2 for real (scripts/vivid-test.sh): qemu-system boots Debian's kernel with the vivid driver
# from a busybox initramfs; the kernel package itself is fetched by the script (apt-get download).
VIVID_PKGS=(qemu-system-x86 busybox-static cpio)
# systemd's watchdog restart (scripts/watchdog-test.sh): systemd-nspawn boots a Debian tree that
# debootstrap makes once (cached under /var/tmp) with systemd as PID 1.
WATCHDOG_PKGS=(systemd-container debootstrap)
# Janus as a second WHIP peer (tests/e2e_janus.rs): the SFU and janus-pp-rec, which turns its
# .mjr recordings into MP4 for ffprobe; ip (iproute2) makes the test's network namespaces.
JANUS_PKGS=(janus janus-tools iproute2)
# Benchmarks (benches/encode.rs): GStreamer's openh264enc (plugins-bad) and gst-launch.
BENCH_PKGS=(gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-bad)
ALL_PKGS=("${BUILD_PKGS[@]}" "${PEER_PKGS[@]}" "${MISC_PKGS[@]}" "${CROSS_PKGS[@]}"
          "${GB28181_PKGS[@]}" "${VIVID_PKGS[@]}" "${WATCHDOG_PKGS[@]}" "${BENCH_PKGS[@]}"
          "${JANUS_PKGS[@]}")
# System services the packages above ship; we never want them holding 1883/80/1935/8088.
SERVICES=(mosquitto nginx janus)

say() { printf 'setup-deps: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "not root and sudo is not available"
    SUDO=(sudo)
fi

missing_pkgs() {
    local p status
    for p in "${ALL_PKGS[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [ "$status" = "install ok installed" ] || printf '%s\n' "$p"
    done
}

# Stops a Debian system service instance of mosquitto/nginx/janus if one runs, and keeps it from
# starting at boot. Only the distribution-managed instance is touched (systemd unit or the
# init script's pid file), never processes started by anyone else.
stop_system_service() {
    local svc=$1
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        if systemctl is-enabled --quiet "$svc" 2>/dev/null || systemctl is-active --quiet "$svc" 2>/dev/null; then
            say "disabling the system $svc service"
            "${SUDO[@]}" systemctl disable --now --quiet "$svc" >/dev/null 2>&1 || die "could not stop $svc"
        fi
        return 0
    fi
    local pidfile
    case $svc in
        mosquitto) pidfile=/run/mosquitto/mosquitto.pid ;;
        nginx) pidfile=/run/nginx.pid ;;
        janus) pidfile=/run/janus.pid ;;
        *) return 0 ;;
    esac
    if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        say "stopping the system $svc service"
        "${SUDO[@]}" service "$svc" stop >/dev/null 2>&1 || die "could not stop $svc"
    fi
    if [ -x "/etc/init.d/$svc" ] && command -v update-rc.d >/dev/null 2>&1; then
        "${SUDO[@]}" update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
}

# Runs an apt command quietly; its output is shown only when it fails.
quiet() {
    local out
    if ! out=$("$@" 2>&1); then
        printf '%s\n' "$out" >&2
        return 1
    fi
}

APT_UPDATED=0
apt_update_once() {
    export DEBIAN_FRONTEND=noninteractive
    [ "$APT_UPDATED" -eq 1 ] && return 0
    quiet "${SUDO[@]}" apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
}

mapfile -t MISSING < <(missing_pkgs)
if [ "${#MISSING[@]}" -gt 0 ]; then
    say "installing: ${MISSING[*]}"
    # Keep package scripts from starting the services at install time (policy-rc.d convention);
    # only when no policy is present, and removed again afterwards.
    POLICY=/usr/sbin/policy-rc.d
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
        "${SUDO[@]}" chmod 755 "$POLICY"
        trap '"${SUDO[@]}" rm -f "$POLICY"' EXIT
    fi
    apt_update_once
    quiet "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${MISSING[@]}" \
        || die "apt-get install failed for: ${MISSING[*]}"
fi

for svc in "${SERVICES[@]}"; do
    stop_system_service "$svc"
done

# Rust toolchain: rustup's cargo first (it may just be missing from PATH in a fresh shell).
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
# The crate's rust-version (Cargo.toml); Debian 12's own cargo (1.63) is older, so a machine
# with no rustup gets one, from rust-lang.org, checked against its published SHA-256.
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUST_MIN_MINOR=$(sed -n 's/^rust-version = "1\.\([0-9]*\).*/\1/p' "$REPO_ROOT/Cargo.toml")
[ -n "$RUST_MIN_MINOR" ] || die "no rust-version in Cargo.toml"
RUSTUP_DIST=https://static.rust-lang.org/rustup/dist
# The toolchain the repository pins (rust-toolchain.toml), installed with its components and
# targets by rustup.
RUST_TOOLCHAIN=$(sed -n 's/^channel = "\(.*\)"/\1/p' "$REPO_ROOT/rust-toolchain.toml")
[ -n "$RUST_TOOLCHAIN" ] || die "no channel in rust-toolchain.toml"
# Minor version of the cargo on PATH; empty when there is none.
cargo_minor() { { cargo --version 2>/dev/null || true; } | sed -n 's/^cargo 1\.\([0-9]*\)\..*/\1/p'; }
install_rustup() {
    local triple tmp
    case "$(uname -m)" in
        x86_64) triple=x86_64-unknown-linux-gnu ;;
        aarch64) triple=aarch64-unknown-linux-gnu ;;
        *) die "no rustup build for $(uname -m) here; install Rust 1.$RUST_MIN_MINOR or newer (https://rustup.rs)" ;;
    esac
    say "installing rustup into $HOME/.cargo"
    tmp=$(mktemp -d)
    curl --proto '=https' --tlsv1.2 -sSf -o "$tmp/rustup-init" "$RUSTUP_DIST/$triple/rustup-init" \
        && curl --proto '=https' --tlsv1.2 -sSf -o "$tmp/rustup-init.sha256" "$RUSTUP_DIST/$triple/rustup-init.sha256" \
        || { rm -rf "$tmp"; die "could not download rustup-init from $RUSTUP_DIST"; }
    if ! (cd "$tmp" && printf '%s  rustup-init\n' "$(cut -d' ' -f1 rustup-init.sha256)" | sha256sum -c --quiet >/dev/null 2>&1); then
        rm -rf "$tmp"
        die "rustup-init does not match its published SHA-256"
    fi
    chmod +x "$tmp/rustup-init"
    # --no-modify-path: the scripts find ~/.cargo/bin themselves; shell profiles stay untouched.
    quiet "$tmp/rustup-init" -y --no-modify-path --profile minimal --default-toolchain none \
        || { rm -rf "$tmp"; die "rustup-init failed"; }
    rm -rf "$tmp"
    export PATH="$HOME/.cargo/bin:$PATH"
    say "rustup installed; add $HOME/.cargo/bin to PATH to run cargo yourself"
}
if ! command -v rustup >/dev/null 2>&1; then
    minor=$(cargo_minor)
    if [ -z "$minor" ] || [ "$minor" -lt "$RUST_MIN_MINOR" ]; then
        install_rustup
    fi
fi
if command -v rustup >/dev/null 2>&1; then
    installed=$(rustup +"$RUST_TOOLCHAIN" component list --installed 2>/dev/null || true)
    missing=0
    for c in rustc cargo rustfmt clippy "${CROSS_TARGETS[@]/#/rust-std-}"; do
        grep -q "^$c" <<<"$installed" || missing=1
    done
    if [ "$missing" -eq 1 ]; then
        say "installing Rust $RUST_TOOLCHAIN with rustfmt, clippy and the ${CROSS_TARGETS[*]} targets"
        quiet rustup toolchain install "$RUST_TOOLCHAIN" --profile minimal -c rustfmt -c clippy \
            "${CROSS_TARGETS[@]/#/--target=}" || die "rustup toolchain install $RUST_TOOLCHAIN failed"
    fi
fi

command -v cargo >/dev/null 2>&1 || die "cargo is still not on PATH"

# cargo-deb builds the Debian package; installed once into ~/.cargo/bin.
if ! cargo deb --version >/dev/null 2>&1; then
    say "installing cargo-deb"
    quiet cargo install --locked --quiet cargo-deb@3.8.0 || die "cargo install cargo-deb failed"
fi

# --- WHIP test peers (tests/peers/whip_server.py, tests/peers/janus_whip_bridge.py) ---------
# A Python venv at .work/venv (or $DOCKCAST_VENV) with aiortc + aiohttp (the Janus bridge needs
# only aiohttp); the pip step is skipped when the venv already has the pinned versions, so
# re-runs stay fast.
WHIP_AIORTC=1.16.0
WHIP_AIOHTTP=3.14.5
WHIP_VENV=${DOCKCAST_VENV:-$REPO_ROOT/.work/venv}
if [ "$(dpkg-query -W -f='${Status}' python3-venv 2>/dev/null || true)" != "install ok installed" ]; then
    say "installing: python3-venv"
    apt_update_once
    quiet "${SUDO[@]}" apt-get install -y -qq --no-install-recommends python3-venv \
        || die "apt-get install failed for: python3-venv"
fi
if ! "$WHIP_VENV/bin/python" -c "
import sys, aiortc, aiohttp
sys.exit(0 if (aiortc.__version__, aiohttp.__version__) == ('$WHIP_AIORTC', '$WHIP_AIOHTTP') else 1)
" >/dev/null 2>&1; then
    say "creating the WHIP test venv at $WHIP_VENV (aiortc $WHIP_AIORTC, aiohttp $WHIP_AIOHTTP)"
    python3 -m venv "$WHIP_VENV" || die "python3 -m venv $WHIP_VENV failed"
    quiet "$WHIP_VENV/bin/pip" install -q --disable-pip-version-check \
        "aiortc==$WHIP_AIORTC" "aiohttp==$WHIP_AIOHTTP" || die "pip install aiortc aiohttp failed"
fi
# --- end WHIP test peers --------------------------------------------------------------------

# --- node-media-server test peer (tests/peers/nms.rs) ---------------------------------------
# node-media-server is the RTMP peer that ingests Enhanced RTMP (H.265 over `hvc1`), which
# nginx-rtmp and Debian's ffmpeg cannot. Installed with npm into .work/npm (or $DOCKCAST_NPM);
# skipped when the pinned version is already there, so re-runs stay fast. The recording it makes
# is decoded with PyAV from the venv above (its bundled FFmpeg reads HEVC in FLV). Its package
# asks for Node.js 20, but it publishes and records under Debian 12's Node.js 18 (npm only warns).
NMS_VERSION=4.4.3
NMS_PREFIX=${DOCKCAST_NPM:-$REPO_ROOT/.work/npm}
NMS_PKG=$NMS_PREFIX/node_modules/node-media-server/package.json
if ! command -v npm >/dev/null 2>&1; then
    # Only when there is no npm at all: a Node.js from elsewhere (NodeSource, nvm) brings its
    # own npm, and Debian's npm package would conflict with it.
    say "installing: nodejs npm"
    apt_update_once
    quiet "${SUDO[@]}" apt-get install -y -qq --no-install-recommends nodejs npm \
        || die "apt-get install failed for: nodejs npm"
fi
if [ "$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$NMS_PKG" 2>/dev/null | head -n1)" != "$NMS_VERSION" ]; then
    say "installing node-media-server $NMS_VERSION into $NMS_PREFIX"
    mkdir -p "$NMS_PREFIX"
    quiet npm install --prefix "$NMS_PREFIX" --no-audit --no-fund --silent \
        "node-media-server@$NMS_VERSION" || die "npm install node-media-server@$NMS_VERSION failed"
fi
# --- end node-media-server test peer ----------------------------------------------------------

exit 0
