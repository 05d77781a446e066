// Warren portal: a single page over the JSON API. Plain JavaScript, no build step, no framework.
// Views are chosen by the location hash (#/functions/hello, #/invocations?status=failed, ...);
// the current view's live parts are refreshed by polling while the tab is visible. Everything
// the API returns is inserted as text (never as markup).
'use strict';

(() => {
  const KEY = 'warren.apiKey';
  const POLL_MS = 1500;
  const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'timed_out', 'dead', 'cancelled'];
  const COLORS = {
    queued: '#8a9bb0', running: '#2f7fd1', succeeded: '#2e9b5b', failed: '#d64545',
    timed_out: '#e08a1e', dead: '#7a1f4f', cancelled: '#a3a3a3', scheduled: '#6b5fb5',
  };
  const SVG = 'http://www.w3.org/2000/svg';

  // ---- DOM ---------------------------------------------------------------------------------

  const $ = (sel, root = document) => root.querySelector(sel);

  /** Builds an element: h('a', {href: '#/x', class: 'c', onclick: f}, 'text', child, [more]). */
  function h(tag, attrs, ...kids) {
    const svg = tag.startsWith('svg:');
    const el = svg ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'value' || k === 'checked') el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid == null || kid === false) continue;
      el.append(kid instanceof Node ? kid : String(kid));
    }
    return el;
  }

  /** Re-renders `box` with `render(data)` only when `data` changed (keeps selections and focus). */
  function update(box, data, render) {
    const sig = JSON.stringify(data);
    if (box.dataset.sig === sig) return;
    box.dataset.sig = sig;
    box.replaceChildren(...[render(data)].flat(Infinity).filter((x) => x != null));
  }

  const pad = (n, w = 2) => String(n).padStart(w, '0');
  function fmtTime(ms) {
    if (ms == null) return '—';
    const d = new Date(ms);
    const t = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    if (new Date().toDateString() === d.toDateString()) return t;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${t}`;
  }
  function hhmm(ms) {
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }
  function dur(ms) {
    if (ms == null) return '—';
    if (ms < 1000) return `${ms} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
    const m = Math.floor(ms / 60000);
    if (m < 60) return `${m} min ${Math.round((ms % 60000) / 1000)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }
  const bytes = (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`);
  const shortId = (id) => (id ? `…${String(id).slice(-8)}` : '—');
  const enc = encodeURIComponent;
  const pretty = (v) => (typeof v === 'string' ? v : JSON.stringify(v, null, 2));
  const color = (status) => COLORS[status] || '#8895a3';
  const badge = (s, extra) => h('span', { class: `badge s-${s} ${extra || ''}`.trim() }, String(s).replace('_', ' '));
  const idLink = (id) => h('a', { href: `#/invocations/${enc(id)}`, class: 'mono', title: id }, shortId(id));
  const empty = (cols, text) => h('tr', null, h('td', { colspan: cols, class: 'empty' }, text));

  function table(head, rows) {
    return h('table', null,
      h('thead', null, h('tr', null, head.map((c) => (c.startsWith('#') ? h('th', { class: 'num' }, c.slice(1)) : h('th', null, c))))),
      h('tbody', null, rows));
  }

  // ---- API and sign-in ---------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** fetch with the API key; answers {status, body}; throws ApiError for any non-2xx answer. */
  async function api(path, opts = {}) {
    const headers = new Headers(opts.headers || {});
    const key = sessionStorage.getItem(KEY);
    if (key) headers.set('Authorization', `Bearer ${key}`);
    let r;
    try {
      r = await fetch(path, { ...opts, headers, cache: 'no-store' });
    } catch (e) {
      throw new ApiError(0, 'unreachable', `Cannot reach Warren's management (${e.message}); retrying.`);
    }
    const text = await r.text();
    let body = text;
    try { body = text ? JSON.parse(text) : null; } catch (_) { /* not JSON: keep the text */ }
    if (r.ok) return { status: r.status, body };
    const err = body && body.error;
    const message = (err && err.message) || `${r.status} ${r.statusText}`;
    if (r.status === 401 || r.status === 403) signIn.show(message);
    throw new ApiError(r.status, (err && err.code) || 'http', message);
  }

  const signIn = {
    show(why) {
      $('#signin-why').textContent = why || 'Give an API key. It is kept in this tab only (session storage) and sent with every request.';
      $('#signin').hidden = false;
      $('#signin-key').focus();
    },
    hide() { $('#signin').hidden = true; },
    get open() { return !$('#signin').hidden; },
    sync() {
      const has = !!sessionStorage.getItem(KEY);
      $('#signin-open').hidden = has;
      $('#signout').hidden = !has;
    },
  };

  // ---- banner ------------------------------------------------------------------------------

  let bannerFromPoll = false;
  function banner(text, kind, fromPoll = false) {
    const b = $('#banner');
    if (!text) { b.hidden = true; return; }
    b.className = `banner ${kind || ''}`;
    b.textContent = text;
    b.hidden = false;
    bannerFromPoll = fromPoll;
  }

  // ---- polling and routing -----------------------------------------------------------------

  let current = null; // {refresh, every}
  let busy = false;
  let lastRun = 0;

  async function tick(force = false) {
    const v = current;
    if (!v || busy || signIn.open || (document.hidden && !force)) return;
    if (!force && Date.now() - lastRun < (v.every || POLL_MS) - 50) return;
    busy = true;
    lastRun = Date.now();
    try {
      await v.refresh();
      if (v === current) {
        $('#live').classList.remove('stale');
        if (bannerFromPoll) banner(null);
      }
    } catch (e) {
      if (v === current) {
        $('#live').classList.add('stale');
        banner(e.message, '', true);
        if (!(e instanceof ApiError)) console.error(e);
      }
    } finally {
      busy = false;
    }
  }

  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, '');
    const i = raw.indexOf('?');
    const path = i < 0 ? raw : raw.slice(0, i);
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    return { parts, query: new URLSearchParams(i < 0 ? '' : raw.slice(i + 1)) };
  }

  /** A message for the next page shown (after an action that leaves its page). */
  let flash = null;

  /** Views other scripts add (develop.js): name → (root, parts, query) → view. */
  const added = {};
  /** The current view's question before it is left (unsaved changes), if it has one. */
  let guard = null;
  let shownHash = null;

  function route() {
    if (guard && location.hash !== shownHash) {
      if (!guard()) {
        // Stay: put the address back without showing the page again.
        history.replaceState(null, '', shownHash || '#/overview');
        return;
      }
    }
    guard = null;
    if (current && current.leave) current.leave();
    shownHash = location.hash;
    const { parts, query } = parseHash();
    const name = parts[0] || 'overview';
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('on', a.dataset.view === name);
    const root = $('#view');
    root.replaceChildren();
    banner(flash, 'info');
    flash = null;
    const make = {
      overview: () => overview(root),
      functions: () => (parts[1] ? functionPage(root, parts[1]) : functionsPage(root)),
      invocations: () => (parts[1] ? invocationPage(root, parts[1]) : invocationsPage(root, query)),
      batches: () => (parts[1] ? batchPage(root, parts[1]) : batchesPage(root)),
      workers: () => workersPage(root),
      dead: () => deadPage(root),
      ...Object.fromEntries(Object.entries(added).map(([k, make]) => [k, () => make(root, parts, query)])),
    }[name];
    if (!make) {
      root.append(h('div', { class: 'card' }, 'No such page. ', h('a', { href: '#/overview' }, 'Go to the overview.')));
      current = null;
      return;
    }
    document.title = `Warren · ${name[0].toUpperCase()}${name.slice(1)}`;
    current = make();
    busy = false;
    tick(true);
  }

  // What develop.js (loaded after this file) uses of the page.
  window.WarrenPortal = {
    h, api, ApiError, banner, update, badge, enc, idLink,
    invocationDetail: (inv) => invocationDetail(inv),
    setFlash: (text) => { flash = text; },
    guard: (fn) => { guard = fn; },
    register: (views) => Object.assign(added, views),
    currentView: () => current,
  };

  // ---- invocation detail (the invocation page and the invoke result) ------------------------

  function invocationDetail(inv) {
    const final = !['queued', 'running', 'scheduled'].includes(inv.status);
    // Queue wait of the first attempt (started_ms is the newest attempt's start).
    const wait = inv.started_ms != null && inv.attempts <= 1 ? inv.started_ms - inv.created_ms : null;
    const result = inv.result_base64 != null
      ? h('pre', { class: 'inv-result' }, `(binary, base64) ${inv.result_base64}`)
      : inv.result != null ? h('pre', { class: 'inv-result' }, pretty(inv.result))
        : h('p', { class: 'muted inv-result' }, final ? 'No result.' : 'No result yet.');
    const logs = inv.logs || [];
    const attempts = inv.attempt_history || [];
    return h('div', { class: 'inv-detail', 'data-status': inv.status },
      h('div', { class: 'spread' },
        h('div', { class: 'row' }, h('span', { class: 'inv-status' }, badge(inv.status)),
          h('a', { href: `#/functions/${enc(inv.function)}` }, inv.function), h('span', { class: 'muted' }, `version ${inv.version}`)),
        h('a', { href: `#/invocations/${enc(inv.id)}`, class: 'mono muted' }, inv.id)),
      inv.error ? h('div', { class: 'error inv-error' }, inv.error) : null,
      h('div', { class: 'grid cols-2' },
        h('div', null,
          h('h3', null, 'Result'), result,
          h('h3', null, 'Input'),
          inv.input_base64 != null ? h('pre', null, `(binary, base64) ${inv.input_base64}`) : h('pre', null, pretty(inv.input ?? ''))),
        h('div', null,
          h('h3', null, 'Timings'),
          h('dl', { class: 'kv' },
            h('dt', null, 'created'), h('dd', null, fmtTime(inv.created_ms)),
            inv.run_at_ms != null ? [h('dt', null, 'runs at'), h('dd', { class: 'run-at' }, fmtTime(inv.run_at_ms))] : null,
            h('dt', null, 'started'), h('dd', null, fmtTime(inv.started_ms), wait != null ? h('span', { class: 'muted' }, ` (waited ${dur(wait)})`) : null),
            h('dt', null, 'finished'), h('dd', null, fmtTime(inv.finished_ms)),
            h('dt', null, 'duration'), h('dd', null, dur(inv.duration_ms)),
            h('dt', null, 'worker'), h('dd', { class: 'mono' }, inv.worker || '—'),
            h('dt', null, 'attempts'), h('dd', null, String(inv.attempts))),
          h('h3', null, 'Attempts'),
          attempts.length
            ? table(['#', 'status', 'worker', 'finished', 'error'], attempts.map((a) => h('tr', null,
              h('td', null, String(a.attempt)), h('td', null, badge(a.status)), h('td', { class: 'mono' }, a.worker),
              h('td', null, fmtTime(a.finished_ms)), h('td', null, a.error || ''))))
            : h('p', { class: 'muted' }, final ? 'No attempt record.' : 'None ended yet.'))),
      h('h3', null, `Log lines (${logs.length})`),
      logs.length
        ? h('pre', { class: 'logs inv-logs' }, logs.map((l) => [
          h('span', { class: 'ts' }, fmtTime(l.ts_ms)), ' ',
          attempts.length > 1 || l.attempt > 1 ? h('span', { class: 'at' }, `#${l.attempt} `) : null,
          l.line, '\n']))
        : h('p', { class: 'muted inv-logs' }, 'No log lines.'));
  }

  // ---- overview ----------------------------------------------------------------------------

  function overview(root) {
    let minutes = Number(sessionStorage.getItem('warren.minutes')) || 60;
    const cards = h('div', { class: 'grid cols-4' });
    const chart = h('div', { class: 'chart-box' });
    const ranges = h('div', { class: 'pill-list' });
    const queues = h('div');
    const drawRanges = () => ranges.replaceChildren(...[[15, '15 min'], [60, '1 h'], [360, '6 h'], [1440, '24 h']].map(([m, label]) =>
      h('button', {
        type: 'button', class: `pill ${m === minutes ? 'on' : ''}`,
        onclick: () => { minutes = m; sessionStorage.setItem('warren.minutes', m); drawRanges(); tick(true); },
      }, label)));
    drawRanges();
    root.append(h('h1', null, 'Overview'), cards,
      h('div', { class: 'card chart' }, h('div', { class: 'spread' }, h('h2', null, 'Invocations per minute, by status'), ranges), chart),
      h('div', { class: 'card' }, h('h2', null, 'Queues'), queues));
    return {
      every: 2000,
      async refresh() {
        const s = (await api(`/api/stats?minutes=${minutes}`)).body;
        const by = {};
        let total = 0;
        for (const p of s.per_minute) { by[p.status] = (by[p.status] || 0) + p.count; total += p.count; }
        const failed = (by.failed || 0) + (by.timed_out || 0) + (by.dead || 0);
        const ready = s.queues.reduce((a, q) => a + (q.ready || 0), 0);
        const stat = (n, label, cls) => h('div', { class: 'card stat' }, h('div', { class: `n ${cls || ''}` }, String(n)), h('div', { class: 'l' }, label));
        update(cards, [s.workers_online, total, by.succeeded || 0, failed, ready], () => [
          stat(s.workers_online, 'workers online'),
          stat(total, `invocations, last ${minutes >= 60 ? `${minutes / 60} h` : `${minutes} min`}`),
          stat(by.succeeded || 0, 'succeeded', 'ok'),
          stat(failed, 'failed, timed out or dead', failed ? 'error-n' : ''),
        ]);
        const width = Math.max(320, chart.clientWidth || 900);
        update(chart, [s.per_minute, s.since_ms, width, hhmm(s.now_ms)], () => drawChart(s, minutes, width));
        update(queues, s.queues, () => table(['pool', '#ready', '#consumers', ''], s.queues.length
          ? s.queues.map((q) => h('tr', null, h('td', null, q.pool), h('td', { class: 'num' }, q.ready ?? '—'),
            h('td', { class: 'num' }, q.consumers ?? '—'), h('td', { class: 'muted' }, q.error || '')))
          : empty(4, 'No pools yet.')));
      },
    };
  }

  /** A stacked bar chart (SVG) of counts per minute and status; at most 120 bars. */
  function drawChart(s, minutes, W) {
    const H = 220; const L = 36; const B = 22; const T = 8; const R = 8;
    const per = Math.max(1, Math.ceil(minutes / 120));
    const n = Math.ceil(minutes / per);
    const buckets = Array.from({ length: n }, () => ({}));
    const seen = new Set();
    for (const p of s.per_minute) {
      const i = Math.floor((p.minute_ms - s.since_ms) / 60000 / per);
      if (i < 0 || i >= n) continue;
      buckets[i][p.status] = (buckets[i][p.status] || 0) + p.count;
      seen.add(p.status);
    }
    const order = [...STATUSES.filter((x) => seen.has(x)), ...[...seen].filter((x) => !STATUSES.includes(x)).sort()];
    const max = Math.max(1, ...buckets.map((b) => Object.values(b).reduce((a, c) => a + c, 0)));
    const step = niceStep(max / 4);
    const top = Math.ceil(max / step) * step;
    const pw = W - L - R; const ph = H - T - B;
    const bw = pw / n;
    const y = (v) => T + ph - (v / top) * ph;
    const svg = h('svg:svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'invocations per minute by status' });
    for (let v = 0; v <= top; v += step) {
      svg.append(h('svg:line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid-line' }));
      svg.append(h('svg:text', { x: L - 6, y: y(v) + 3, 'text-anchor': 'end', class: 'axis' }, String(v)));
    }
    const labelEvery = Math.max(1, Math.round(n / Math.max(2, Math.floor(pw / 70))));
    buckets.forEach((b, i) => {
      const x = L + i * bw;
      const start = s.since_ms + i * per * 60000;
      let acc = 0;
      for (const st of order) {
        const c = b[st];
        if (!c) continue;
        const rect = h('svg:rect', { x: x + bw * 0.12, width: Math.max(1, bw * 0.76), y: y(acc + c), height: Math.max(0.5, y(acc) - y(acc + c)), fill: color(st) },
          h('svg:title', null, `${hhmm(start)}${per > 1 ? `–${hhmm(start + per * 60000)}` : ''}  ${st}: ${c}`));
        svg.append(rect);
        acc += c;
      }
      if (i % labelEvery === 0) svg.append(h('svg:text', { x: x + bw / 2, y: H - 6, 'text-anchor': 'middle', class: 'axis' }, hhmm(start)));
    });
    const legend = h('div', { class: 'legend' }, (order.length ? order : ['succeeded', 'failed']).map((st) =>
      h('span', null, h('i', { style: `background:${color(st)}` }), st.replace('_', ' '))),
    per > 1 ? h('span', null, `(${per} min per bar)`) : null);
    return [svg, legend, seen.size ? null : h('p', { class: 'muted empty' }, 'No invocations in this period.')];
  }

  function niceStep(raw) {
    const p = 10 ** Math.floor(Math.log10(Math.max(raw, 1)));
    for (const m of [1, 2, 5, 10]) if (m * p >= raw) return Math.max(1, m * p);
    return 10 * p;
  }

  // ---- functions ---------------------------------------------------------------------------

  function functionsPage(root) {
    const list = h('div');
    const file = h('input', { type: 'file', id: 'publish-file', accept: '.tar.gz,.tgz,.zip,application/gzip,application/zip' });
    const out = h('div', { id: 'publish-out' });
    const btn = h('button', { type: 'submit', id: 'publish-btn' }, 'Publish');
    const form = h('form', { class: 'card', onsubmit: async (ev) => {
      ev.preventDefault();
      const f = file.files[0];
      if (!f) { out.replaceChildren(h('div', { class: 'error' }, 'Choose a package file first.')); return; }
      btn.disabled = true;
      out.replaceChildren(h('p', { class: 'muted' }, `Publishing ${f.name} (${bytes(f.size)})…`));
      try {
        const v = (await api('/api/functions', { method: 'POST', body: f, headers: { 'Content-Type': 'application/octet-stream' } })).body;
        // One function, or each function of an Azure Functions app; notes (such as an app's
        // local.settings.json left out) beside.
        const published = v.functions || [v];
        out.replaceChildren(...published.map((p) => h('p', { class: 'ok published' }, 'Published ',
          h('a', { href: `#/functions/${enc(p.name)}` }, p.name), ` version ${p.version}`,
          h('span', { class: 'muted mono' }, ` sha256 ${String(p.sha256).slice(0, 16)}…`))),
        ...(v.notes || []).map((n) => h('p', { class: 'muted note' }, n)));
        file.value = '';
        tick(true);
      } catch (e) {
        out.replaceChildren(h('div', { class: 'error' }, e.message));
      } finally {
        btn.disabled = false;
      }
    } },
    h('h2', null, 'Publish a package'),
    h('p', { class: 'muted' }, 'A .tar.gz or .zip of a function folder, function.toml at its root (', h('code', null, 'warren publish DIR'),
      ' packs one), or of an Azure Functions app, host.json at its root. It becomes the new active version of each function it holds.'),
    h('div', { class: 'row' }, file, btn), out);
    const retention = h('div', { id: 'retention-card' });
    root.append(h('div', { class: 'spread' }, h('h1', null, 'Functions'),
      h('a', { class: 'button', id: 'new-function', href: '#/new' }, 'New function')), form, h('div', { class: 'card' }, list),
      h('div', { class: 'card' }, h('h2', null, 'Retention'), retention));
    const kept = (n) => (n ? String(n) : 'all');
    const retentionView = (r) => {
      const last = r.cleanup.last;
      return h('div', null,
        h('p', { class: 'muted' }, `Finished work is kept for a time, then removed by a cleanup every ${r.cleanup.every_secs} s `,
          '(one management instance at a time, in chunks). Defaults: succeeded ', h('b', null, r.defaults.succeeded), ', failed, timed out, dead and cancelled ',
          h('b', null, r.defaults.failed), ', ', h('b', null, kept(r.defaults.versions)), ' newest versions. A function\'s ',
          h('code', null, '[retention]'), ' in function.toml sets its own.'),
        last ? h('p', { id: 'last-cleanup' }, `Last cleanup ${fmtTime(last.finished_ms)} by ${r.cleanup.holder}, ${last.finished_ms - last.started_ms} ms: removed `,
          `${last.invocations} invocations (${last.log_lines} log lines), ${last.batches} batches, ${last.versions} versions, ${last.ticks} ticks.`,
          last.error ? h('span', { class: 'error' }, ` Stopped early: ${last.error}`) : '')
          : h('p', { class: 'muted' }, 'No cleanup has run yet.'),
        table(['function', 'succeeded', 'failed', '#versions kept'], r.functions.length
          ? r.functions.map((f) => h('tr', null, h('td', null, h('a', { href: `#/functions/${enc(f.name)}` }, f.name)),
            h('td', null, f.retention.succeeded), h('td', null, f.retention.failed), h('td', { class: 'num' }, kept(f.retention.versions))))
          : empty(4, 'No functions.')));
    };
    return {
      async refresh() {
        const [fns, ret] = await Promise.all([api('/api/functions').then((r) => r.body), api('/api/retention').then((r) => r.body)]);
        update(retention, ret, retentionView);
        update(list, fns, () => table(['name', '#active version', 'trigger', 'first published', 'last published'], fns.length
          ? fns.map((f) => h('tr', null, h('td', null, h('a', { href: `#/functions/${enc(f.name)}` }, f.name)),
            h('td', { class: 'num' }, `v${f.active_version}`), h('td', { class: 'mono trigger' }, f.trigger || '',
              f.paused_ms != null ? h('span', null, ' ', badge('paused', 'paused')) : null),
            h('td', null, fmtTime(f.created_ms)), h('td', null, fmtTime(f.updated_ms))))
          : empty(5, 'Nothing published yet: publish a package above.')));
      },
    };
  }

  function functionPage(root, name) {
    const info = h('div');
    const versions = h('div');
    const manifest = h('pre', { id: 'manifest' }, '…');
    const recent = h('div');
    const payload = h('textarea', { id: 'payload', spellcheck: 'false', 'aria-label': 'input' }, '{}');
    payload.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); btn.click(); }
    });
    const out = h('div', { id: 'invoke-out' });
    const btn = h('button', { type: 'submit', id: 'invoke-btn' }, 'Invoke');
    let shown = null; // the version whose manifest is shown
    let data = null;
    let following = 0;

    const showManifest = () => {
      const v = data && data.versions.find((x) => x.version === shown);
      manifest.textContent = v ? v.manifest : '';
    };
    const follow = async (id, token) => {
      // A sync invoke that outlived its wait (202): read the invocation until it is final.
      for (;;) {
        const inv = (await api(`/api/invocations/${enc(id)}`)).body;
        if (token !== following || !out.isConnected) return;
        update(out, inv, invocationDetail);
        if (!['queued', 'running'].includes(inv.status)) return;
        await new Promise((r) => setTimeout(r, 1000));
      }
    };
    const form = h('form', { class: 'card', onsubmit: async (ev) => {
      ev.preventDefault();
      const token = ++following;
      btn.disabled = true;
      delete out.dataset.sig;
      out.replaceChildren(h('p', { class: 'muted' }, 'Invoking…'));
      try {
        const r = await api(`/api/functions/${enc(name)}/invoke?mode=sync`, {
          method: 'POST', body: payload.value, headers: { 'Content-Type': 'application/octet-stream' },
        });
        if (r.status === 200) update(out, r.body, invocationDetail);
        else await follow(r.body.id, token);
        tick(true);
      } catch (e) {
        out.replaceChildren(h('div', { class: 'error' }, e.message));
      } finally {
        btn.disabled = false;
      }
    } },
    h('h2', null, 'Invoke'),
    h('p', { class: 'muted' }, 'The input is sent as it is (JSON or any text); the page waits for the result. Ctrl+Enter invokes.'),
    payload, h('div', { class: 'row', style: 'margin-top:8px' }, btn), out);

    const activate = async (version) => {
      if (!confirm(`Make version ${version} of ${name} the active one? Invokes from now on run it; its triggers follow.`)) return;
      try {
        await api(`/api/functions/${enc(name)}/activate`, { method: 'POST', body: JSON.stringify({ version }), headers: { 'Content-Type': 'application/json' } });
        banner(`Version ${version} of ${name} is active.`, 'info');
      } catch (e) {
        banner(e.message);
      }
      tick(true);
    };
    const pauseOrResume = async () => {
      const paused = data && data.function.paused_ms != null;
      if (!paused && !confirm(`Pause ${name}? Its invocations are still accepted, but none starts until it resumes; its timer does not fire and its source does not consume. Running ones finish.`)) return;
      try {
        await api(`/api/functions/${enc(name)}/${paused ? 'resume' : 'pause'}`, { method: 'POST', body: '{}', headers: { 'Content-Type': 'application/json' } });
        banner(paused ? `${name} is resumed: what it held starts now.` : `${name} is paused.`, 'info');
      } catch (e) {
        banner(e.message);
      }
      tick(true);
    };
    const pauseBtn = h('button', { type: 'button', class: 'ghost', id: 'pause-function', onclick: pauseOrResume }, 'Pause');
    const remove = async () => {
      if (!confirm(`Delete ${name} with all its versions and settings? Its finished invocations stay. This cannot be undone.`)) return;
      try {
        await api(`/api/functions/${enc(name)}`, { method: 'DELETE' });
        flash = `${name} is deleted.`;
        location.hash = '#/functions';
      } catch (e) {
        banner(e.message);
      }
    };

    root.append(
      h('div', { class: 'crumbs' }, h('a', { href: '#/functions' }, 'Functions'), ' / ', name),
      h('div', { class: 'spread' }, h('h1', null, name),
        h('div', { class: 'row' }, h('a', { class: 'button', id: 'develop-function', href: `#/develop/${enc(name)}` }, 'Edit code'), pauseBtn,
          h('button', { type: 'button', class: 'danger', id: 'delete-function', onclick: remove }, 'Delete function'))),
      info, form,
      h('div', { class: 'grid cols-2' },
        h('div', { class: 'card' }, h('h2', null, 'Versions'), versions),
        h('div', { class: 'card' }, h('h2', null, 'Manifest'), manifest)),
      h('div', { class: 'card' }, h('div', { class: 'spread' }, h('h2', null, 'Recent invocations'),
        h('a', { href: `#/invocations?function=${enc(name)}` }, 'all of them →')), recent));

    return {
      async refresh() {
        const [f, inv] = await Promise.all([
          api(`/api/functions/${enc(name)}`),
          api(`/api/invocations?function=${enc(name)}&limit=10`),
        ]);
        data = f.body;
        const active = data.function.active_version;
        if (shown == null || !data.versions.some((v) => v.version === shown)) shown = active;
        const drawVersions = () => update(versions, [data.versions.map((v) => v.version), active, shown], () =>
          table(['version', 'sha256', '#size', 'published', ''], data.versions.map((v) => h('tr', {
            class: v.version === shown ? 'sel' : '',
          },
          h('td', null, h('a', { href: `#/functions/${enc(name)}`, onclick: (ev) => { ev.preventDefault(); shown = v.version; showManifest(); drawVersions(); } },
            `v${v.version}`), ' ', v.version === active ? badge('active', 'active') : null, v.version === shown ? h('span', { class: 'muted' }, ' ◂') : null),
          h('td', { class: 'mono', title: v.sha256 }, `${v.sha256.slice(0, 12)}…`),
          h('td', { class: 'num' }, bytes(v.size)), h('td', null, fmtTime(v.created_ms)),
          h('td', null, h('a', { href: `#/develop/${enc(name)}/${v.version}`, class: 'small', 'data-open': String(v.version) }, 'Code'), ' ',
            v.version === active ? '' : h('button', { type: 'button', class: 'small ghost', 'data-activate': String(v.version),
              onclick: () => activate(v.version) }, 'Activate'))))));
        drawVersions();
        showManifest();
        const desc = (/^description\s*=\s*"(.*)"\s*$/m.exec((data.versions.find((v) => v.version === active) || {}).manifest || '') || [])[1];
        const limit = (/^\s*max_concurrency\s*=\s*(\d+)/m.exec((data.versions.find((v) => v.version === active) || {}).manifest || '') || [])[1];
        const paused = data.function.paused_ms != null;
        pauseBtn.textContent = paused ? 'Resume' : 'Pause';
        const r = data.retention;
        update(info, [active, desc, limit, data.function.updated_ms, data.trigger, r, data.function.paused_ms, data.function.resume_at_ms], () => h('div', null,
          paused ? h('p', { id: 'paused-note' }, badge('paused', 'paused'), ` Paused since ${fmtTime(data.function.paused_ms)}`,
            data.function.resume_at_ms ? `, resumes by itself at ${fmtTime(data.function.resume_at_ms)}` : ', until resumed',
            ': its invocations are accepted and wait; none starts.') : null,
          h('p', { class: 'muted' },
          `Active version ${active}, published ${fmtTime(data.function.updated_ms)}.`, desc ? ` ${desc.replace(/\\"/g, '"')}` : '',
          data.trigger ? h('span', null, ' Trigger: ', h('code', { class: 'trigger' }, data.trigger), '.') : '',
          limit ? h('span', { id: 'max-concurrency' }, ` At most ${limit} run at once (max_concurrency).`) : ''),
          r ? h('p', { class: 'muted', id: 'retention' }, `Keeps succeeded invocations ${r.succeeded}, failed ones ${r.failed}, `,
            r.versions ? `the newest ${r.versions} versions` : 'every version', ' (', h('a', { href: '#/functions' }, 'retention'), ').') : null));
        update(recent, inv.body, invocationRows);
      },
    };
  }

  // ---- invocations -------------------------------------------------------------------------

  function invocationRows(list) {
    return table(['id', 'function', 'status', '#attempts', 'worker', 'created', '#duration'], list.length
      ? list.map((i) => h('tr', null, h('td', null, idLink(i.id)),
        h('td', null, h('a', { href: `#/functions/${enc(i.function)}` }, i.function), h('span', { class: 'muted' }, ` v${i.version}`)),
        h('td', null, badge(i.status)), h('td', { class: 'num' }, String(i.attempts)), h('td', { class: 'mono' }, i.worker || '—'),
        h('td', null, fmtTime(i.created_ms)), h('td', { class: 'num' }, dur(i.duration_ms))))
      : empty(7, 'No invocations.'));
  }

  const SINCE = [['', 'any time'], ['300', 'last 5 min'], ['3600', 'last hour'], ['86400', 'last 24 h'], ['604800', 'last 7 days']];

  function invocationsPage(root, query) {
    const state = { function: query.get('function') || '', status: query.get('status') || '', since: query.get('since') || '' };
    const fnSel = h('select', { id: 'filter-function' }, h('option', { value: '' }, 'all functions'));
    if (state.function) fnSel.append(h('option', { value: state.function }, state.function));
    fnSel.value = state.function;
    const stSel = h('select', { id: 'filter-status' }, h('option', { value: '' }, 'any status'), STATUSES.map((s) => h('option', { value: s }, s.replace('_', ' '))));
    stSel.value = state.status;
    const sinceSel = h('select', { id: 'filter-since' }, SINCE.map(([v, l]) => h('option', { value: v }, l)));
    sinceSel.value = state.since;
    const list = h('div');
    const count = h('span', { class: 'muted' });
    const changed = () => {
      state.function = fnSel.value; state.status = stSel.value; state.since = sinceSel.value;
      const q = new URLSearchParams(Object.entries(state).filter(([, v]) => v));
      history.replaceState(null, '', `#/invocations${q.toString() ? `?${q}` : ''}`);
      delete list.dataset.sig;
      tick(true);
    };
    for (const s of [fnSel, stSel, sinceSel]) s.addEventListener('change', changed);
    root.append(h('h1', null, 'Invocations'),
      h('div', { class: 'filters' }, h('label', null, 'Function', fnSel), h('label', null, 'Status', stSel), h('label', null, 'Created', sinceSel), count),
      h('div', { class: 'card' }, list));
    return {
      async refresh() {
        const q = new URLSearchParams({ limit: '200' });
        if (state.function) q.set('function', state.function);
        if (state.status) q.set('status', state.status);
        const since = state.since ? Date.now() - Number(state.since) * 1000 : null;
        const [fns, inv] = await Promise.all([api('/api/functions'), api(`/api/invocations?${q}`)]);
        const names = fns.body.map((f) => f.name);
        if (state.function && !names.includes(state.function)) names.push(state.function);
        update(fnSel, names, () => [h('option', { value: '' }, 'all functions'), names.map((n) => h('option', { value: n }, n))]);
        fnSel.value = state.function;
        // The list is the newest first: keeping those created since the cut is exactly what a
        // server-side filter with the same limit would give.
        const rows = since ? inv.body.filter((i) => i.created_ms >= since) : inv.body;
        const more = inv.body.length >= 200 && (since == null || inv.body[inv.body.length - 1].created_ms >= since);
        count.textContent = `${rows.length}${more ? '+' : ''} shown, newest first`;
        update(list, rows, invocationRows);
      },
    };
  }

  function invocationPage(root, id) {
    const box = h('div', { class: 'card' }, h('p', { class: 'muted' }, 'Loading…'));
    const cancel = h('button', { type: 'button', class: 'danger', id: 'cancel-invocation', hidden: true, onclick: async () => {
      if (!confirm('Cancel this invocation? A queued one never runs; a running process is stopped (a warm handler finishes its call). It is recorded cancelled.')) return;
      try {
        await api(`/api/invocations/${enc(id)}/cancel`, { method: 'POST' });
        banner('The invocation is cancelled.', 'info');
      } catch (e) {
        banner(e.message);
      }
      tick(true);
    } }, 'Cancel invocation');
    root.append(h('div', { class: 'crumbs' }, h('a', { href: '#/invocations' }, 'Invocations'), ' / ', h('span', { class: 'mono' }, id)),
      h('div', { class: 'spread' }, h('h1', null, 'Invocation'), cancel), box);
    return {
      async refresh() {
        const inv = (await api(`/api/invocations/${enc(id)}`)).body;
        cancel.hidden = !['queued', 'running', 'scheduled'].includes(inv.status);
        update(box, inv, invocationDetail);
      },
    };
  }

  // ---- batches -----------------------------------------------------------------------------

  function progress(b) {
    const total = Math.max(1, b.total || 0);
    const counts = b.counts || {};
    // Ended first (left), then running; queued is the empty rest of the bar.
    const ended = [...STATUSES, ...Object.keys(counts).filter((s) => !STATUSES.includes(s))].filter((s) => s !== 'queued' && s !== 'running');
    const order = [...ended, 'running'];
    return h('div', { class: 'bar', title: Object.entries(counts).map(([k, v]) => `${k}: ${v}`).join(', ') },
      order.filter((s) => counts[s]).map((s) => h('span', { style: `width:${(100 * counts[s]) / total}%;background:${color(s)}` })));
  }
  const doneOf = (b) => {
    const c = b.counts || {};
    return Math.max(0, (b.total || 0) - (c.queued || 0) - (c.running || 0));
  };

  /** The batch API may not exist on this management: a 404 means "no batches here", not an error. */
  async function batchesOrNone(path) {
    try {
      return (await api(path)).body;
    } catch (e) {
      if (e instanceof ApiError && e.status === 404 && e.code === 'not_found' && /endpoint/.test(e.message)) return undefined;
      if (e instanceof ApiError && (e.status === 404 || e.status === 405) && path === '/api/batches') return undefined;
      throw e;
    }
  }

  async function cancelBatch(id) {
    if (!confirm('Cancel this batch? Its invocations still queued will not run.')) return;
    // A second question: the running ones finish unless they are stopped too.
    const running = confirm('Stop its invocations running now too (their processes killed)? Cancel lets them finish.');
    try {
      await api(`/api/batches/${enc(id)}/cancel${running ? '?running=true' : ''}`, { method: 'POST' });
      banner(running ? 'Batch cancelled; its running invocations are stopped.' : 'Batch cancelled.', 'info');
    } catch (e) {
      banner(e.message);
    }
    tick(true);
  }

  function batchesPage(root) {
    const list = h('div');
    root.append(h('h1', null, 'Batches'), h('div', { class: 'card' }, list));
    return {
      async refresh() {
        const r = await batchesOrNone('/api/batches');
        if (r === undefined) {
          update(list, 'none', () => h('p', { class: 'empty' }, 'This management has no batch API (yet): nothing to show.'));
          return;
        }
        const bs = r.batches || [];
        update(list, bs, () => table(['batch', 'function', 'state', 'progress', '#done', 'then', 'created', ''], bs.length
          ? bs.map((b) => h('tr', null, h('td', null, h('a', { href: `#/batches/${enc(b.id)}`, class: 'mono', title: b.id }, shortId(b.id))),
            h('td', null, h('a', { href: `#/functions/${enc(b.function)}` }, b.function)), h('td', null, badge(b.state)),
            h('td', null, progress(b)), h('td', { class: 'num' }, `${doneOf(b)} / ${b.total}`),
            h('td', null, b.then ? [b.then, b.followup_invocation ? [' ', idLink(b.followup_invocation)] : null] : '—'),
            h('td', null, fmtTime(b.created_ms)),
            h('td', null, b.state === 'running' ? h('button', { type: 'button', class: 'ghost', onclick: () => cancelBatch(b.id) }, 'Cancel') : null)))
          : empty(8, 'No batches.')));
      },
    };
  }

  function batchPage(root, id) {
    const box = h('div', { class: 'card' }, h('p', { class: 'muted' }, 'Loading…'));
    root.append(h('div', { class: 'crumbs' }, h('a', { href: '#/batches' }, 'Batches'), ' / ', h('span', { class: 'mono' }, id)),
      h('h1', null, 'Batch'), box);
    return {
      async refresh() {
        const b = await batchesOrNone(`/api/batches/${enc(id)}`);
        if (b === undefined) {
          update(box, 'none', () => h('p', { class: 'empty' }, 'This management has no batch API (yet).'));
          return;
        }
        const counts = b.counts || {};
        update(box, b, () => [
          h('div', { class: 'spread' }, h('div', { class: 'row' }, badge(b.state), h('a', { href: `#/functions/${enc(b.function)}` }, b.function),
            h('span', { class: 'muted' }, `${doneOf(b)} of ${b.total} done`)),
          b.state === 'running' ? h('button', { type: 'button', class: 'danger', onclick: () => cancelBatch(b.id) }, 'Cancel batch') : null),
          h('div', { style: 'margin:14px 0' }, progress(b)),
          h('div', { class: 'grid cols-2' },
            table(['status', '#count'], Object.entries(counts).map(([s, c]) => h('tr', null, h('td', null, badge(s)), h('td', { class: 'num' }, String(c))))),
            h('dl', { class: 'kv' },
              h('dt', null, 'id'), h('dd', { class: 'mono' }, b.id),
              h('dt', null, 'created'), h('dd', null, fmtTime(b.created_ms)),
              h('dt', null, 'finished'), h('dd', null, fmtTime(b.finished_ms)),
              h('dt', null, 'then'), h('dd', null, b.then || '—'),
              h('dt', null, 'follow-up'), h('dd', null, b.followup_invocation ? idLink(b.followup_invocation) : '—'))),
        ]);
      },
    };
  }

  // ---- workers -----------------------------------------------------------------------------

  function workersPage(root) {
    const list = h('div');
    const summary = h('p', { class: 'muted' });
    root.append(h('h1', null, 'Workers'), summary, h('div', { class: 'card' }, list));
    return {
      async refresh() {
        const ws = (await api('/api/workers')).body;
        const rank = { running: 0, draining: 1, lost: 2, gone: 3 };
        ws.sort((a, b) => (rank[a.state] ?? 1) - (rank[b.state] ?? 1) || a.host.localeCompare(b.host) || a.id.localeCompare(b.id));
        const online = ws.filter((w) => w.state === 'running' || w.state === 'draining').length;
        summary.textContent = `${online} online, ${ws.length - online} lost or gone. A worker is lost after 15 s without a heartbeat.`;
        // Heartbeat ages change every second: bucket them so the table re-renders only when it shows something new.
        update(list, ws.map((w) => ({ ...w, silent_ms: Math.floor(w.silent_ms / 1000) })), () => table(
          ['worker', 'host', 'pools', 'state', 'in flight', 'version', 'started', 'last heartbeat'],
          ws.length ? ws.map((w) => h('tr', null, h('td', { class: 'mono', title: w.id }, w.id.length > 24 ? `${w.id.slice(0, 24)}…` : w.id),
            h('td', null, w.host), h('td', null, w.pools.split(',').join(', ')), h('td', null, badge(w.state)),
            h('td', null, h('span', { class: 'meter' }, h('span', { style: `width:${Math.min(100, (100 * w.in_flight) / Math.max(1, w.concurrency))}%` })),
              `${w.in_flight} / ${w.concurrency}`),
            h('td', { class: 'mono' }, w.version), h('td', null, fmtTime(w.started_ms)),
            h('td', null, `${dur(Math.floor(w.silent_ms / 1000) * 1000)} ago`)))
            : empty(8, 'No worker has registered yet: start one (warren-worker) and it appears here.')));
      },
    };
  }

  // ---- dead letters ------------------------------------------------------------------------

  function deadPage(root) {
    const selected = new Set();
    const counts = h('div', { class: 'pill-list' });
    const list = h('div');
    const out = h('div', { id: 'replay-out' });
    let items = [];
    const replaySel = h('button', { type: 'button', id: 'replay-selected', disabled: true }, 'Replay selected');
    const syncButton = () => {
      replaySel.disabled = selected.size === 0;
      replaySel.textContent = `Replay selected (${selected.size})`;
    };
    const replay = async (body) => {
      try {
        const r = (await api('/api/dead-letters/replay', { method: 'POST', body: JSON.stringify(body), headers: { 'Content-Type': 'application/json' } })).body;
        out.replaceChildren(h('p', { class: 'ok' }, `Replayed ${r.replayed.length}; skipped ${r.skipped.length} (not dead any more); ${r.kept} left in the queues.`));
        selected.clear();
        syncButton();
        delete list.dataset.sig;
        tick(true);
      } catch (e) {
        out.replaceChildren(h('div', { class: 'error' }, e.message));
      }
    };
    replaySel.addEventListener('click', () => replay({ ids: [...selected] }));
    const replayAll = h('button', { type: 'button', class: 'ghost', onclick: () => {
      if (confirm('Replay every dead letter? Each becomes a new attempt of its invocation.')) replay({ all: true });
    } }, 'Replay all');
    root.append(h('h1', null, 'Dead letters'),
      h('p', { class: 'muted' }, 'Invocations that used up their attempts, and messages no worker could read. A replay is one more attempt of the same invocation, on the function\'s active version.'),
      counts, h('div', { class: 'card' }, h('div', { class: 'row', style: 'margin-bottom:10px' }, replaySel, replayAll), out, list));
    return {
      every: 4000,
      async refresh() {
        const d = (await api('/api/dead-letters?limit=200')).body;
        items = d.items;
        update(counts, d.counts, () => Object.entries(d.counts).map(([p, c]) => h('span', { class: 'pill' }, `${p}: ${c}`)));
        for (const id of [...selected]) if (!items.some((i) => i.id === id)) selected.delete(id);
        syncButton();
        update(list, items, () => table(['', 'pool', 'invocation', 'function', '#attempt', 'reason', '#size'], items.length
          ? items.map((i) => h('tr', null,
            h('td', null, i.id ? h('input', { type: 'checkbox', checked: selected.has(i.id), 'aria-label': 'select',
              onchange: (ev) => { if (ev.target.checked) selected.add(i.id); else selected.delete(i.id); syncButton(); } }) : null),
            h('td', null, i.pool), h('td', null, i.id ? idLink(i.id) : h('span', { class: 'muted' }, 'unreadable')),
            h('td', null, i.function || '—'), h('td', { class: 'num' }, i.attempt ?? '—'), h('td', null, i.reason || '—'),
            h('td', { class: 'num' }, bytes(i.bytes))))
          : empty(7, 'No dead letters.')));
      },
    };
  }

  // ---- start -------------------------------------------------------------------------------

  function start() {
    $('#signin-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const k = $('#signin-key').value.trim();
      if (!k) return;
      sessionStorage.setItem(KEY, k);
      $('#signin-key').value = '';
      signIn.hide();
      signIn.sync();
      banner(null);
      route();
    });
    $('#signin-cancel').addEventListener('click', () => signIn.hide());
    $('#signin-open').addEventListener('click', () => signIn.show());
    $('#signout').addEventListener('click', () => {
      sessionStorage.removeItem(KEY);
      signIn.sync();
      route();
    });
    document.addEventListener('visibilitychange', () => { if (!document.hidden) tick(true); });
    window.addEventListener('hashchange', route);
    signIn.sync();
    fetch('/healthz', { cache: 'no-store' }).then((r) => r.json()).then((v) => {
      $('#foot').textContent = `Warren ${v.version} · store: ${v.store}`;
    }).catch(() => {});
    setInterval(() => tick(), 250);
    route();
  }

  // After every deferred script (develop.js adds its views before the first route).
  if (document.readyState === 'complete') start();
  else document.addEventListener('DOMContentLoaded', start);
})();
