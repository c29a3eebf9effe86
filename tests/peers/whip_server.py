#!/usr/bin/env python3
"""A small WHIP (RFC 9725) endpoint on aiortc, for dockcast's integration tests.

POST /whip/{stream}            -> 201 + Location + SDP answer (401 without the token when --token)
POST /whip-moved/{stream}      -> same; the target of --redirect-first
PATCH /whip/session/{sid}      -> 405 (no trickle, no ICE restart)
DELETE /whip/session/{sid}     -> 200 (401 without the token when --token)
GET /stats                     -> JSON: counters and, per session, decoded frames and state
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
    p.add_argument("--tls-port", type=int, help="also serve HTTPS here (needs --cert/--key)")
    p.add_argument("--cert")
    p.add_argument("--key")
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
