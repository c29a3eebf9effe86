#!/usr/bin/env python3
"""A small WHIP (RFC 9725) endpoint on aiortc, for dockcast's integration tests.

POST /whip/{stream}            -> 201 + Location + SDP answer (401 without the token when --token)
POST /whip-moved/{stream}      -> same; the target of --redirect-first
PATCH /whip/session/{sid}      -> 405 (no trickle, no ICE restart)
DELETE /whip/session/{sid}     -> 200 (401 without the token when --token)
GET /stats                     -> JSON: counters and, per session, decoded frames and state
With --stamp, every decoded frame's capture-time stamp (dockcast's `pattern?clock=1`) is read
and `now - stamp` in ms is kept per session as "stamp_ages_ms" (plus "stamp_misses", frames
without a readable stamp); without it the stats are as before.
With --tls-port the same routes are served over HTTPS too (self-signed cert from the test).

Listens on 127.0.0.1 only; ICE candidates are 127.0.0.1 only.
"""
import argparse
import asyncio
import ssl
import time
import uuid

import aioice.ice
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

# aioice skips loopback addresses when gathering; loopback is all the tests may use.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

SESSIONS = {}
STATS = {
    "posts": 0,
    "unauthorized": 0,
    "redirected": 0,
    "busy": 0,
    "deletes": 0,
    "last_post_path": None,
    "last_post_query": None,
    "last_post_auth": None,
    "sessions": {},
}
ARGS = None

# The capture-time stamp of dockcast's test pattern. The layout is written down once, in the doc
# comment of draw_stamp in src/source/pattern.rs: 48 blocks of 16x16 luma pixels in one row at
# the top-left corner, white (1) or black (0), read as the mean of each block's central 8x8
# pixels against 128; blocks 0-1 = 1 0, blocks 2-41 = ms since the UNIX epoch mod 2^40 (MSB
# first), blocks 42-45 = XOR of the ten nibbles of that value (MSB first), blocks 46-47 = 0 1.
STAMP_BLOCKS, STAMP_BLOCK, STAMP_TIME_BITS = 48, 16, 40
STAMP_MOD = 1 << STAMP_TIME_BITS
MAX_STAMP_SAMPLES = 100000


def read_stamp(frame):
    """The stamp of a decoded av.VideoFrame in ms (mod 2^40), or None when there is none."""
    if frame.format.name not in ("yuv420p", "yuvj420p", "nv12"):
        frame = frame.reformat(format="yuv420p")
    if frame.width < STAMP_BLOCKS * STAMP_BLOCK or frame.height < STAMP_BLOCK:
        return None
    plane = frame.planes[0]
    stride, luma = plane.line_size, memoryview(plane)
    rows = [luma[r * stride : r * stride + STAMP_BLOCKS * STAMP_BLOCK] for r in range(4, 12)]
    bits = []
    for i in range(STAMP_BLOCKS):
        x0 = i * STAMP_BLOCK + 4
        total = sum(sum(row[x0 : x0 + 8]) for row in rows)
        bits.append(1 if total > 128 * 64 else 0)
    if bits[:2] != [1, 0] or bits[46:] != [0, 1]:
        return None
    t = 0
    for b in bits[2:42]:
        t = (t << 1) | b
    check = 0
    for b in bits[42:46]:
        check = (check << 1) | b
    nibbles = 0
    for n in range(10):
        nibbles ^= (t >> (4 * n)) & 0xF
    return t if check == nibbles else None


def stamp_age_ms(stamp, now_ms):
    """now - stamp in ms, modulo 2^40, negative when the stamp is ahead (as stamp_age_ms in
    pattern.rs)."""
    d = (now_ms - stamp) % STAMP_MOD
    return d - STAMP_MOD if d >= STAMP_MOD // 2 else d


def authorized(req):
    if not ARGS.token:
        return True
    return req.headers.get("Authorization") == f"Bearer {ARGS.token}"


async def consume(sid, track):
    st = STATS["sessions"][sid]
    while True:
        try:
            frame = await track.recv()  # decoded av.VideoFrame
        except MediaStreamError:
            break
        st["frames"] += 1
        if ARGS.stamp:
            # Read before anything else so the age includes as little of this loop as possible.
            now_ms = time.time_ns() // 1_000_000
            stamp = read_stamp(frame)
            if stamp is None:
                st["stamp_misses"] += 1
            elif len(st["stamp_ages_ms"]) < MAX_STAMP_SAMPLES:
                st["stamp_ages_ms"].append(stamp_age_ms(stamp, now_ms))
        if len(st["pts"]) < 10000:
            st["pts"].append(frame.pts)  # RTP timestamp (90 kHz) of the decoded frame
        st["width"], st["height"] = frame.width, frame.height
        size = f"{frame.width}x{frame.height}"
        if size not in st["sizes"]:
            st["sizes"].append(size)
        if st["first_frame_at"] is None:
            st["first_frame_at"] = time.time()
        st["last_frame_at"] = time.time()


async def post_offer(req):
    STATS["posts"] += 1
    STATS["last_post_path"] = req.path
    STATS["last_post_query"] = req.query_string
    STATS["last_post_auth"] = "Authorization" in req.headers
    if not authorized(req):
        STATS["unauthorized"] += 1
        return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
    if ARGS.redirect_first and STATS["redirected"] == 0:
        STATS["redirected"] += 1
        loc = f"/whip-moved/{req.match_info['stream']}"
        if req.query_string:
            loc += "?" + req.query_string
        return web.Response(status=307, headers={"Location": loc})
    if ARGS.busy_once and STATS["busy"] == 0:
        STATS["busy"] += 1
        return web.Response(status=503, headers={"Retry-After": str(ARGS.retry_after)})
    if req.content_type != "application/sdp":
        return web.Response(status=415)
    pc, sid = RTCPeerConnection(), uuid.uuid4().hex
    SESSIONS[sid] = pc
    STATS["sessions"][sid] = {
        "stream": req.match_info["stream"],
        "path": req.path,
        "frames": 0,
        "pts": [],
        "sizes": [],
        "state": "new",
        "width": 0,
        "height": 0,
        "created_at": time.time(),
        "first_frame_at": None,
        "last_frame_at": None,
        "delete_auth": None,
    }
    if ARGS.stamp:
        STATS["sessions"][sid].update({"stamp_ages_ms": [], "stamp_misses": 0})

    @pc.on("track")
    def on_track(track):
        if track.kind == "video":
            asyncio.ensure_future(consume(sid, track))

    @pc.on("connectionstatechange")
    async def on_state():
        st = STATS["sessions"][sid]
        if st["state"] != "deleted":
            st["state"] = pc.connectionState

    await pc.setRemoteDescription(RTCSessionDescription(sdp=await req.text(), type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())  # gathers all candidates: no trickle
    if ARGS.answer_delay:
        # A slow uplink: the session exists here before the client has its 201.
        await asyncio.sleep(ARGS.answer_delay)
    return web.Response(
        status=201,
        content_type="application/sdp",
        text=pc.localDescription.sdp,
        headers={
            "Location": f"/whip/session/{sid}",
            "ETag": f'"{sid}"',
            "Link": '<stun:127.0.0.1:3478>; rel="ice-server"',
        },
    )


async def patch_session(req):
    return web.Response(status=405, headers={"Allow": "DELETE"})


async def delete_session(req):
    sid = req.match_info["sid"]
    if not authorized(req):
        STATS["unauthorized"] += 1
        return web.Response(status=401)
    pc = SESSIONS.pop(sid, None)
    if pc is None:
        return web.Response(status=404)
    STATS["deletes"] += 1
    st = STATS["sessions"][sid]
    st["state"] = "deleted"
    st["delete_auth"] = "Authorization" in req.headers
    await pc.close()
    return web.Response(status=200)


async def stats(req):
    return web.json_response(STATS)


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8889)
    p.add_argument("--token")
    p.add_argument("--redirect-first", action="store_true", help="answer the first POST with 307")
    p.add_argument("--busy-once", action="store_true", help="answer the first POST with 503")
    p.add_argument("--retry-after", type=int, default=1)
    p.add_argument("--answer-delay", type=float, help="hold each 201 this many seconds")
    p.add_argument("--tls-port", type=int, help="also serve HTTPS here (needs --cert/--key)")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument(
        "--stamp", action="store_true", help="read the capture-time stamp of every decoded frame"
    )
    ARGS = p.parse_args()
    app = web.Application()
    for prefix in ("/whip", "/whip-moved"):
        app.router.add_post(prefix + "/{stream}", post_offer)
    app.router.add_patch("/whip/session/{sid}", patch_session)
    app.router.add_delete("/whip/session/{sid}", delete_session)
    app.router.add_get("/stats", stats)
    asyncio.run(serve(app))


async def serve(app):
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", ARGS.port).start()
    if ARGS.tls_port:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(ARGS.cert, ARGS.key)
        await web.TCPSite(runner, "127.0.0.1", ARGS.tls_port, ssl_context=ctx).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    main()
