"""A Warren warm handler: one process, many invocations, over stdin/stdout.

Frames are a JSON header line, then `len` raw bytes when the header has a `len`.
"""
import json
import os
import sys
import time

inp, out = sys.stdin.buffer, sys.stdout.buffer


def send(header, body=b""):
    out.write(json.dumps(header).encode() + b"\n" + body)
    out.flush()


def handle(data, log):
    """The function itself: bytes in, bytes out; `log` writes a log line."""
    req = json.loads(data or b"{}")
    if req.get("sleep_ms"):
        time.sleep(req["sleep_ms"] / 1000)
    text = req.get("text", "")
    log(f"counting {len(text)} characters")
    return json.dumps({"words": len(text.split()), "pid": os.getpid()}).encode()


send({"type": "ready"})
while True:
    line = inp.readline()
    if not line:
        break  # stdin closed: the worker wants us to exit
    frame = json.loads(line)
    body = inp.read(frame.get("len", 0))
    fid = frame["id"]
    try:
        result = handle(body, lambda text: send({"type": "log", "id": fid, "line": text}))
        send({"type": "result", "id": fid, "len": len(result)}, result)
    except Exception as e:  # a failure of this invocation, not of the handler
        send({"type": "error", "id": fid, "message": f"{type(e).__name__}: {e}"})
