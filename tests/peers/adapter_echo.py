#!/usr/bin/env python3
"""A dockcast adapter for tests: parses the framed stdin format on its own and reports it.

It shares no code with dockcast's Rust decoder: the header is read with struct.unpack from the
layout documented in board/adapters/FRAMING.md, so a test comparing this report with what the
sink was given checks the bytes on the pipe against the documentation, not the decoder against
the encoder.

Usage: adapter_echo.py REPORT_PATH
  - appends its pid and environment (DOCKCAST_*) to REPORT_PATH.pids as one JSON line at start,
  - prints {"event":"publishing"} after the first record,
  - rewrites REPORT_PATH (atomically) after every record with counts, keyframes, pts and a
    checksum of the payloads,
  - prints {"event":"error",...} and exits 1 on a header that breaks the documented format,
  - exits 0 at EOF.
"""

import json
import os
import struct
import sys

HEADER = struct.Struct(">4sBBBBQI")  # magic, version, flags, codec, reserved, pts_us, length
assert HEADER.size == 20


def read_exact(stream, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return bytes(buf)
        buf.extend(chunk)
    return bytes(buf)


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    report_path = sys.argv[1]
    with open(report_path + ".pids", "a") as f:
        env = {k: v for k, v in os.environ.items() if k.startswith("DOCKCAST_")}
        f.write(json.dumps({"pid": os.getpid(), "env": env}) + "\n")
    stdin = sys.stdin.buffer
    report = {
        "pid": os.getpid(),
        "records": 0,
        "keyframes": [],
        "pts_us": [],
        "codecs": [],
        "payload_bytes": 0,
        "checksum": 0,
        "first_nal_types": [],
        "eof_clean": False,
    }
    while True:
        header = read_exact(stdin, HEADER.size)
        if not header:
            report["eof_clean"] = True
            break
        if len(header) < HEADER.size:
            say({"event": "error", "message": "torn header at EOF"})
            break
        magic, version, flags, codec, _reserved, pts_us, length = HEADER.unpack(header)
        if magic != b"DCAU" or version != 1 or codec not in (1, 2):
            say({"event": "error", "message": "bad header %r" % header[:8]})
            write_report(report_path, report)
            sys.exit(1)
        payload = read_exact(stdin, length)
        if len(payload) < length:
            say({"event": "error", "message": "torn payload at EOF"})
            break
        index = report["records"]
        report["records"] += 1
        if flags & 1:
            report["keyframes"].append(index)
        report["pts_us"].append(pts_us)
        report["codecs"].append(codec)
        report["payload_bytes"] += length
        report["checksum"] = (report["checksum"] + sum(payload)) % (1 << 32)
        # Annex-B sanity: the payload starts with a start code and a NAL header.
        if payload[:4] == b"\x00\x00\x00\x01":
            report["first_nal_types"].append(payload[4] & 0x1F)
        elif payload[:3] == b"\x00\x00\x01":
            report["first_nal_types"].append(payload[3] & 0x1F)
        else:
            report["first_nal_types"].append(-1)
        write_report(report_path, report)
        if index == 0:
            say({"event": "publishing"})
            say({"event": "stats", "bitrate_bps": 0})
    write_report(report_path, report)


def write_report(path, report):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
