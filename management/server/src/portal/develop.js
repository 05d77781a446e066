// Developing functions in the portal: a new function from a template (#/new), the editor with
// its file tree and test pane (#/develop/NAME), and any published version read-only
// (#/develop/NAME/VERSION). Everything goes through the same API as the rest of the portal:
// a package is read by GET .../versions/N/package and unpacked here (tar.gz), and saved by
// packing the files again and publishing them as a draft (POST /api/functions?activate=false),
// which becomes active only when published (POST .../activate). Unsaved edits live in the
// browser's localStorage until they are saved, so a reload or a crash loses nothing.
'use strict';

(() => {
  const P = window.WarrenPortal;
  const { h, api, ApiError, banner, enc, update, badge } = P;
  const MANIFEST = 'function.toml';
  const draftKey = (name) => `warren.draft.${name}`;
  const inputKey = (name) => `warren.testInput.${name}`;

  // ---- packages: tar.gz in the browser ------------------------------------------------------

  async function through(bytes, stream) {
    return new Uint8Array(await new Response(new Blob([bytes]).stream().pipeThrough(stream)).arrayBuffer());
  }
  const gunzip = (b) => through(b, new DecompressionStream('gzip'));
  const gzip = (b) => through(b, new CompressionStream('gzip'));
  const utf8 = new TextEncoder();

  /** The regular files of a tar archive: [[path, bytes]] (GNU long names and pax paths too). */
  function untar(buf) {
    const out = [];
    const str = (a, b) => new TextDecoder().decode(buf.subarray(a, b)).replace(/\0.*$/s, '');
    let off = 0;
    let longName = null;
    while (off + 512 <= buf.length) {
      if (buf.subarray(off, off + 512).every((x) => x === 0)) break;
      const size = parseInt(str(off + 124, off + 136).trim() || '0', 8);
      const type = String.fromCharCode(buf[off + 156] || 48);
      const prefix = str(off + 345, off + 500);
      let name = longName || (prefix ? `${prefix}/${str(off, off + 100)}` : str(off, off + 100));
      longName = null;
      const data = buf.subarray(off + 512, off + 512 + size);
      off += 512 + Math.ceil(size / 512) * 512;
      if (type === 'L') { longName = new TextDecoder().decode(data).replace(/\0.*$/s, ''); continue; }
      if (type === 'x') {
        const m = /\d+ path=([^\n]*)\n/.exec(new TextDecoder().decode(data));
        if (m) longName = m[1];
        continue;
      }
      if (type !== '0' && type !== '\0' && type !== '7') continue; // folders, links: not files
      name = name.replace(/^(\.\/)+/, '');
      if (name) out.push([name, data.slice()]);
    }
    return out;
  }

  /** A ustar archive of [[path, bytes]]. */
  function tar(files) {
    const blocks = [];
    for (const [path, data] of files) {
      const head = new Uint8Array(512);
      const put = (s, at, len) => head.set(utf8.encode(s).subarray(0, len), at);
      let name = path;
      let prefix = '';
      if (utf8.encode(name).length > 100) {
        const cut = path.lastIndexOf('/', path.length - 1);
        prefix = path.slice(0, cut);
        name = path.slice(cut + 1);
      }
      const octal = (n, len) => `${n.toString(8).padStart(len - 1, '0')}\0`;
      put(name, 0, 100);
      put(octal(/\.(sh|py|js)$/.test(path) ? 0o755 : 0o644, 8), 100, 8);
      put(octal(0, 8), 108, 8);
      put(octal(0, 8), 116, 8);
      put(octal(data.length, 12), 124, 12);
      put(octal(Math.floor(Date.now() / 1000), 12), 136, 12);
      put('        ', 148, 8);
      head[156] = 48; // '0': a regular file
      put('ustar\0', 257, 6);
      put('00', 263, 2);
      put(prefix, 345, 155);
      const sum = head.reduce((a, b) => a + b, 0);
      put(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8);
      blocks.push(head, data, new Uint8Array((512 - (data.length % 512)) % 512));
    }
    blocks.push(new Uint8Array(1024));
    const all = new Uint8Array(blocks.reduce((n, b) => n + b.length, 0));
    let at = 0;
    for (const b of blocks) { all.set(b, at); at += b.length; }
    return all;
  }

  /** A version's package as bytes (the API key sent as for every request). */
  async function fetchPackage(name, version) {
    const key = sessionStorage.getItem('warren.apiKey');
    const r = await fetch(`/api/functions/${enc(name)}/versions/${version}/package`, {
      headers: key ? { Authorization: `Bearer ${key}` } : {}, cache: 'no-store',
    });
    if (!r.ok) {
      let message = `${r.status} ${r.statusText}`;
      try { message = (await r.json()).error.message; } catch (_) { /* keep the status */ }
      throw new ApiError(r.status, 'http', message);
    }
    return new Uint8Array(await r.arrayBuffer());
  }

  /** Files of a package: {path: text} for text files, {path: {binary: base64}} for others. */
  async function unpack(bytes) {
    if (bytes[0] === 0x50 && bytes[1] === 0x4b) throw new Error('this version is a .zip package (an Azure Functions app published as a zip): download it to read it');
    const files = {};
    for (const [path, data] of untar(await gunzip(bytes))) {
      try {
        files[path] = new TextDecoder('utf-8', { fatal: true }).decode(data);
      } catch (_) {
        let s = '';
        for (const x of data) s += String.fromCharCode(x);
        files[path] = { binary: btoa(s) };
      }
    }
    return files;
  }

  async function pack(files) {
    const list = Object.keys(files).sort().map((p) => {
      const f = files[p];
      if (typeof f === 'string') return [p, utf8.encode(f)];
      return [p, Uint8Array.from(atob(f.binary), (c) => c.charCodeAt(0))];
    });
    return gzip(tar(list));
  }

  function saveBlob(bytes, filename) {
    const url = URL.createObjectURL(new Blob([bytes], { type: 'application/gzip' }));
    const a = h('a', { href: url, download: filename });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // ---- templates -----------------------------------------------------------------------------

  const toml = (s) => JSON.stringify(s);
  const PY_HTTP = `# Invoked through the API (POST /api/functions/NAME/invoke): the input arrives on stdin,
# whatever is printed on stdout is the result, and each line on stderr is a log line.
import json
import sys

data = json.loads(sys.stdin.read() or "{}")
name = data.get("name", "world")
print(f"greeting {name}", file=sys.stderr)
print(json.dumps({"message": f"Hello, {name}!"}))
`;
  const NODE_HTTP = `// Invoked through the API (POST /api/functions/NAME/invoke): the input arrives on stdin,
// whatever is written to stdout is the result, and each line on stderr is a log line.
let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const data = JSON.parse(input || '{}');
  const name = data.name || 'world';
  console.error(\`greeting \${name}\`);
  process.stdout.write(JSON.stringify({ message: \`Hello, \${name}!\` }));
});
`;
  const SH_HTTP = `#!/bin/sh
# Invoked through the API: the input arrives on stdin, stdout is the result, stderr lines are logs.
input=$(cat)
echo "received \${#input} bytes" >&2
printf '{"received": %s}' "\${input:-null}"
`;
  const PY_TIMER = `# Runs on its schedule. The input is the tick:
# {"tick": "2026-01-01T02:00:00Z", "tick_ms": ..., "schedule": "...", "catch_up": false}
import json
import sys

tick = json.load(sys.stdin)
print(f"tick {tick['tick']}", file=sys.stderr)
print(json.dumps({"ran_at": tick["tick"]}))
`;
  const NODE_TIMER = `// Runs on its schedule. The input is the tick:
// {"tick": "2026-01-01T02:00:00Z", "tick_ms": ..., "schedule": "...", "catch_up": false}
let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const tick = JSON.parse(input);
  console.error(\`tick \${tick.tick}\`);
  process.stdout.write(JSON.stringify({ ran_at: tick.tick }));
});
`;
  const SH_TIMER = `#!/bin/sh
# Runs on its schedule; the input (stdin) is the tick as JSON.
tick=$(cat)
echo "tick $tick" >&2
echo '{"ok": true}'
`;
  const PY_SOURCE = `# Each message on the source queue is one invocation: its body is the input, its AMQP
# headers are in WARREN_HEADERS (a JSON object).
import json
import os
import sys

headers = json.loads(os.environ.get("WARREN_HEADERS", "{}"))
body = sys.stdin.read()
print(f"message of {len(body)} bytes, headers {sorted(headers)}", file=sys.stderr)
print(json.dumps({"length": len(body)}))
`;
  const NODE_SOURCE = `// Each message on the source queue is one invocation: its body is the input, its AMQP
// headers are in WARREN_HEADERS (a JSON object).
const headers = JSON.parse(process.env.WARREN_HEADERS || '{}');
let body = '';
process.stdin.on('data', (chunk) => { body += chunk; });
process.stdin.on('end', () => {
  console.error(\`message of \${body.length} bytes, headers \${Object.keys(headers).sort()}\`);
  process.stdout.write(JSON.stringify({ length: body.length }));
});
`;
  const PY_ITEM = `# One item of a batch (warren batch submit ITEMS.ndjson --function NAME --then FOLLOW_UP):
# the item is the input; the result is kept for the follow-up.
import json
import sys

item = json.load(sys.stdin)
print(f"item {item}", file=sys.stderr)
print(json.dumps({"item": item, "done": True}))
`;
  const PY_FOLLOW = `# The batch's follow-up: invoked once every item is final, with
# {"batch", "total", "counts", "results": [{"id", "status", "result", "error"}]}
# ("results_url" instead of "results" when they are too many to inline).
import json
import sys

batch = json.load(sys.stdin)
print(f"batch {batch['batch']}: {batch['counts']}", file=sys.stderr)
print(json.dumps({"batch": batch["batch"], "counts": batch["counts"]}))
`;
  const NODE_ITEM = `// One item of a batch (warren batch submit ITEMS.ndjson --function NAME --then FOLLOW_UP):
// the item is the input; the result is kept for the follow-up.
let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const item = JSON.parse(input);
  console.error(\`item \${input}\`);
  process.stdout.write(JSON.stringify({ item, done: true }));
});
`;
  const NODE_FOLLOW = `// The batch's follow-up: invoked once every item is final, with
// {"batch", "total", "counts", "results": [{"id", "status", "result", "error"}]}.
let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const batch = JSON.parse(input);
  console.error(\`batch \${batch.batch}: \${JSON.stringify(batch.counts)}\`);
  process.stdout.write(JSON.stringify({ batch: batch.batch, counts: batch.counts }));
});
`;
  const AZ_HANDLER = `"""An Azure Functions custom handler (standard library only): it runs unchanged on Azure and
on Warren. The host calls POST /<function> with {"Data": {...}, "Metadata": {...}} and reads
back {"Outputs": {...}, "Logs": [...], "ReturnValue": ...}."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def respond(data):
    req = data.get("req") or {}
    query = req.get("Query") or {}
    name = query.get("name") or "world"
    if isinstance(name, list):
        name = name[0] if name else "world"
    res = {"statusCode": 200, "headers": {"Content-Type": "application/json"},
           "body": json.dumps({"message": f"Hello, {name}!"})}
    return {"Outputs": {"res": res}, "Logs": [f"greeted {name}"]}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}"
        out = json.dumps(respond(json.loads(body).get("Data") or {})).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


port = int(os.environ.get("FUNCTIONS_CUSTOMHANDLER_PORT", "8080"))
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
`;

  const head = (f, command, description, extra = '') => `name = ${toml(f.name)}
runtime = "process"
command = ${JSON.stringify(command).replace(/","/g, '", "')}
timeout_secs = 30
pool = ${toml(f.pool)}
description = ${toml(description)}
${extra}`;
  const LANGS = {
    python: { label: 'Python', file: 'main.py', command: ['python3', 'main.py'] },
    node: { label: 'Node.js', file: 'main.js', command: ['node', 'main.js'] },
    shell: { label: 'Shell', file: 'main.sh', command: ['sh', 'main.sh'] },
  };
  /** Each: what starts it, its languages, the fields its form asks, and its files. */
  const TEMPLATES = [
    {
      id: 'http', title: 'HTTP-invoked', about: 'Runs for each POST to /api/functions/NAME/invoke (or warren invoke).',
      langs: { python: PY_HTTP, node: NODE_HTTP, shell: SH_HTTP }, fields: [],
      files: (f, code, lang) => ({ [MANIFEST]: head(f, LANGS[lang].command, 'Answers {"name": ...} with a greeting.'), [LANGS[lang].file]: code }),
    },
    {
      id: 'timer', title: 'Timer', about: 'Runs on a cron schedule (six fields with seconds, UTC).',
      langs: { python: PY_TIMER, node: NODE_TIMER, shell: SH_TIMER },
      fields: [{ key: 'schedule', label: 'Schedule', value: '0 */5 * * * *', hint: 'sec min hour day month weekday' }],
      files: (f, code, lang) => ({
        [MANIFEST]: head(f, LANGS[lang].command, 'Runs on a schedule.', `\n[timer]\nschedule = ${toml(f.schedule)}\n`),
        [LANGS[lang].file]: code,
      }),
    },
    {
      id: 'source', title: 'AMQP source', about: 'Runs for each message on a RabbitMQ queue (declared if missing).',
      langs: { python: PY_SOURCE, node: NODE_SOURCE },
      fields: [{ key: 'queue', label: 'Queue', value: 'orders', hint: 'the queue it consumes' }],
      files: (f, code, lang) => ({
        [MANIFEST]: head(f, LANGS[lang].command, `Handles each message of ${f.queue}.`, `\n[source]\nqueue = ${toml(f.queue)}\nprefetch = 16\n`),
        [LANGS[lang].file]: code,
      }),
    },
    {
      id: 'batch', title: 'Batch item with a follow-up', about: 'Runs once per item of a batch; the follow-up runs once when every item is final.',
      langs: { python: PY_ITEM, node: NODE_ITEM },
      fields: [{ key: 'then', label: 'Follow-up function', value: '', hint: 'created beside it; NAME-report when empty' }],
      files: (f, code, lang) => ({
        [MANIFEST]: head(f, LANGS[lang].command, `One item of a batch; --then ${f.then} sums them up.`, '\n[retry]\nmax_attempts = 3\n'),
        [LANGS[lang].file]: code,
      }),
      companion: (f, lang) => ({
        name: f.then,
        files: {
          [MANIFEST]: head({ ...f, name: f.then }, LANGS[lang].command, `The follow-up of ${f.name}'s batches.`),
          [LANGS[lang].file]: lang === 'python' ? PY_FOLLOW : NODE_FOLLOW,
        },
      }),
    },
    {
      id: 'azure', title: 'Azure Functions custom handler', about: 'An Azure Functions app (host.json, one HTTP function) that runs unchanged on Azure; on Warren at /api/NAME.',
      langs: { python: AZ_HANDLER }, fields: [], app: true,
      files: (f, code) => ({
        'host.json': `${JSON.stringify({
          version: '2.0',
          customHandler: { description: { defaultExecutablePath: 'python3', arguments: ['handler.py'] }, enableForwardingHttpRequest: false },
        }, null, 2)}\n`,
        [`${f.name}/function.json`]: `${JSON.stringify({
          bindings: [
            { authLevel: 'function', type: 'httpTrigger', direction: 'in', name: 'req', methods: ['get', 'post'] },
            { type: 'http', direction: 'out', name: 'res' },
          ],
        }, null, 2)}\n`,
        'handler.py': code,
      }),
    },
  ];

  // ---- where a refusal points ------------------------------------------------------------------

  /** The line (and column) of `text` a publish refusal `message` is about, if it can tell. */
  function locate(message, text) {
    const at = /at line (\d+), column (\d+)/.exec(message);
    if (at) return { line: Number(at[1]), column: Number(at[2]) };
    const lines = text.split('\n');
    const keyLine = (pred) => { const i = lines.findIndex(pred); return i < 0 ? null : { line: i + 1, column: 1 }; };
    // A check of a value: the key it names (`timeout_secs = 0 must be ...`, `timer: ...`).
    if (/^[^:]*timer:/.test(message) || /schedule/.test(message)) {
      const l = keyLine((s) => /^\s*schedule\s*=/.test(s));
      if (l) return l;
    }
    const keys = lines.map((s, i) => [(/^\s*([A-Za-z_][\w-]*)\s*=/.exec(s) || [])[1], i]).filter(([k]) => k);
    let best = null;
    for (const [k, i] of keys) {
      if (new RegExp(`\\b${k}\\b`).test(message) && (!best || k.length > best[0].length)) best = [k, i];
    }
    return best ? { line: best[1] + 1, column: 1 } : null;
  }

  // ---- drafts ------------------------------------------------------------------------------------

  const loadDraft = (name) => { try { return JSON.parse(localStorage.getItem(draftKey(name)) || 'null'); } catch (_) { return null; } };
  const storeDraft = (d) => {
    try {
      localStorage.setItem(draftKey(d.name), JSON.stringify(d));
      return true;
    } catch (e) {
      banner(`Unsaved changes cannot be kept in this browser (${e.message}); save them before leaving.`);
      return false;
    }
  };
  const dropDraft = (name) => localStorage.removeItem(draftKey(name));
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  const manifestName = (text) => (/^\s*name\s*=\s*"([^"]*)"/m.exec(text || '') || [])[1];
  const poolOf = (manifest) => (/^\s*pool\s*=\s*"([^"]*)"/m.exec(manifest || '') || [])[1];

  async function publish(files, { activate, pool }) {
    const q = new URLSearchParams({ activate: String(activate) });
    if (pool) q.set('pool', pool);
    const body = await pack(files);
    return (await api(`/api/functions?${q}`, { method: 'POST', body, headers: { 'Content-Type': 'application/gzip' } })).body;
  }
  /** The version a publish answer gives for `name` (one function, or one of an app's). */
  const versionOf = (answer, name) => ((answer.functions || [answer]).find((v) => v.name === name) || {}).version;

  // ---- #/new: a function from a template --------------------------------------------------------

  function newPage(root) {
    let tpl = TEMPLATES[0];
    let lang = 'python';
    const values = { name: '', pool: 'default' };
    const preview = h('pre', { id: 'manifest-preview', class: 'manifest' });
    const out = h('div', { id: 'new-out' });
    const picks = h('div', { class: 'templates' });
    const fieldsBox = h('div', { class: 'fields' });
    const langBox = h('div', { class: 'row', id: 'template-lang' });
    const form = h('form', { class: 'card', id: 'new-form' });

    const filled = () => {
      const f = { ...values };
      if (tpl.id === 'batch') f.then = values.then || `${values.name || 'NAME'}-report`;
      for (const fd of tpl.fields) if (f[fd.key] == null || f[fd.key] === '') f[fd.key] = fd.key === 'then' ? f.then : fd.value;
      if (!f.name) f.name = 'NAME';
      return f;
    };
    const draw = () => {
      for (const b of picks.querySelectorAll('button')) b.classList.toggle('on', b.dataset.template === tpl.id);
      if (!tpl.langs[lang]) lang = Object.keys(tpl.langs)[0];
      langBox.replaceChildren(h('span', { class: 'muted' }, 'Language: '), ...Object.keys(tpl.langs).map((l) => h('label', { class: 'radio' },
        h('input', { type: 'radio', name: 'lang', value: l, checked: l === lang, onchange: () => { lang = l; showPreview(); } }), ` ${LANGS[l].label} `)));
      fieldsBox.replaceChildren(
        h('label', null, 'Name ', h('input', { id: 'new-name', required: true, pattern: '[A-Za-z0-9_\\-]{1,64}', value: values.name, placeholder: 'my-function',
          oninput: (ev) => { values.name = ev.target.value.trim(); showPreview(); } })),
        h('label', null, tpl.app ? 'Worker pool (the app\'s) ' : 'Worker pool ', h('input', { id: 'new-pool', required: true, value: values.pool,
          oninput: (ev) => { values.pool = ev.target.value.trim(); showPreview(); } })),
        ...tpl.fields.map((fd) => h('label', null, `${fd.label} `, h('input', { id: `new-${fd.key}`, value: values[fd.key] ?? fd.value, placeholder: fd.hint,
          oninput: (ev) => { values[fd.key] = ev.target.value.trim(); showPreview(); } }), h('span', { class: 'muted small' }, ` ${fd.hint}`))));
      showPreview();
    };
    const showPreview = () => {
      const f = filled();
      const files = tpl.files(f, tpl.langs[lang], lang);
      const shown = tpl.app ? [['host.json', files['host.json']], [`${f.name}/function.json`, files[`${f.name}/function.json`]]] : [[MANIFEST, files[MANIFEST]]];
      const companion = tpl.companion ? tpl.companion(f, lang) : null;
      if (companion) shown.push([`${companion.name}/${MANIFEST} (the follow-up, created beside it)`, companion.files[MANIFEST]]);
      preview.replaceChildren(...shown.map(([p, t]) => h('div', null, h('div', { class: 'muted small' }, p), t)));
    };
    picks.append(...TEMPLATES.map((t) => h('button', { type: 'button', class: 'template ghost', 'data-template': t.id,
      onclick: () => { tpl = t; draw(); } }, h('b', null, t.title), h('span', { class: 'muted small' }, t.about))));

    const create = h('button', { type: 'submit', id: 'new-create' }, 'Create');
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const f = filled();
      if (!/^[A-Za-z0-9_-]{1,64}$/.test(values.name)) { out.replaceChildren(h('div', { class: 'error' }, 'Give a name: 1-64 letters, digits, - or _.')); return; }
      create.disabled = true;
      out.replaceChildren(h('p', { class: 'muted' }, `Creating ${f.name}…`));
      try {
        for (const n of [f.name, tpl.companion ? f.then : null].filter(Boolean)) {
          const exists = await api(`/api/functions/${enc(n)}`).then(() => true, (e) => (e.status === 404 ? false : Promise.reject(e)));
          if (exists) throw new Error(`a function ${n} exists already: open it from Functions, or choose another name`);
        }
        const companion = tpl.companion ? tpl.companion(f, lang) : null;
        if (companion) await publish(companion.files, { activate: true });
        const answer = await publish(tpl.files(f, tpl.langs[lang], lang), { activate: true, pool: tpl.app ? f.pool : null });
        P.setFlash(`${f.name} is created (version ${versionOf(answer, f.name)}, active)${companion ? `, with its follow-up ${companion.name}` : ''}. Edit it here, try it in the test pane, publish when it does what it should.`);
        location.hash = `#/develop/${enc(f.name)}`;
      } catch (e) {
        const where = locate(e.message, preview.textContent);
        out.replaceChildren(h('div', { class: 'error' }, e.message, where ? ` (manifest line ${where.line})` : ''));
      } finally {
        create.disabled = false;
      }
    });
    form.append(h('h2', null, 'Template'),
      h('p', { class: 'muted' }, 'Choose what starts it and its language; it is created as its first version, then opens in the editor.'),
      picks, langBox, fieldsBox, h('h3', null, 'Manifest'), preview, h('div', { class: 'row' }, create), out);
    root.append(h('div', { class: 'crumbs' }, h('a', { href: '#/functions' }, 'Functions'), ' / new'), h('h1', null, 'New function'), form);
    draw();
    return { async refresh() {} };
  }

  // ---- #/develop/NAME[/VERSION]: the editor -------------------------------------------------------

  function developPage(root, name, pinned) {
    const readOnly = pinned != null;
    const treeBox = h('ul', { class: 'tree', id: 'file-tree' });
    const editorBox = h('div', { class: 'editor', id: 'editor' });
    const status = h('span', { id: 'draft-status', class: 'muted' }, 'Loading…');
    const problems = h('div', { id: 'problems', role: 'alert' });
    const input = h('textarea', { id: 'test-input', spellcheck: 'false', 'aria-label': 'test input' }, localStorage.getItem(inputKey(name)) || '{"name": "Ada"}');
    input.addEventListener('input', () => localStorage.setItem(inputKey(name), input.value));
    const testOut = h('div', { id: 'test-out' });
    const btn = (id, text, onclick, cls = '') => h('button', { type: 'button', id, class: cls, onclick }, text);

    let d = null; // the draft: {name, base, saved, pool, app, files, open}
    let savedFiles = null; // the files of the version the draft was last saved as (or based on)
    let active = null;
    let ed = null;
    let running = 0;

    const dirty = () => !readOnly && d && !same(d.files, savedFiles);
    const paths = () => Object.keys(d.files).sort((a, b) => (a === MANIFEST ? -1 : b === MANIFEST ? 1 : a.localeCompare(b)));
    const describe = () => {
      if (!d) return;
      const v = d.saved ?? d.base;
      const parts = readOnly ? [`Version ${pinned} (read-only)`] : [
        dirty() ? `Unsaved changes (kept in this browser) on version ${v}` : `Version ${v}`,
        v === active ? ' · active' : ` · not active (v${active} is)`,
      ];
      status.textContent = parts.join('');
      status.classList.toggle('dirty', dirty());
    };
    const persist = () => {
      if (readOnly || !d) return;
      if (dirty()) storeDraft(d);
      else dropDraft(name);
      describe();
    };
    const onChange = (path, text) => {
      if (!d || readOnly) return;
      d.files[path] = text;
      persist();
    };
    const open = (path) => {
      d.open = path;
      const f = d.files[path];
      if (typeof f !== 'string') {
        ed.open(path, `(a binary file of ${atob(f.binary).length} bytes: kept in the package as it is)`, { readOnly: true });
      } else {
        ed.open(path, f, { readOnly });
      }
      drawTree();
    };
    const drawTree = () => {
      treeBox.replaceChildren(...paths().map((p) => h('li', { class: p === d.open ? 'on' : '', 'data-path': p },
        h('a', { href: location.hash, onclick: (ev) => { ev.preventDefault(); open(p); } }, p))));
    };

    const addFile = () => {
      const p = (prompt('New file (a path inside the package, such as lib/util.py):') || '').trim().replace(/^\/+/, '');
      if (!p) return;
      if (p.split('/').some((s) => s === '..' || s === '')) { banner(`${p} is not a path inside the package.`); return; }
      if (d.files[p] != null) { banner(`${p} exists already.`); return; }
      d.files[p] = '';
      persist();
      open(p);
    };
    const renameFile = () => {
      const from = d.open;
      const to = (prompt(`Rename ${from} to:`, from) || '').trim().replace(/^\/+/, '');
      if (!to || to === from) return;
      if (to.split('/').some((s) => s === '..' || s === '')) { banner(`${to} is not a path inside the package.`); return; }
      if (d.files[to] != null) { banner(`${to} exists already.`); return; }
      d.files[to] = d.files[from];
      delete d.files[from];
      ed.forget(from);
      persist();
      open(to);
    };
    const deleteFile = () => {
      const p = d.open;
      if (p === MANIFEST || (d.app && p === 'host.json')) { banner(`${p} cannot be deleted: the package needs it.`); return; }
      if (!confirm(`Delete ${p} from the draft? (Published versions keep it.)`)) return;
      delete d.files[p];
      ed.forget(p);
      persist();
      open(paths()[0]);
    };

    /** Saves the draft as a new version (not active): answers its number, or null if refused. */
    const save = async () => {
      problems.replaceChildren();
      ed.clearErrors();
      const manifestPath = d.app ? null : MANIFEST;
      if (manifestPath) {
        const n = manifestName(d.files[manifestPath]);
        if (n !== name) {
          const line = d.files[manifestPath].split('\n').findIndex((s) => /^\s*name\s*=/.test(s)) + 1;
          return refused(manifestPath, { line: Math.max(line, 1), column: 1 },
            `name = ${JSON.stringify(n ?? '')} must stay "${name}": this page edits ${name} (a new function starts from New function)`);
        }
      }
      try {
        const answer = await publish(d.files, { activate: false, pool: d.app ? d.pool : null });
        const v = versionOf(answer, name);
        if (v == null) throw new Error(`the package no longer holds ${name}; its functions are ${(answer.functions || [answer]).map((x) => x.name).join(', ')}`);
        d.saved = v;
        savedFiles = JSON.parse(JSON.stringify(d.files));
        persist();
        return v;
      } catch (e) {
        if (!(e instanceof ApiError) || e.status !== 400) { problems.replaceChildren(h('div', { class: 'error' }, e.message)); return null; }
        const path = manifestPath && d.files[manifestPath] != null ? manifestPath : d.open;
        return refused(path, locate(e.message, d.files[path] || ''), e.message);
      }
    };
    const refused = (path, where, message) => {
      if (d.open !== path) open(path);
      if (where) ed.showError(where.line, where.column, message);
      problems.replaceChildren(h('div', { class: 'error', id: 'save-error' }, h('b', null, where ? `${path}, line ${where.line}: ` : `${path}: `), message));
      describe();
      return null;
    };
    const saveClick = async () => {
      const v = await save();
      if (v != null) banner(`Saved as version ${v}${v === active ? ' (active: the function\'s first version)' : `; callers still get version ${active} until it is published`}.`, 'info');
    };
    const publishClick = async () => {
      const v = dirty() ? await save() : (d.saved ?? d.base);
      if (v == null) return;
      if (v === active) { banner(`Version ${v} is the active one already.`, 'info'); return; }
      if (!confirm(`Publish version ${v} of ${name}? Invokes from now on run it; its triggers follow.`)) return;
      try {
        await api(`/api/functions/${enc(name)}/activate`, { method: 'POST', body: JSON.stringify({ version: v }), headers: { 'Content-Type': 'application/json' } });
        active = v;
        banner(`Version ${v} of ${name} is published: it is the active version.`, 'info');
      } catch (e) {
        banner(e.message);
      }
      describe();
    };
    const discardClick = async () => {
      if (!confirm('Discard the unsaved changes and go back to the last saved version?')) return;
      dropDraft(name);
      await load(d.saved ?? d.base, null);
    };
    const downloadClick = async () => {
      try {
        const v = readOnly ? pinned : (d.saved ?? d.base);
        saveBlob(await fetchPackage(name, v), `${name}-v${v}.tar.gz`);
      } catch (e) {
        banner(e.message);
      }
    };
    const testClick = async () => {
      const token = ++running;
      testOut.replaceChildren(h('p', { class: 'muted' }, 'Starting…'));
      delete testOut.dataset.sig;
      try {
        const v = readOnly ? pinned : dirty() ? await save() : (d.saved ?? d.base);
        if (v == null) { testOut.replaceChildren(h('p', { class: 'error' }, 'Not run: the draft was refused (see above).')); return; }
        const r = await api(`/api/functions/${enc(name)}/invoke?mode=async&version=${v}`, {
          method: 'POST', body: input.value, headers: { 'Content-Type': 'application/octet-stream' },
        });
        const id = r.body.id;
        // Read it until it is final: log lines show as the worker stores them.
        for (;;) {
          const inv = (await api(`/api/invocations/${enc(id)}`)).body;
          if (token !== running || !testOut.isConnected) return;
          update(testOut, inv, (x) => h('div', null,
            h('p', { class: 'test-head' }, `Version ${v} · `, badge(x.status), ' ', P.idLink(x.id), x.version === active ? '' : h('span', { class: 'muted' }, ' (a draft: callers are not affected)')),
            P.invocationDetail(x)));
          if (!['queued', 'running'].includes(inv.status)) break;
          await new Promise((res) => setTimeout(res, 400));
        }
      } catch (e) {
        if (token === running) testOut.replaceChildren(h('div', { class: 'error' }, e.message));
      }
    };
    input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); testClick(); }
    });

    const load = async (version, restored) => {
      const files = await unpack(await fetchPackage(name, version));
      savedFiles = files;
      const fn = (await api(`/api/functions/${enc(name)}`)).body;
      active = fn.function.active_version;
      const manifest = (fn.versions.find((x) => x.version === version) || {}).manifest;
      const app = files['host.json'] != null && files[MANIFEST] == null;
      d = restored || { name, base: version, saved: null, pool: app ? poolOf(manifest) : null, app, files: JSON.parse(JSON.stringify(files)), open: null };
      if (restored && restored.saved == null && restored.base !== version) d.base = version;
      if (!d.files[d.open]) d.open = d.files[MANIFEST] != null ? MANIFEST : paths().find((p) => /\.(py|js|sh)$/.test(p)) || paths()[0];
      for (const p of Object.keys(files)) ed.forget(p);
      for (const p of Object.keys(d.files)) ed.forget(p);
      open(d.open);
      describe();
    };

    const toolbar = readOnly
      ? h('div', { class: 'row' }, h('a', { class: 'button ghost', href: `#/develop/${enc(name)}` }, 'Edit the current code'), btn('download-package', 'Download package', downloadClick, 'ghost'))
      : h('div', { class: 'row' },
        btn('save-draft', 'Save draft', saveClick), btn('publish-draft', 'Publish', publishClick, 'primary'),
        btn('discard-draft', 'Discard changes', discardClick, 'ghost'), btn('download-package', 'Download package', downloadClick, 'ghost'));
    const fileButtons = readOnly ? null : h('div', { class: 'row small-buttons' },
      btn('file-add', 'Add', addFile, 'small ghost'), btn('file-rename', 'Rename', renameFile, 'small ghost'), btn('file-delete', 'Delete', deleteFile, 'small ghost'));
    root.append(
      h('div', { class: 'crumbs' }, h('a', { href: '#/functions' }, 'Functions'), ' / ', h('a', { href: `#/functions/${enc(name)}` }, name), ' / ', readOnly ? `version ${pinned}` : 'develop'),
      h('div', { class: 'spread' }, h('h1', null, name, ' ', status), toolbar),
      problems,
      h('div', { class: 'develop' },
        h('div', { class: 'card files' }, h('h2', null, 'Files'), treeBox, fileButtons),
        h('div', { class: 'card code' }, editorBox),
        h('div', { class: 'card test' }, h('h2', null, readOnly ? `Test version ${pinned}` : 'Test the draft'),
          h('p', { class: 'muted small' }, readOnly ? 'Runs this version; callers keep the active one.' : 'Saves unsaved changes as a draft version and runs it; callers keep the active version. Ctrl+Enter runs.'),
          input, h('div', { class: 'row' }, btn('test-run', 'Run', testClick)), testOut)));

    ed = window.WarrenEditor.create(editorBox, { onChange });
    const stored = readOnly ? null : loadDraft(name);
    (async () => {
      try {
        const fn = (await api(`/api/functions/${enc(name)}`)).body;
        const base = readOnly ? pinned : stored ? (stored.saved ?? stored.base) : fn.function.active_version;
        await load(base, stored);
        if (stored && dirty()) banner(`Your unsaved changes to ${name} (kept in this browser) are back. Save them, or discard them.`, 'info');
      } catch (e) {
        status.textContent = '';
        problems.replaceChildren(h('div', { class: 'error' }, `Cannot open ${name}${readOnly ? ` version ${pinned}` : ''}: ${e.message}`));
      }
    })();
    P.guard(() => !dirty() || confirm('Leave the editor? Your unsaved changes stay in this browser and come back when you open it again; they are not saved as a version.'));
    return {
      async refresh() {},
      dirty,
      leave() { persist(); ed.destroy(); },
    };
  }

  // Closing or reloading the tab with unsaved changes asks first (they would come back from
  // localStorage, but the browser's question is the warning users expect).
  window.addEventListener('beforeunload', (ev) => {
    const v = P.currentView();
    if (v && v.dirty && v.dirty()) { ev.preventDefault(); ev.returnValue = ''; }
  });

  P.register({
    new: (root) => newPage(root),
    develop: (root, parts) => developPage(root, parts[1], parts[2] != null ? Number(parts[2]) : null),
  });
})();
