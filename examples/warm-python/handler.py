"""A Warren warm handler: one process, many invocations, over stdin/stdout.

Frames are a JSON header line, then `len` raw bytes when the header has a `len`. Each
invocation runs on a thread of its own, so that a `cancel` frame is read while it runs.
"""
import json
import os
import sys
import threading

inp, out = sys.stdin.buffer, sys.stdout.buffer
write_lock = threading.Lock()
running = {}  # invocation id -> an Event set when it is cancelled


class Cancelled(Exception):
    pass


def send(header, body=b""):
    with write_lock:
        out.write(json.dumps(header).encode() + b"\n" + body)
        out.flush()


def handle(data, log, cancelled):
    """The function itself: bytes in, bytes out. `log` writes a log line; `cancelled` is set
    when the invocation is cancelled (long work should look at it)."""
    req = json.loads(data or b"{}")
    if req.get("sleep_ms") and cancelled.wait(req["sleep_ms"] / 1000):
        raise Cancelled("stopped while it slept")
    text = req.get("text", "")
    log(f"counting {len(text)} characters")
    return json.dumps({"words": len(text.split()), "pid": os.getpid()}).encode()


def run(fid, body, cancelled):
    try:
        result = handle(body, lambda text: send({"type": "log", "id": fid, "line": text}), cancelled)
        send({"type": "result", "id": fid, "len": len(result)}, result)
    except Exception as e:  # a failure of this invocation, not of the handler
        send({"type": "error", "id": fid, "message": f"{type(e).__name__}: {e}"})
    finally:
        running.pop(fid, None)


send({"type": "ready", "cancel": True})
while True:
    line = inp.readline()
    if not line:
        break  # stdin closed: the worker wants us to exit (once the running ones answer)
    frame = json.loads(line)
    body = inp.read(frame.get("len", 0))
    if frame["type"] == "cancel":
        cancelled = running.get(frame["id"])  # gone if it has just answered
        if cancelled:
            cancelled.set()
        continue
    running[frame["id"]] = threading.Event()
    threading.Thread(target=run, args=(frame["id"], body, running[frame["id"]])).start()
