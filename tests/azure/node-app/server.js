// An Azure Functions custom handler in Node 20 (no dependencies), used as a Warren test fixture.
// host.json turns on enableForwardingHttpRequest, so the HTTP-only functions get the caller's
// ORIGINAL request (`GET /api/echo/a/b?x=1`) and their answer goes back to the caller as is.
// The invocation form (`POST /echo` with `{"Data": ...}`) is answered too, for robustness.
const http = require("http");

const port = Number(
  process.env.FUNCTIONS_CUSTOMHANDLER_PORT || process.env.FUNCTIONS_HTTPWORKER_PORT || 8080
);

const first = (v) => (Array.isArray(v) ? v[0] : v);

// echo: what the request looked like (method, path, query, raw body, the x-test header).
function echo({ method, path, query, body, testHeader }) {
  return {
    status: 200,
    headers: { "X-Echo": "node", "Content-Type": "application/json" },
    body: JSON.stringify({ method, path, query, body, test_header: testHeader ?? null }),
  };
}

// greet: a plain-text answer (authLevel function: the key is checked before we are called).
function greet() {
  return { status: 200, headers: { "Content-Type": "text/plain" }, body: "hi from node" };
}

// Forwarded form: the original request, answered directly.
function forwarded(req, raw) {
  const url = new URL(req.url, "http://localhost");
  const path = url.pathname;
  if (path === "/api/echo" || path.startsWith("/api/echo/")) {
    return echo({
      method: req.method,
      path,
      query: Object.fromEntries(url.searchParams),
      body: raw,
      testHeader: req.headers["x-test"],
    });
  }
  if (path === "/api/greet") return greet();
  return null;
}

// Invocation form: `{"Data": {"req": {...}}}` in, `{"Outputs": {"res": ...}, "Logs": [...]}` out.
function invocation(name, raw) {
  const data = (JSON.parse(raw || "{}").Data || {});
  const r = data.req || {};
  let answer;
  if (name === "echo") {
    const headers = Object.fromEntries(
      Object.entries(r.Headers || {}).map(([k, v]) => [k.toLowerCase(), first(v)])
    );
    const query = Object.fromEntries(
      Object.entries(r.Query || {}).map(([k, v]) => [k, first(v)])
    );
    const body = typeof r.Body === "string" ? r.Body : r.Body == null ? "" : JSON.stringify(r.Body);
    answer = echo({
      method: r.Method,
      path: new URL(r.Url || "/api/echo", "http://localhost").pathname,
      query,
      body,
      testHeader: headers["x-test"],
    });
  } else {
    answer = greet();
  }
  const res = { statusCode: answer.status, headers: answer.headers, body: answer.body };
  return { Outputs: { res }, Logs: [`node ${name} answered ${answer.status}`] };
}

const server = http.createServer((req, res) => {
  console.error(`node: ${req.method} ${req.url}`);
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const raw = Buffer.concat(chunks).toString("utf8");
    let answer;
    try {
      const name = req.url.split("?")[0].replace(/^\/+|\/+$/g, "");
      if (req.method === "POST" && (name === "echo" || name === "greet")) {
        const body = JSON.stringify(invocation(name, raw));
        answer = { status: 200, headers: { "Content-Type": "application/json" }, body };
      } else {
        answer = forwarded(req, raw) || {
          status: 404,
          headers: { "Content-Type": "text/plain" },
          body: `no function at ${req.url}`,
        };
      }
    } catch (e) {
      answer = { status: 500, headers: { "Content-Type": "text/plain" }, body: String(e) };
    }
    res.writeHead(answer.status, {
      ...answer.headers,
      "Content-Length": Buffer.byteLength(answer.body),
    });
    res.end(answer.body);
  });
});
// Outlive the caller's idle keep-alive connections (Node's default is 5 s), so that a pooled
// connection is not closed under a request that is just being sent on it.
server.keepAliveTimeout = 120_000;
server.listen(port, "127.0.0.1", () => console.error(`node: listening on 127.0.0.1:${port}`));
