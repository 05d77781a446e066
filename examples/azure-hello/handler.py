"""An Azure Functions custom handler, standard library only: runs unchanged on Azure and on Warren.

The host calls `POST /<function name>` with {"Data": {...}, "Metadata": {...}} and reads back
{"Outputs": {...}, "Logs": [...], "ReturnValue": ...}.
"""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def greet(data):
    """HTTP trigger `req` (route greet/{name?}) answered through the `res` output."""
    req = data.get("req") or {}
    query_name = (req.get("Query") or {}).get("name")
    if isinstance(query_name, list):
        query_name = query_name[0] if query_name else None
    name = (req.get("Params") or {}).get("name") or query_name or "world"
    res = {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"message": f"Hello, {name}!"}),
    }
    return {"Outputs": {"res": res}, "Logs": [f"greeted {name}"]}


def nightly(data):
    """Timer trigger `myTimer` (02:00 every day): logs, and returns the timer info."""
    timer = data.get("myTimer")
    return {"Outputs": {}, "Logs": ["nightly job ran"], "ReturnValue": timer}


FUNCTIONS = {"greet": greet, "nightly": nightly}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        function = FUNCTIONS.get(self.path.split("?")[0].strip("/"))
        if function is None:
            status, body, kind = 404, b"unknown function", "text/plain"
        else:
            status, kind = 200, "application/json"
            body = json.dumps(function(payload.get("Data") or {})).encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    env = os.environ
    port = int(env.get("FUNCTIONS_CUSTOMHANDLER_PORT") or env.get("FUNCTIONS_HTTPWORKER_PORT") or 8080)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
