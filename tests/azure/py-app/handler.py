"""An Azure Functions custom handler (standard library only), used as a Warren test fixture.

The host sends `POST /{functionName}` with `{"Data": {...}, "Metadata": {...}}` and expects
`{"Outputs": {...}, "Logs": [...], "ReturnValue": ...}` back (forwarding is off in host.json).
"""
import json
import os
import re
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def first(value):
    """Query and header values may come as a string or as a list of strings."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def json_body(req):
    """The request body as JSON: the host sends it as a string, sometimes already parsed."""
    body = req.get("Body")
    if isinstance(body, (dict, list)):
        return body
    if isinstance(body, str) and body.strip():
        try:
            return json.loads(body)
        except ValueError:
            return None
    return None


def hello(data, metadata):
    """HTTP trigger + `res` output: query/body input, status, headers, logs and stdout."""
    req = data.get("req") or {}
    body = json_body(req)
    name = first((req.get("Query") or {}).get("name"))
    if not name and isinstance(body, dict):
        name = body.get("name")
    name = name or "world"
    print("hello handler saw " + name, flush=True)
    res = {
        "statusCode": 201,
        "headers": {"Content-Type": "application/json", "X-Hello": name},
        "body": json.dumps({"greeting": "hello " + name}),
    }
    return {"Outputs": {"res": res}, "Logs": ["greeting " + name]}


def product(data, metadata):
    """Route parameters (`products/{id}`) and an HTTP answer given as `$return`."""
    req = data.get("req") or {}
    pid = (req.get("Params") or {}).get("id") or metadata.get("id")
    return {"Outputs": {}, "ReturnValue": {"statusCode": 200, "body": "product " + str(pid)}}


def secret(data, metadata):
    """authLevel admin: only reached with the admin key."""
    return {"Outputs": {"res": {"statusCode": 200, "body": "admin only"}}}


def tick(data, metadata):
    """Timer trigger: returns the timer object it received, unchanged."""
    timer = data.get("myTimer")
    info = timer
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except ValueError:
            info = {}
    past_due = info.get("IsPastDue") if isinstance(info, dict) else None
    return {"Outputs": {}, "Logs": ["tick, past due: " + json.dumps(past_due)], "ReturnValue": timer}


def relay(data, metadata):
    """RabbitMQ trigger + RabbitMQ output: wraps the message and sends it on."""
    return {
        "Outputs": {"outMsg": json.dumps({"relayed": data.get("inMsg")})},
        "Logs": ["relayed one message"],
    }


def crashy(data, metadata):
    """Crashes the handler process mid-invocation the first time a token is seen, then answers."""
    req = data.get("req") or {}
    body = json_body(req)
    token = str(body.get("token", "")) if isinstance(body, dict) else ""
    token = re.sub(r"[^A-Za-z0-9_.-]", "_", token)  # keep the marker inside the temp dir
    marker = os.path.join(tempfile.gettempdir(), "warren-crashy-" + token)
    if not os.path.exists(marker):
        open(marker, "w").close()
        print("crashing now", file=sys.stderr, flush=True)
        os._exit(3)  # no answer: the connection just drops
    res = {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"pid": os.getpid(), "token": token}),
    }
    return {"Outputs": {"res": res}}


FUNCTIONS = {f.__name__: f for f in (hello, product, secret, tick, relay, crashy)}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer has a Content-Length

    def log_message(self, format, *args):
        pass  # we print our own request lines

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status, body, content_type="application/json"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def dispatch(self):
        print(f"{self.command} {self.path}", file=sys.stderr, flush=True)
        raw = self.read_body()
        name = self.path.split("?", 1)[0].strip("/")
        function = FUNCTIONS.get(name)
        if function is None:
            return self.answer(404, f"no function named {name!r}", "text/plain")
        if self.command != "POST":
            return self.answer(405, "invocations are POSTs", "text/plain")
        try:
            payload = json.loads(raw or b"{}")
            result = function(payload.get("Data") or {}, payload.get("Metadata") or {})
            self.answer(200, json.dumps(result))
        except Exception as e:  # this invocation fails, the handler keeps serving
            self.answer(500, f"{type(e).__name__}: {e}", "text/plain")

    do_POST = do_GET = do_PUT = do_DELETE = do_PATCH = dispatch


if __name__ == "__main__":
    port = int(
        os.environ.get("FUNCTIONS_CUSTOMHANDLER_PORT")
        or os.environ.get("FUNCTIONS_HTTPWORKER_PORT")
        or 8080
    )
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    server.serve_forever()
