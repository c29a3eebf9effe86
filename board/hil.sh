#!/usr/bin/env bash
# Hardware-in-the-loop test: run on (or next to) a board whose dockcast is connected to the
# broker and media server named below. It drives the four live services with `dockcast ctl`
# as the cloud would and judges each step by what a player sees, with ffprobe. Prints a
# pass/fail table; exits 0 only if every step passed.
#
# Environment:
#   MQTT_URL     broker the board's dockcast uses, e.g. mqtt://10.0.0.5:1883 (required)
#   GATEWAY_SN   the board's gateway serial (required)
#   VIDEO_ID     {sn}/{camera_index}/{video_index} to test (required)
#   PUSH_URL     where the board pushes, e.g. rtmp://10.0.0.6/live/hil (required)
#   PLAY_URL     where ffprobe reads the stream back (default: PUSH_URL)
#   URL_TYPE     1 RTMP (default), 3 GB28181, 4 WHIP: for 3 and 4 give a PLAY_URL the media
#                server offers (its RTMP/HTTP-FLV/RTSP play url)
#   LENS         lens to switch to (default zoom); QUALITY_A/QUALITY_B the two qualities tried
#                (default 2 and 4); DOCKCAST the dockcast binary (default: dockcast on PATH)
#   MQTT_USERNAME, DOCKCAST_MQTT_PASSWORD  broker credentials, if any
set -uo pipefail

: "${MQTT_URL:?set MQTT_URL}" "${GATEWAY_SN:?set GATEWAY_SN}" "${VIDEO_ID:?set VIDEO_ID}" "${PUSH_URL:?set PUSH_URL}"
PLAY_URL=${PLAY_URL:-$PUSH_URL}
URL_TYPE=${URL_TYPE:-1}
LENS=${LENS:-zoom}
QUALITY_A=${QUALITY_A:-2}
QUALITY_B=${QUALITY_B:-4}
DOCKCAST=${DOCKCAST:-dockcast}
CTL=("$DOCKCAST" ctl --mqtt-url "$MQTT_URL" --gateway-sn "$GATEWAY_SN" --timeout-secs 25)
[ -n "${MQTT_USERNAME:-}" ] && CTL+=(--username "$MQTT_USERNAME")

RESULTS=()
FAILED=0
record() { # step, PASS|FAIL, detail
    RESULTS+=("$(printf '%-34s %-5s %s' "$1" "$2" "$3")")
    [ "$2" = PASS ] || FAILED=1
}

# ffprobe of the live stream: prints "codec width height" of the first video stream.
probe() {
    timeout 20 ffprobe -v error -rw_timeout 15000000 -select_streams v:0 \
        -show_entries stream=codec_name,width,height -of csv=p=0 "$PLAY_URL" 2>/dev/null | head -n 1 | tr ',' ' '
}

ctl() { # step name, expected result (0 or "nonzero"), ctl arguments...
    local step=$1 want=$2
    shift 2
    local out rc
    out=$("${CTL[@]}" "$@" 2>&1)
    rc=$?
    local result
    result=$(sed -n 's/.*"result":\([0-9]*\).*/\1/p' <<<"$out" | head -n 1)
    if [ "$want" = 0 ] && [ "$rc" -eq 0 ]; then
        record "$step" PASS "result 0"
    elif [ "$want" = nonzero ] && [ -n "$result" ] && [ "$result" != 0 ]; then
        record "$step" PASS "result $result"
    else
        record "$step" FAIL "$(tr -d '\n' <<<"$out" | cut -c1-120)"
    fi
}

capacity=$("${CTL[@]}" capacity 2>&1)
if grep -q "\"${VIDEO_ID#*/}\"\|${VIDEO_ID%%/*}" <<<"$capacity"; then
    record "live_capacity announced" PASS "$(grep -o '"available_video_number":[0-9]*' <<<"$capacity" | head -n 1)"
else
    record "live_capacity announced" FAIL "$(cut -c1-120 <<<"$capacity")"
fi

ctl "live_start_push (quality $QUALITY_A)" 0 start --url "$PUSH_URL" --url-type "$URL_TYPE" --video-id "$VIDEO_ID" --quality "$QUALITY_A"
sleep 3
first=$(probe)
if [ -n "$first" ]; then record "stream plays after start" PASS "$first"; else record "stream plays after start" FAIL "ffprobe read nothing from $PLAY_URL"; fi

ctl "live_lens_change ($LENS)" 0 lens --lens "$LENS" --video-id "$VIDEO_ID"
sleep 3
after_lens=$(probe)
if [ -n "$after_lens" ] && [ "$after_lens" = "$first" ]; then
    record "same stream after lens change" PASS "$after_lens"
else
    record "same stream after lens change" FAIL "before '$first', after '$after_lens'"
fi

ctl "live_set_quality ($QUALITY_B)" 0 quality --video-id "$VIDEO_ID" --quality "$QUALITY_B"
sleep 4
after_quality=$(probe)
if [ -n "$after_quality" ]; then record "stream plays after quality change" PASS "$after_quality"; else record "stream plays after quality change" FAIL "ffprobe read nothing"; fi

ctl "second start is refused" nonzero start --url "${PUSH_URL}-other" --url-type "$URL_TYPE" --video-id "$VIDEO_ID" --quality "$QUALITY_A"
ctl "live_stop_push" 0 stop --video-id "$VIDEO_ID"
sleep 2
if [ -z "$(probe)" ]; then record "stream gone after stop" PASS "ffprobe reads nothing"; else record "stream gone after stop" FAIL "still playing"; fi
ctl "stop again is refused" nonzero stop --video-id "$VIDEO_ID"

printf '%-34s %-5s %s\n' STEP RESULT DETAIL
printf '%s\n' "${RESULTS[@]}"
[ "$FAILED" -eq 0 ] && echo "HIL: all steps passed" || echo "HIL: FAILED"
exit "$FAILED"
