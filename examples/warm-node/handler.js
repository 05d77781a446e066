// A Warren warm handler: one process, many invocations, over stdin/stdout.
// Frames are a JSON header line, then `len` raw bytes when the header has a `len`.
'use strict';

const send = (header, body = Buffer.alloc(0)) =>
  process.stdout.write(Buffer.concat([Buffer.from(JSON.stringify(header) + '\n'), body]));

// The function itself: bytes in, bytes out (a promise). `log` writes a log line; `signal`
// aborts when the invocation is cancelled (long work should listen to it).
async function handle(data, log, signal) {
  const req = data.length ? JSON.parse(data.toString('utf8')) : {};
  if (req.sleep_ms) {
    await new Promise((resolve, reject) => {
      const stop = () => { clearTimeout(timer); reject(new Error('stopped while it slept')); };
      const timer = setTimeout(resolve, req.sleep_ms);
      if (signal.aborted) stop();
      else signal.addEventListener('abort', stop, { once: true });
    });
  }
  const text = req.text || '';
  log(`counting ${text.length} characters`);
  const words = text.split(/\s+/).filter(Boolean).length;
  return Buffer.from(JSON.stringify({ words, pid: process.pid }));
}

const running = new Map(); // invocation id -> AbortController
let buf = Buffer.alloc(0);
let pending = null; // a header waiting for its body

function pump() {
  for (;;) {
    if (!pending) {
      const nl = buf.indexOf(10);
      if (nl < 0) return;
      pending = JSON.parse(buf.subarray(0, nl).toString('utf8'));
      buf = buf.subarray(nl + 1);
    }
    const len = pending.len || 0;
    if (buf.length < len) return;
    const frame = pending;
    const body = buf.subarray(0, len);
    buf = buf.subarray(len);
    pending = null;
    if (frame.type === 'cancel') {
      const c = running.get(frame.id);
      if (c) c.abort();
      continue;
    }
    // Several invocations may be in flight (handler.concurrency); answers carry their id.
    const controller = new AbortController();
    running.set(frame.id, controller);
    handle(body, (line) => send({ type: 'log', id: frame.id, line }), controller.signal)
      .then((result) => send({ type: 'result', id: frame.id, len: result.length }, result))
      .catch((e) => send({ type: 'error', id: frame.id, message: String(e && e.message || e) }))
      .finally(() => running.delete(frame.id));
  }
}

process.stdin.on('data', (chunk) => { buf = Buffer.concat([buf, chunk]); pump(); });
process.stdin.on('end', () => process.exit(0));
send({ type: 'ready', cancel: true });
