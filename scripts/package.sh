#!/usr/bin/env bash
# Builds the Debian packages for amd64 and arm64 from the release builds and checks what they
# hold: the binary for the right architecture, the unit, the config as a conffile.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
check() {
    local deb=$1 arch=$2 want=$3
    echo "$deb"
    # Listings are captured first: `grep -q` closing a pipe early would fail dpkg-deb.
    local info list conffiles
    info=$(dpkg-deb -I "$deb")
    list=$(dpkg-deb -c "$deb")
    conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)
    grep -q "Architecture: $arch" <<<"$info" || { echo "not $arch" >&2; exit 1; }
    grep -q './usr/bin/dockcast$' <<<"$list" || { echo "no binary" >&2; exit 1; }
    grep -q 'lib/systemd/system/dockcast.service$' <<<"$list" || { echo "no unit" >&2; exit 1; }
    grep -q './etc/dockcast/dockcast.toml$' <<<"$list" || { echo "no config" >&2; exit 1; }
    grep -qx /etc/dockcast/dockcast.toml <<<"$conffiles" || { echo "config is not a conffile" >&2; exit 1; }
    local tmp
    tmp=$(mktemp -d)
    dpkg-deb -x "$deb" "$tmp"
    file "$tmp/usr/bin/dockcast" | grep -q "$want" || { echo "binary is not $want" >&2; rm -rf "$tmp"; exit 1; }
    ls -l "$tmp/usr/bin/dockcast" | awk '{print "  binary:", $5, "bytes"}'
    rm -rf "$tmp"
}
cargo build --release
amd64=$(cargo deb --no-build 2>/dev/null | tail -n 1)
check "$amd64" amd64 x86-64
cargo build --release --target aarch64-unknown-linux-gnu
arm64=$(cargo deb --no-build --no-strip --target aarch64-unknown-linux-gnu 2>/dev/null | tail -n 1)
check "$arm64" arm64 aarch64
