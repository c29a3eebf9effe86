#!/usr/bin/env python3
"""A WHIP (RFC 9725) front end for Janus's VideoRoom, for dockcast's integration tests.

Janus 1.1 speaks its own JSON API, not WHIP; Meetecho's simple-whip-server (the usual front end)
is not installable next to a modern Node. This bridge does the same translation:

POST /whip/{stream}          -> Janus: create session, attach videoroom, create a recorded H.264
                                room, joinandconfigure as publisher with the offer, wait for the
                                answer event -> 201 + Location + SDP answer
PATCH /whip/session/{sid}    -> 405 (Janus got every candidate in the offer: no trickle)
DELETE /whip/session/{sid}   -> Janus: unpublish (wait for "unpublished": "ok"), destroy -> 200
GET /stats                   -> JSON: counters and, per session, the Janus events seen

Each session has a long-poll task on Janus's event endpoint; it doubles as the keepalive that
stops Janus from timing the session out.
"""
import argparse
import asyncio
import itertools
import json
import os
import time
import uuid

import aiohttp
from aiohttp import web

ARGS = None
HTTP = None  # aiohttp.ClientSession towards Janus
ROOMS = itertools.count(4242)
SESSIONS = {}  # whip session id -> Session
STATS = {
    "posts": 0,
    "post_errors": 0,
    "deletes": 0,
    "unpublish_sent": 0,
    "unpublish_ok": 0,
    "destroyed": 0,
    "sessions": {},
}

# How long to wait for one answer or event from Janus before the WHIP request fails.
JANUS_TIMEOUT = 10


def log(*parts):
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


class JanusError(Exception):
    pass


async def janus(path, body):
    """One request to Janus's HTTP API; returns the parsed reply or raises JanusError."""
    body = dict(body, transaction=uuid.uuid4().hex)
    async with HTTP.post(ARGS.janus + path, json=body,
                         timeout=aiohttp.ClientTimeout(total=JANUS_TIMEOUT)) as r:
        reply = await r.json(content_type=None)
    if reply.get("janus") == "error":
        raise JanusError(f"{body.get('janus')}: {reply.get('error')}")
    data = reply.get("plugindata", {}).get("data", {})
    if "error" in data:
        raise JanusError(f"{body.get('body', {}).get('request')}: {data['error']}")
    return reply


class Session:
    """One WHIP session: a Janus session with one videoroom publisher handle."""

    def __init__(self, sid, stream):
        self.sid, self.stream = sid, stream
        self.janus_session = self.handle = self.room = None
        self.events = asyncio.Queue()
        self.poller = None
        self.stats = {"stream": stream, "state": "new", "events": [], "webrtcup": False,
                      "media_video": False, "recording": None}
        STATS["sessions"][sid] = self.stats

    def path(self):
        return f"/{self.janus_session}/{self.handle}"

    async def poll(self):
        """Long-polls Janus for this session's events until the session is destroyed."""
        while True:
            try:
                async with HTTP.get(f"{ARGS.janus}/{self.janus_session}?maxev=5",
                                    timeout=aiohttp.ClientTimeout(total=40)) as r:
                    msgs = await r.json(content_type=None)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Janus gone or session destroyed: try again shortly
                log(self.sid, "poll error", repr(e))
                await asyncio.sleep(0.5)
                continue
            for m in msgs if isinstance(msgs, list) else [msgs]:
                kind = m.get("janus")
                if kind == "keepalive":
                    continue
                self.stats["events"].append(kind)
                if kind == "webrtcup":
                    self.stats["webrtcup"] = True
                if kind == "media" and m.get("type") == "video" and m.get("receiving"):
                    self.stats["media_video"] = True
                log(self.sid, "event", json.dumps(m)[:400])
                await self.events.put(m)

    async def wait_event(self, pred):
        deadline = time.monotonic() + JANUS_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise JanusError("timed out waiting for a Janus event")
            m = await asyncio.wait_for(self.events.get(), left)
            if pred(m):
                return m


async def post_offer(req):
    STATS["posts"] += 1
    if req.content_type != "application/sdp":
        return web.Response(status=415)
    offer = await req.text()
    sid = uuid.uuid4().hex
    s = Session(sid, req.match_info["stream"])
    try:
        s.janus_session = (await janus("", {"janus": "create"}))["data"]["id"]
        s.poller = asyncio.ensure_future(s.poll())
        attach = {"janus": "attach", "plugin": "janus.plugin.videoroom"}
        s.handle = (await janus(f"/{s.janus_session}", attach))["data"]["id"]
        s.room = next(ROOMS)
        rec_dir = os.path.join(ARGS.rec_dir, str(s.room))
        os.makedirs(rec_dir, exist_ok=True)
        await janus(s.path(), {"janus": "message", "body": {
            "request": "create", "room": s.room, "publishers": 1, "videocodec": "h264",
            "audiocodec": "opus", "record": True, "rec_dir": rec_dir, "bitrate": 0}})
        s.stats["recording"] = rec_dir
        await janus(s.path(), {"janus": "message", "body": {
            "request": "joinandconfigure", "ptype": "publisher", "room": s.room,
            "display": s.stream},
            "jsep": {"type": "offer", "sdp": offer}})
        # The offer carries every candidate the publisher has (no trickle in this profile).
        await janus(s.path(), {"janus": "trickle", "candidate": {"completed": True}})
        answer = await s.wait_event(lambda m: "jsep" in m)
    except (JanusError, asyncio.TimeoutError, aiohttp.ClientError, KeyError) as e:
        STATS["post_errors"] += 1
        s.stats["state"] = f"failed: {e!r}"
        log(sid, "POST failed", repr(e))
        await teardown(s)
        return web.Response(status=502, text=f"janus: {e!r}")
    SESSIONS[sid] = s
    s.stats["state"] = "published"
    log(sid, "published", s.stream, "room", s.room)
    return web.Response(status=201, content_type="application/sdp", text=answer["jsep"]["sdp"],
                        headers={"Location": f"/whip/session/{sid}", "ETag": f'"{sid}"'})


async def teardown(s):
    if s.janus_session is not None:
        try:
            await janus(f"/{s.janus_session}", {"janus": "destroy"})
            STATS["destroyed"] += 1
        except Exception as e:
            log(s.sid, "destroy failed", repr(e))
    if s.poller is not None:
        s.poller.cancel()


async def patch_session(req):
    return web.Response(status=405, headers={"Allow": "DELETE"})


async def delete_session(req):
    STATS["deletes"] += 1
    s = SESSIONS.pop(req.match_info["sid"], None)
    if s is None:
        return web.Response(status=404)
    try:
        STATS["unpublish_sent"] += 1
        await janus(s.path(), {"janus": "message", "body": {"request": "unpublish"}})
        await s.wait_event(
            lambda m: m.get("plugindata", {}).get("data", {}).get("unpublished") == "ok")
        STATS["unpublish_ok"] += 1
        s.stats["state"] = "unpublished"
    except (JanusError, asyncio.TimeoutError, aiohttp.ClientError) as e:
        s.stats["state"] = f"unpublish failed: {e!r}"
        log(s.sid, "unpublish failed", repr(e))
    await teardown(s)
    log(s.sid, "deleted")
    return web.Response(status=200)


async def stats(req):
    return web.json_response(STATS)


async def start_http(app):
    global HTTP
    HTTP = aiohttp.ClientSession()
    yield
    await HTTP.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--janus", required=True, help="API base, e.g. http://10.99.0.2:8088/janus")
    p.add_argument("--rec-dir", required=True)
    ARGS = p.parse_args()
    app = web.Application()
    app.cleanup_ctx.append(start_http)
    app.router.add_post("/whip/{stream}", post_offer)
    app.router.add_patch("/whip/session/{sid}", patch_session)
    app.router.add_delete("/whip/session/{sid}", delete_session)
    app.router.add_get("/stats", stats)
    web.run_app(app, host=ARGS.host, port=ARGS.port, print=lambda *a: log(*a))
