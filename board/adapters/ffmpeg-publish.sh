#!/usr/bin/env bash
# dockcast adapter: publishes the raw H.264 Annex-B stream read on stdin with ffmpeg, without
# re-encoding, to an SRT, RTMP(S), RTSP or UDP url.
#
# Why a script and not ffmpeg directly: ffmpeg needs the container format chosen from the url,
# and dockcast wants a {"event":"publishing"} line on stdout once the uplink is up, which ffmpeg
# does not print by itself.
#
# Usage (dockcast config, framing = "annexb", ready = "publishing"):
#   command = ["/usr/lib/dockcast/adapters/ffmpeg-publish.sh", "srt://media.example:9000?streamid=publish:{sn}"]
# or with no argument, the url is taken from $DOCKCAST_URL (keeps a passphrase out of argv,
# which any local user can read in /proc).
#
# Optional environment:
#   FFMPEG            ffmpeg binary (default: ffmpeg on PATH)
#   FFMPEG_LOGLEVEL   ffmpeg -loglevel (default: warning; its stderr goes to dockcast's log)
#
# Contract: exits when stdin reaches EOF (ffmpeg flushes and closes the output) or when the
# uplink fails (dockcast restarts it). ffmpeg is exec'd so it is the process dockcast watches;
# the status printer is a child of it that ends with it.
set -euo pipefail

url="${1:-${DOCKCAST_URL:-}}"
json_error() {
    # The message never contains the url, which may hold a key or passphrase.
    printf '{"event":"error","message":"%s"}\n' "$1"
}

case "$url" in
    srt://*) format=mpegts ;;
    udp://*) format=mpegts ;;
    rtmp://* | rtmps://*) format=flv ;;
    rtsp://* | rtsps://*) format=rtsp ;;
    "")
        json_error "no url: pass it as the first argument or in DOCKCAST_URL"
        exit 2
        ;;
    *)
        json_error "unsupported url scheme (srt, udp, rtmp, rtmps, rtsp, rtsps)"
        exit 2
        ;;
esac

# ffmpeg writes a progress block (ending in progress=continue) every -stats_period once the
# output is open and packets are flowing: the first one is the moment the uplink took the
# stream. The reader turns it into one status line, then keeps draining so ffmpeg never blocks
# on it. It is bash `read`, not awk: mawk fills its whole input buffer before it looks at a
# line, which would hold the status back until ffmpeg exits.
report_publishing() {
    local line
    while IFS= read -r line; do
        case "$line" in
            progress=*)
                printf '{"event":"publishing"}\n'
                exec cat >/dev/null
                ;;
        esac
    done
}

# Input options: a 32-byte probe opens the output at once (the default probe waits seconds for
# a live pipe); -framerate gives the packets timestamps, which Annex-B without VUI timing (what
# openh264 writes) does not carry. ffmpeg still warns once about an unset timestamp and about
# the frame rate it could not estimate; both are harmless here (the output is timed at
# DOCKCAST_FPS, default 30).
exec "${FFMPEG:-ffmpeg}" -hide_banner -nostdin -loglevel "${FFMPEG_LOGLEVEL:-warning}" \
    -f h264 -framerate "${DOCKCAST_FPS:-30}" -probesize 32 -analyzeduration 100000 -fpsprobesize 0 -i pipe:0 \
    -map 0:v:0 -c:v copy -f "$format" \
    -progress >(report_publishing) \
    -stats_period 0.5 \
    "$url"
