#!/usr/bin/env bash
# V4L2 for real: boots Debian's own kernel in qemu-system (TCG, no KVM needed) with the kernel's
# `vivid` test driver as the only camera, runs dockcast's pipeline inside against /dev/video0
# (YUYV, NV12, then YUYV again across an unplug/replug of the device), and judges on the host
# with ffprobe what came out. The VM has no network: each encoded stream leaves base64-encoded
# over a second serial port.
#
# Needs (scripts/setup-deps.sh installs them): qemu-system-x86, busybox-static, cpio, ffmpeg.
# The kernel package is fetched once with `apt-get download` into $VIVID_CACHE.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

CACHE=${VIVID_CACHE:-/var/tmp/dockcast-vivid}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
say() { printf 'vivid-test: %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

for tool in qemu-system-x86_64 busybox cpio ffprobe apt-get dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found; run scripts/setup-deps.sh"
done
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || die "busybox-static not installed"

# The kernel: whatever linux-image-amd64 points at today (it changes with point releases).
mkdir -p "$CACHE"
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$KPKG" ] || die "apt-cache cannot resolve linux-image-amd64 (run apt-get update)"
if [ ! -d "$CACHE/$KPKG" ]; then
    say "fetching $KPKG"
    (cd "$CACHE" && apt-get download "$KPKG" >/dev/null 2>&1) || die "apt-get download $KPKG"
    dpkg-deb -x "$CACHE"/"$KPKG"_*.deb "$CACHE/$KPKG"
fi
KVER=${KPKG#linux-image-}
VMLINUZ="$CACHE/$KPKG/boot/vmlinuz-$KVER"
MODDIR="$CACHE/$KPKG/lib/modules/$KVER/kernel/drivers/media"
[ -f "$VMLINUZ" ] || die "no kernel image in $KPKG"

say "building the capture program (release)"
cargo build --release --quiet --example v4l2_capture
BIN="$TARGET_DIR/release/examples/v4l2_capture"
[ -x "$BIN" ] || die "no $BIN"

WORK=$(mktemp -d /tmp/dockcast-vivid.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/initrd"
mkdir -p "$ROOT"/{bin,lib,lib64,proc,sys,dev,tmp,mods}
cp "$(command -v busybox)" "$ROOT/bin/busybox"
for app in sh mount insmod sleep echo cat base64 poweroff ls; do ln -s busybox "$ROOT/bin/$app"; done
cp "$BIN" "$ROOT/bin/capture"
# The dynamic loader and the libraries the program links (glibc, libstdc++ for openh264).
while read -r lib; do
    cp -L "$lib" "$ROOT/lib/"
done < <(ldd "$BIN" | awk '/=>/ {print $3} !/=>/ && /^\s*\// {print $1}')
cp -L /lib64/ld-linux-x86-64.so.2 "$ROOT/lib64/"
for m in mc/mc rc/rc-core cec/core/cec v4l2-core/videodev v4l2-core/v4l2-dv-timings \
         common/v4l2-tpg/v4l2-tpg common/videobuf2/videobuf2-common \
         common/videobuf2/videobuf2-v4l2 common/videobuf2/videobuf2-memops \
         common/videobuf2/videobuf2-vmalloc common/videobuf2/videobuf2-dma-contig \
         test-drivers/vivid/vivid; do
    src="$MODDIR/$m.ko"
    [ -f "$src" ] || src=$(find "$MODDIR/.." -name "$(basename "$m").ko" | head -n1)
    [ -f "$src" ] || die "module $m not in $KPKG"
    cp "$src" "$ROOT/mods/"
done

cat >"$ROOT/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
export LD_LIBRARY_PATH=/lib
for m in mc rc-core cec videodev v4l2-dv-timings v4l2-tpg videobuf2-common videobuf2-v4l2 \
         videobuf2-memops videobuf2-vmalloc videobuf2-dma-contig; do
    insmod /mods/$m.ko 2>/dev/null
done
insmod /mods/vivid.ko n_devs=1 node_types=0x1 input_types=0x0
sleep 1
emit() { echo "BEGIN $1" >/dev/ttyS1; base64 "$2" >/dev/ttyS1; echo "END $1" >/dev/ttyS1; }
echo "=== yuyv"
/bin/capture "v4l2:/dev/video0?format=yuyv&width=320&height=240&fps=30" 320x240 45 /tmp/yuyv.h264
emit yuyv /tmp/yuyv.h264
echo "=== nv12"
/bin/capture "v4l2:/dev/video0?format=nv12&width=320&height=240&fps=30" 320x240 45 /tmp/nv12.h264
emit nv12 /tmp/nv12.h264
echo "=== unplug"
/bin/capture "v4l2:/dev/video0?format=yuyv&width=320&height=240&fps=30" 320x240 90 /tmp/unplug.h264 &
pid=$!
sleep 2
# Unbinding removes the device under the open file descriptor, as pulling a USB camera does.
echo vivid.0 > /sys/bus/platform/drivers/vivid/unbind && echo "UNPLUGGED"
sleep 2
echo vivid.0 > /sys/bus/platform/drivers/vivid/bind && echo "REPLUGGED"
wait $pid
emit unplug /tmp/unplug.h264
echo "=== done"
poweroff -f
INIT
chmod +x "$ROOT/init"
(cd "$ROOT" && find . | cpio -o -H newc 2>/dev/null | gzip -1 >"$WORK/initrd.gz")

say "booting $KPKG under TCG"
started=$(date +%s)
timeout 300 qemu-system-x86_64 -accel tcg -cpu max -m 768 -nographic -no-reboot -nic none \
    -kernel "$VMLINUZ" -initrd "$WORK/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1" \
    -serial "file:$WORK/console.log" -serial "file:$WORK/data.b64" -monitor none \
    >/dev/null 2>&1 || die "qemu failed or timed out; console:$(tail -n 30 "$WORK/console.log")"
say "VM ran $(( $(date +%s) - started )) s"
grep -E '^(===|EVENT|DONE|UNPLUGGED|REPLUGGED|FRAMES|FIRST_WAIT)' "$WORK/console.log" | tr -d '\r' >&2 || true

# Cuts stream NAME out of the second serial port's base64.
extract() {
    tr -d '\r' <"$WORK/data.b64" | awk -v n="$1" '$0 == "BEGIN " n {on=1; next} $0 == "END " n {on=0} on' \
        | base64 -d >"$WORK/$1.h264" || die "stream $1 did not come out of the VM"
}
# Frames ffprobe decodes, and the size.
probe() {
    ffprobe -v error -count_frames -select_streams v:0 \
        -show_entries stream=width,height,nb_read_frames -of csv=p=0 "$WORK/$1.h264"
}
fail=0
for name in yuyv nv12 unplug; do
    extract "$name"
    got=$(probe "$name")
    say "$name: ffprobe width,height,frames = $got"
    IFS=, read -r w h n <<<"$got"
    want=45; [ "$name" = unplug ] && want=90
    if [ "$w" != 320 ] || [ "$h" != 240 ] || [ "${n:-0}" -lt "$want" ]; then
        say "$name: expected 320x240 and $want decoded frames"; fail=1
    fi
done
# A lens being switched to is asked for frames without waiting; just opened, it has none yet,
# and the ask must say so rather than block the pipeline until the camera's first frame.
[ "$(tr -d '\r' <"$WORK/console.log" | grep -c '^FIRST_WAIT none')" = 3 ] \
    || { say "a zero-wait ask of a camera just opened did not come back empty"; fail=1; }
tr -d '\r' <"$WORK/console.log" | grep -q '^UNPLUGGED' || { say "the device was not unplugged"; fail=1; }
tr -d '\r' <"$WORK/console.log" | grep -q '^EVENT input-down normal: /dev/video0' \
    || { say "no input-down event for the unplugged device"; fail=1; }
tr -d '\r' <"$WORK/console.log" | grep -q '^EVENT input-up normal' \
    || { say "no input-up event after the replug"; fail=1; }
tr -d '\r' <"$WORK/console.log" | grep -Eq '^DONE frames=90 .*input_failures=[1-9].*down=false' \
    || { say "the capture did not resume after the replug"; fail=1; }
[ "$fail" = 0 ] || die "see above"
say "ok"
