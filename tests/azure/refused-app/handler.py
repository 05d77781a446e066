"""Stub custom handler: this app is refused at publish (blob and Cosmos DB bindings are not
supported), so only `ok` is implemented, and only for completeness."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0].strip("/") == "ok":
            status, body = 200, json.dumps({"Outputs": {"res": {"statusCode": 200, "body": "ok"}}})
        else:
            status, body = 404, "unknown function"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())


port = int(os.environ.get("FUNCTIONS_CUSTOMHANDLER_PORT") or os.environ.get("FUNCTIONS_HTTPWORKER_PORT") or 8080)
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
