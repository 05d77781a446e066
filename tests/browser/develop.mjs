// Develops functions in Warren's portal in a real headless chromium (Debian's, through
// playwright-core):
//
//   node tests/browser/develop.mjs BASE_URL SCREENSHOT_DIR POOL PREFIX
//
// Creates a function from every template in every language it offers (PREFIX-TEMPLATE-LANG), on
// POOL; then, on PREFIX-http-python: edits its code in the editor, breaks its manifest and sees
// the save refused with the error at the right line, reloads and finds the unsaved changes
// back, fixes the manifest, tests the draft (log lines shown while it runs), checks over the API
// that callers still get version 1, publishes, and checks that callers get the edited code;
// adds, renames and deletes a file; is warned before leaving with unsaved changes; opens
// version 1 read-only and downloads its package. A screenshot of each step lands in
// SCREENSHOT_DIR (develop-*.png). Exits 0 when all went well, 1 with the failed step otherwise.
// tests/tests/portal.rs runs it (through scripts/test), and checks the store afterwards.
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { start, waitText as waitTextOn } from './harness.mjs';

const [base, shots, pool, prefix] = process.argv.slice(2);
if (!base || !shots || !pool || !prefix) {
  console.error('usage: node develop.mjs BASE_URL SCREENSHOT_DIR POOL PREFIX');
  process.exit(2);
}
const key = process.env.WARREN_API_KEY || '';
const run = await start('develop.mjs', shots, 240);
const { browser, log, problems, hardStop } = run;
let page;

/** The API, as a client other than the page: {status, body}. */
async function api(path, opts = {}) {
  const r = await fetch(`${base}${path}`, { ...opts, headers: { Authorization: `Bearer ${key}`, ...(opts.headers || {}) } });
  const text = await r.text();
  let body = text;
  try { body = JSON.parse(text); } catch (_) { /* text */ }
  return { status: r.status, body };
}

try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, acceptDownloads: true });
  page = run.watch(await context.newPage());
  const shot = (file) => page.screenshot({ path: join(shots, `develop-${file}.png`), fullPage: true });
  const go = async (hash) => { await page.goto(`${base}/${hash}`); };
  const waitText = (sel, text, timeout) => waitTextOn(page, sel, text, timeout);
  /** The text of the file open in the editor, as CodeMirror shows it. */
  const editorText = () => page.evaluate(() => [...document.querySelectorAll('#editor .cm-line')].map((l) => l.textContent).join('\n'));
  /** Opens `path` from the file tree and replaces its whole text by typing it in. */
  const replaceFile = async (path, text) => {
    await page.click(`#file-tree li[data-path="${path}"] a`);
    await page.waitForSelector(`#file-tree li.on[data-path="${path}"]`);
    await page.click('#editor .cm-content');
    await page.keyboard.press('Control+A');
    await page.keyboard.insertText(text);
  };

  log('signing in');
  await go('');
  await page.waitForSelector('#signin:not([hidden])');
  await page.fill('#signin-key', key);
  await page.click('#signin-form button[type="submit"]');
  await page.waitForSelector('#signin', { state: 'hidden' });

  const templates = [
    ['http', ['python', 'node', 'shell']],
    ['timer', ['python', 'node']],
    ['source', ['python', 'node']],
    ['batch', ['python', 'node']],
    ['azure', ['python']],
  ];
  for (const [tpl, langs] of templates) {
    for (const lang of langs) {
      const name = `${prefix}-${tpl}-${lang}`;
      log(`creating ${name} from the ${tpl} template in ${lang}`);
      await go('#/functions');
      await page.click('#new-function');
      await page.click(`.templates button[data-template="${tpl}"]`);
      await page.check(`#template-lang input[value="${lang}"]`);
      await page.fill('#new-name', name);
      await page.fill('#new-pool', pool);
      if (tpl === 'timer') await page.fill('#new-schedule', '0 0 3 * * *');
      if (tpl === 'source') await page.fill('#new-queue', `${prefix}-q-${lang}`);
      if (tpl === 'azure') await waitText('#manifest-preview', `${name}/function.json`);
      else await waitText('#manifest-preview', `name = "${name}"`);
      if (tpl === 'batch') await waitText('#manifest-preview', `name = "${name}-report"`);
      if (lang === langs[0]) await shot(`1-new-${tpl}`);
      await page.click('#new-create');
      await page.waitForFunction((n) => location.hash === `#/develop/${n}`, name, { timeout: 30_000 });
      await waitText('#draft-status', 'Version 1 · active');
      await waitText('#banner', `${name} is created`);
      await page.waitForSelector('#editor .cm-line');
      if (lang === langs[0]) await shot(`2-editor-${tpl}`);
    }
  }

  const name = `${prefix}-http-python`;
  const invokeApi = async () => {
    const r = await api(`/api/functions/${name}/invoke`, { method: 'POST', body: '{"name": "Ada"}' });
    if (r.status !== 200) throw new Error(`invoke over the API answered ${r.status}: ${JSON.stringify(r.body)}`);
    return JSON.stringify(r.body.result);
  };
  log('the new function answers over the API with the template\'s code');
  if (!(await invokeApi()).includes('Hello, Ada!')) throw new Error('version 1 does not answer Hello');

  log('editing main.py in the editor');
  await go(`#/develop/${name}`);
  await waitText('#draft-status', 'Version 1 · active');
  const edited = [
    'import json, sys, time',
    'data = json.loads(sys.stdin.read() or "{}")',
    'print("first step", file=sys.stderr, flush=True)',
    'time.sleep(3)',
    'print("second step", file=sys.stderr, flush=True)',
    'print(json.dumps({"message": "Howdy, " + data.get("name", "you") + "!"}))',
    '',
  ].join('\n');
  await replaceFile('main.py', edited);
  if ((await editorText()) !== edited.replace(/\n$/, '\n')) throw new Error(`the editor shows ${JSON.stringify(await editorText())}`);
  await waitText('#draft-status', 'Unsaved changes');
  await page.waitForSelector('#editor .cm-lineNumbers');

  log('breaking the manifest: the save is refused with the error at its line');
  await page.click('#file-tree li[data-path="function.toml"] a');
  const manifest = await editorText();
  const lines = manifest.split('\n');
  const broken = [...lines.slice(0, 4), 'timeout_secs 30', ...lines.slice(4)].join('\n');
  await replaceFile('function.toml', broken);
  await page.click('#save-draft');
  await waitText('#save-error', 'function.toml, line 5');
  await page.waitForSelector('#editor .cm-lintRange-error');
  await page.waitForSelector('#editor .cm-lint-marker-error');
  const activeLine = await page.evaluate(() => document.querySelector('#editor .cm-activeLine')?.textContent);
  if (activeLine !== 'timeout_secs 30') throw new Error(`the cursor is not on the broken line 5 but on ${JSON.stringify(activeLine)}`);
  await shot('3-refused-at-line');
  const versions = (await api(`/api/functions/${name}`)).body.versions.length;
  if (versions !== 1) throw new Error(`a refused save made a version: ${versions}`);

  log('reloading: the unsaved changes are back from the browser');
  await page.reload();
  await waitText('#draft-status', 'Unsaved changes');
  await waitText('#banner', 'unsaved changes');
  await page.waitForSelector('#file-tree li.on[data-path="function.toml"]');
  if (!(await editorText()).includes('timeout_secs 30')) throw new Error('the broken manifest line did not survive the reload');

  log('leaving with unsaved changes asks first; staying keeps them');
  const asked = new Promise((res) => page.once('dialog', (d) => { res(d.message()); d.dismiss(); }));
  await page.click('#nav a[data-view="functions"]');
  if (!(await asked).includes('unsaved changes')) throw new Error('leaving did not ask about the unsaved changes');
  await page.waitForFunction((n) => location.hash === `#/develop/${n}`, name);
  await page.waitForSelector('#editor .cm-line');

  log('fixing the manifest and saving a draft (version 2, not active)');
  await replaceFile('function.toml', manifest);
  await page.click('#save-draft');
  await waitText('#banner', 'Saved as version 2');
  await waitText('#draft-status', 'Version 2 · not active (v1 is)');
  await page.waitForSelector('#save-error', { state: 'detached' });

  log('testing the draft: log lines show while it runs, then the result');
  await page.fill('#test-input', '{"name": "Grace"}');
  await page.click('#test-run');
  await page.waitForFunction(() => {
    const out = document.querySelector('#test-out');
    return out && out.textContent.includes('first step') && !out.textContent.includes('second step')
      && out.querySelector('.inv-detail[data-status="running"]');
  }, null, { timeout: 30_000 }).catch(async () => {
    throw new Error(`the first log line was not shown while the draft ran: ${await page.textContent('#test-out')}`);
  });
  await shot('4-test-running');
  await page.waitForSelector('#test-out .inv-detail[data-status="succeeded"]', { timeout: 30_000 });
  await waitText('#test-out .inv-result', 'Howdy, Grace!');
  await waitText('#test-out .inv-logs', 'second step');
  await waitText('#test-out', 'Version 2');
  await shot('5-test-done');

  log('callers still get version 1');
  if (!(await invokeApi()).includes('Hello, Ada!')) throw new Error('the draft changed what callers get');

  log('publishing version 2');
  page.once('dialog', (d) => d.accept());
  await page.click('#publish-draft');
  await waitText('#banner', 'Version 2 of');
  await waitText('#draft-status', 'Version 2 · active');
  await shot('6-published');
  log('callers get the edited code');
  if (!(await invokeApi()).includes('Howdy, Ada!')) throw new Error('the published version does not answer Howdy');

  log('the file tree: add, rename, delete');
  page.once('dialog', (d) => d.accept('lib/util.py'));
  await page.click('#file-add');
  await page.waitForSelector('#file-tree li.on[data-path="lib/util.py"]');
  await page.click('#editor .cm-content');
  await page.keyboard.insertText('ANSWER = 42\n');
  page.once('dialog', (d) => d.accept('lib/answer.py'));
  await page.click('#file-rename');
  await page.waitForSelector('#file-tree li.on[data-path="lib/answer.py"]');
  await page.waitForSelector('#file-tree li[data-path="lib/util.py"]', { state: 'detached' });
  if (!(await editorText()).includes('ANSWER = 42')) throw new Error('the renamed file lost its text');
  await page.click('#save-draft');
  await waitText('#banner', 'Saved as version 3');
  await shot('7-files');
  page.once('dialog', (d) => d.accept());
  await page.click('#file-delete');
  await page.waitForSelector('#file-tree li[data-path="lib/answer.py"]', { state: 'detached' });
  await page.click('#save-draft');
  await waitText('#banner', 'Saved as version 4');

  log('version 1, read-only, and its package downloaded');
  await go(`#/functions/${name}`);
  await page.click('#view a[data-open="1"]');
  await waitText('#draft-status', 'Version 1 (read-only)');
  await page.click('#file-tree li[data-path="main.py"] a');
  if (!(await editorText()).includes('Hello, {name}!')) throw new Error('version 1 does not show its own code');
  const editable = await page.getAttribute('#editor .cm-content', 'contenteditable');
  if (editable !== 'false') throw new Error(`version 1 is editable (contenteditable=${editable})`);
  await shot('8-read-only');
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download-package')]);
  const saved = join(shots, download.suggestedFilename());
  await download.saveAs(saved);
  if (download.suggestedFilename() !== `${name}-v1.tar.gz` || statSync(saved).size < 100) {
    throw new Error(`the download is ${download.suggestedFilename()}, ${statSync(saved).size} bytes`);
  }

  log('closing the tab with unsaved changes: the browser asks first');
  await go(`#/develop/${name}`);
  await page.waitForSelector('#file-tree li.on');
  await page.click('#file-tree li[data-path="main.py"] a');
  await page.click('#editor .cm-content');
  await page.keyboard.insertText('# an unsaved line\n');
  await waitText('#draft-status', 'Unsaved changes');
  const unload = new Promise((res) => page.once('dialog', (d) => { res(d.type()); d.dismiss(); }));
  await page.close({ runBeforeUnload: true });
  if ((await unload) !== 'beforeunload') throw new Error('closing the tab did not ask');

  if (problems.length) throw new Error(`the page reported errors:\n  ${problems.join('\n  ')}`);
  console.log(`develop.mjs: all steps passed; screenshots in ${shots}`);
} catch (e) {
  console.error(`develop.mjs: FAILED at step "${run.step}": ${e.message}`);
  if (problems.length) console.error(`develop.mjs: the page also reported:\n  ${problems.join("\n  ")}`);
  if (page) await page.screenshot({ path: join(shots, 'develop-failure.png'), fullPage: true }).catch(() => {});
  await browser.close();
  clearTimeout(hardStop);
  process.exit(1);
}
await browser.close();
clearTimeout(hardStop);
