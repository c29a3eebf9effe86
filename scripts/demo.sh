#!/usr/bin/env bash
# See dockcast work on one machine: a local MQTT broker plays the cloud's broker, a local
# nginx-rtmp plays the media server, dockcast answers a live_start_push sent by `dockcast ctl`
# and pushes its built-in test pattern. Stays in the foreground until Ctrl-C, then stops
# everything it started.
#
# Ports: MQTT 1883, RTMP 1935, nginx /stat on 8080 (override with DEMO_MQTT_PORT,
# DEMO_RTMP_PORT, DEMO_HTTP_PORT). Config and logs: .work/demo/ in the repository.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MQTT_PORT=${DEMO_MQTT_PORT:-1883}
RTMP_PORT=${DEMO_RTMP_PORT:-1935}
HTTP_PORT=${DEMO_HTTP_PORT:-8080}
GW=DOCKCAST0000001
VIDEO_ID="$GW/165-0-7/normal-0"
MQTT_URL="mqtt://127.0.0.1:$MQTT_PORT"
RTMP_URL="rtmp://127.0.0.1:$RTMP_PORT/live/demo"
WORK="$ROOT/.work/demo"
NGINX_MODULES=/usr/lib/nginx/modules

say() { printf 'demo: %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
# The release binary lands in the cargo target dir (which may be shared, outside the repo).
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET_DIR/release/dockcast"

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits (bounded: 10 s) until something accepts on 127.0.0.1:$1; $2 is the pid that should.
wait_port() {
    local port=$1 pid=$2 name=$3 i
    for i in $(seq 1 100); do
        port_taken "$port" && return 0
        kill -0 "$pid" 2>/dev/null || die "$name exited during startup (see $WORK/$name.log)"
        sleep 0.1
    done
    die "$name did not listen on 127.0.0.1:$port within 10 s (see $WORK/$name.log)"
}

for pair in "MQTT:$MQTT_PORT:DEMO_MQTT_PORT" "RTMP:$RTMP_PORT:DEMO_RTMP_PORT" "HTTP:$HTTP_PORT:DEMO_HTTP_PORT"; do
    IFS=: read -r what port var <<<"$pair"
    if port_taken "$port"; then
        die "$what port 127.0.0.1:$port is already in use; stop what holds it or pick another with $var=<port>"
    fi
done

bash scripts/setup-deps.sh
# setup-deps installs rustup into ~/.cargo/bin when the machine had no usable Rust; its cargo
# goes first, ahead of an older distribution cargo.
if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
say "building the release binary (cargo build --release)"
cargo build --release --quiet
[ -x "$BIN" ] || die "no binary at $BIN after the build"

rm -rf "$WORK"
mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"

PIDS=()
PUSHING=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    echo
    if [ "$PUSHING" -eq 1 ] && [ -n "${DAEMON_PID:-}" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        say "stopping the push"
        "$BIN" ctl --mqtt-url "$MQTT_URL" --gateway-sn "$GW" --timeout-secs 5 \
            stop --video-id "$VIDEO_ID" >/dev/null 2>&1 || true
    fi
    local i pid
    # Newest first: dockcast, then nginx, then mosquitto.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        kill -0 "$pid" 2>/dev/null || continue
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    say "stopped; logs are in $WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- MQTT broker --------------------------------------------------------------------------
cat >"$WORK/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
persistence false
log_dest stderr
EOF
if [ "$(id -u)" -eq 0 ]; then
    # mosquitto drops root privileges to its own user unless told to stay.
    echo "user root" >>"$WORK/mosquitto.conf"
fi
mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
PIDS+=($!)
wait_port "$MQTT_PORT" "$!" mosquitto
say "mosquitto listening on 127.0.0.1:$MQTT_PORT"

# --- RTMP media server ----------------------------------------------------------------------
N="$WORK/nginx"
cat >"$N/nginx.conf" <<EOF
load_module $NGINX_MODULES/ngx_rtmp_module.so;
daemon off;
master_process off;
pid $N/nginx.pid;
error_log $N/logs/error.log info;
events { worker_connections 64; }
rtmp {
    server {
        listen 127.0.0.1:$RTMP_PORT;
        chunk_size 4096;
        application live {
            live on;
            record off;
        }
    }
}
http {
    access_log $N/logs/access.log;
    client_body_temp_path $N/tmp/body;
    proxy_temp_path $N/tmp/proxy;
    fastcgi_temp_path $N/tmp/fastcgi;
    uwsgi_temp_path $N/tmp/uwsgi;
    scgi_temp_path $N/tmp/scgi;
    server {
        listen 127.0.0.1:$HTTP_PORT;
        location /stat { rtmp_stat all; }
    }
}
EOF
nginx -p "$N" -e "$N/logs/error.log" -c "$N/nginx.conf" >"$WORK/nginx.log" 2>&1 &
PIDS+=($!)
wait_port "$RTMP_PORT" "$!" nginx
say "nginx-rtmp listening on 127.0.0.1:$RTMP_PORT (stats: http://127.0.0.1:$HTTP_PORT/stat)"

# --- dockcast -----------------------------------------------------------------------------
RUST_LOG=${RUST_LOG:-info} "$BIN" run --mqtt-url "$MQTT_URL" >"$WORK/dockcast.log" 2>&1 &
DAEMON_PID=$!
PIDS+=("$DAEMON_PID")
say "dockcast running (pid $DAEMON_PID, log $WORK/dockcast.log); waiting for its live_capacity"
# live_capacity is published retained, so a subscriber gets it whenever it subscribes.
got_capacity=0
for _ in $(seq 1 20); do
    kill -0 "$DAEMON_PID" 2>/dev/null || die "dockcast exited; last log lines:
$(tail -n 20 "$WORK/dockcast.log")"
    if mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -t "thing/product/$GW/state" -C 1 -W 1 2>/dev/null \
        | grep -q '"live_capacity"'; then
        got_capacity=1
        break
    fi
done
[ "$got_capacity" -eq 1 ] || die "no live_capacity on thing/product/$GW/state within 20 s (see $WORK/dockcast.log)"
say "live_capacity received"

CTL=("$BIN" ctl --mqtt-url "$MQTT_URL" --gateway-sn "$GW")
say "starting the push: ${CTL[*]} start --url $RTMP_URL --video-id $VIDEO_ID --quality 2"
if ! "${CTL[@]}" start --url "$RTMP_URL" --video-id "$VIDEO_ID" --quality 2; then
    die "live_start_push was refused (see the reply above and $WORK/dockcast.log)"
fi
PUSHING=1

say "probing the live stream with ffprobe"
if probe=$(timeout 20 ffprobe -v error -select_streams v:0 \
    -show_entries stream=codec_name,profile,width,height,r_frame_rate -of compact "$RTMP_URL" 2>&1); then
    printf '  %s\n' "$probe"
    grep -q 'codec_name=h264' <<<"$probe" || say "warning: the stream is not H.264"
else
    say "warning: ffprobe could not read $RTMP_URL: $probe"
fi

cat <<EOF

  Live at $RTMP_URL — watch it with:
      ffplay -fflags nobuffer $RTMP_URL

  Control it like the cloud would (each prints the reply; exit 0 iff result == 0):
      ${CTL[*]} lens --lens zoom
      ${CTL[*]} quality --video-id $VIDEO_ID --quality 4
      ${CTL[*]} stop --video-id $VIDEO_ID
      ${CTL[*]} start --url $RTMP_URL --video-id $VIDEO_ID --quality 2
      ${CTL[*]} capacity

  Watch the MQTT side:
      mosquitto_sub -h 127.0.0.1 -p $MQTT_PORT -t 'thing/product/#' -v

  Ctrl-C stops everything this script started.
EOF

# Foreground until Ctrl-C (the trap) or until dockcast exits by itself.
rc=0
wait "$DAEMON_PID" || rc=$?
say "dockcast exited by itself with status $rc; last log lines:"
tail -n 20 "$WORK/dockcast.log" || true
PUSHING=0
exit 1
