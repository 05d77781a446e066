// Drives Warren's portal in a real headless chromium (Debian's, through playwright-core).
//
//   node tests/browser/portal.mjs BASE_URL SCREENSHOT_DIR PACKAGE_PATH FUNCTION_NAME [DEAD_INVOCATION_ID]
//
// Publishes PACKAGE_PATH from the page's file input, invokes the function from the page with a
// payload, and checks that the result and the function's log lines are shown; visits every
// page and saves a screenshot of each; checks the sign-in box (key kept and sent as a bearer
// token, shown again on a 401); replays DEAD_INVOCATION_ID's dead letter from the page. Exits 0 when all went well, 1 with the failed step otherwise.
// tests/tests/portal.rs runs it (through scripts/test).
import { join } from 'node:path';
import { start, waitText as waitTextOn } from './harness.mjs';

const [base, shots, pkgPath, name, deadId] = process.argv.slice(2);
if (!base || !shots || !pkgPath || !name) {
  console.error('usage: node portal.mjs BASE_URL SCREENSHOT_DIR PACKAGE_PATH FUNCTION_NAME');
  process.exit(2);
}
const run = await start('portal.mjs', shots, 180);
const { browser, log, problems, hardStop } = run;
let page;
try {
  page = run.watch(await browser.newPage({ viewport: { width: 1280, height: 860 } }));
  const shot = (file) => page.screenshot({ path: join(shots, `${file}.png`), fullPage: true });
  const go = async (hash) => { await page.goto(`${base}/${hash}`); };
  const waitText = (sel, text, timeout) => waitTextOn(page, sel, text, timeout);

  const key = process.env.WARREN_API_KEY || '';
  const signIn = async (k) => {
    if (await page.isHidden('#signin')) await page.click('#signin-open');
    await page.fill('#signin-key', k);
    await page.click('#signin-form button[type="submit"]');
    await page.waitForSelector('#signin', { state: 'hidden' });
  };

  log('signing in with the admin key (the API answers 401 without one)');
  await go('');
  await page.waitForSelector('#signin:not([hidden])');
  await shot('0-sign-in-first');
  await signIn(key);

  log('overview');
  await go('');
  await page.waitForSelector('.chart svg');
  await page.waitForSelector('.stat .n');
  await waitText('#view', 'workers online');
  await shot('1-overview');

  log('publishing the package from the file input');
  await go('#/functions');
  await page.setInputFiles('#publish-file', pkgPath);
  await page.click('#publish-btn');
  await waitText('#publish-out', `${name} version 1`, 30_000);
  await waitText('#view table', name);
  await waitText('#retention-card', 'Defaults: succeeded 7d, failed, timed out, dead and cancelled 30d, 10 newest versions');
  await waitText('#retention-card table', name);
  await shot('2-functions');

  log('the function page: versions and manifest');
  await page.click(`#publish-out a[href="#/functions/${name}"]`);
  await waitText('#manifest', `name = "${name}"`);
  await waitText('#view', 'v1');
  await waitText('#retention', 'Keeps succeeded invocations 7d, failed ones 30d, the newest 10 versions');

  log('invoking from the page with a payload');
  await page.fill('#payload', '{"name": "Ada"}');
  await page.click('#invoke-btn');
  await page.waitForSelector('#invoke-out .inv-detail[data-status="succeeded"]', { timeout: 60_000 });
  await waitText('#invoke-out .inv-result', '"Ada"');
  await waitText('#invoke-out .inv-result', 'portal-test');
  await waitText('#invoke-out .inv-logs', 'portal-log: got {"name": "Ada"}');
  await waitText('#view', 'Recent invocations');
  await shot('3-function-invoked');

  log('the invocation page');
  await page.click('#invoke-out .inv-detail a.mono');
  await page.waitForSelector('.inv-detail[data-status="succeeded"]');
  await waitText('.inv-logs', 'portal-log: got');
  await waitText('.inv-detail', 'Timings');
  await shot('4-invocation');

  log('rolling back: a second publish, then version 1 made active again from its Activate button');
  await go('#/functions');
  await page.setInputFiles('#publish-file', pkgPath);
  await page.click('#publish-btn');
  await waitText('#publish-out', `${name} version 2`, 30_000);
  await go(`#/functions/${name}`);
  await waitText('#view', 'Active version 2');
  page.once('dialog', (d) => d.accept());
  await page.click('#view button[data-activate="1"]');
  await waitText('#banner', `Version 1 of ${name} is active`);
  await waitText('#view', 'Active version 1');
  await page.waitForSelector('#view button[data-activate="2"]');
  await shot('3b-function-rolled-back');

  log('pausing from its Pause button (confirmed), then resuming');
  page.once('dialog', (d) => d.accept());
  await page.click('#pause-function');
  await waitText('#banner', `${name} is paused`);
  await waitText('#paused-note', 'Paused since');
  await waitText('#pause-function', 'Resume');
  await shot('3c-function-paused');
  await page.click('#pause-function');
  await waitText('#banner', `${name} is resumed`);
  await waitText('#pause-function', 'Pause');
  await page.waitForSelector('#paused-note', { state: 'detached' });

  log('invocations, filtered');
  await go(`#/invocations?function=${name}`);
  await waitText('#view table', 'succeeded');
  await page.waitForFunction((n) => document.querySelector('#filter-function').value === n, name);
  await shot('5-invocations');
  await page.selectOption('#filter-status', 'failed');
  await waitText('#view table', 'No invocations.');
  await page.selectOption('#filter-status', 'succeeded');
  await page.selectOption('#filter-since', '300');
  await waitText('#view table', 'succeeded');

  log('overview counts the invocation');
  await go('#/overview');
  await page.waitForSelector('.chart svg rect');
  await shot('1-overview');

  log('workers');
  await go('#/workers');
  await waitText('#view table', 'running');
  await shot('6-workers');

  log('batches (the page stands whether or not this management has a batch API)');
  await go('#/batches');
  await page.waitForSelector('#view .card table, #view .card .empty');

  log('batches: progress and cancel, the batch API answered here in its documented shape');
  const zero = { queued: 0, running: 0, succeeded: 0, failed: 0, timed_out: 0, dead: 0, cancelled: 0 };
  const running = {
    id: '01937a2e-0000-7000-8000-00000000b001', function: name, total: 40,
    counts: { ...zero, queued: 10, running: 4, succeeded: 20, failed: 3, timed_out: 1, dead: 1, cancelled: 1 },
    state: 'running', then: 'collect', followup_invocation: null, created_ms: Date.now() - 90_000, finished_ms: null,
  };
  const done = {
    id: '01937a2e-0000-7000-8000-00000000b002', function: name, total: 12, counts: { ...zero, succeeded: 12 },
    state: 'done', then: null, followup_invocation: null, created_ms: Date.now() - 3_600_000, finished_ms: Date.now() - 3_500_000,
  };
  let cancelled = false;
  const current = () => (cancelled ? { ...running, state: 'cancelled' } : running);
  await page.route('**/api/batches', (r) => r.fulfill({ json: { batches: [current(), done] } }));
  await page.route('**/api/batches/*/cancel', (r) => { cancelled = true; return r.fulfill({ json: current() }); });
  await page.route(`**/api/batches/${running.id}`, (r) => r.fulfill({ json: current() }));
  page.once('dialog', (d) => d.accept());
  await waitText('#view table', '26 / 40');
  await waitText('#view table', '12 / 12');
  await shot('7-batches');
  await page.click(`#view a[href="#/batches/${running.id}"]`);
  await waitText('#view', '26 of 40 done');
  await page.click('#view button.danger');
  await page.waitForSelector('#view .card > .spread .badge.s-cancelled');
  await page.unroute('**/api/batches');
  await page.unroute('**/api/batches/*/cancel');
  await page.unroute(`**/api/batches/${running.id}`);

  log('dead letters');
  await go('#/dead');
  await page.waitForSelector('#view .card table');
  if (deadId) {
    log('replaying a dead letter from the page');
    const box = page.locator(`#view tr:has(a[title="${deadId}"]) input[type="checkbox"]`);
    await box.waitFor({ timeout: 30_000 });
    await shot('8-dead-letters');
    await box.check();
    await page.click('#replay-selected');
    await waitText('#replay-out', 'Replayed 1');
    log('the replayed invocation: three attempts, its error and the log lines of each');
    await go(`#/invocations/${deadId}`);
    await page.waitForSelector('.inv-detail[data-status="dead"] .inv-error', { timeout: 60_000 });
    await waitText('.inv-detail', 'Log lines (3)', 60_000);
    await waitText('.inv-error', 'cannot go on');
    await shot('10-dead-invocation');
  } else {
    await shot('8-dead-letters');
  }

  log('signing out, then in again: the key is kept in the tab and sent as a bearer token');
  await page.click('#signout');
  // Without a key the next poll is refused, and the page asks for one by itself.
  await page.waitForSelector('#signin:not([hidden])');
  await page.fill('#signin-key', key);
  const sent = page.waitForRequest((r) => r.url().includes('/api/') && r.headers().authorization === `Bearer ${key}`);
  await page.click('#signin-form button[type="submit"]');
  await sent;
  if (!(await page.isHidden('#signin'))) throw new Error('the sign-in box stayed open after signing in');

  log('a 401 answer shows its message in the sign-in box');
  await page.route('**/api/workers', (route) => route.fulfill({
    status: 401, contentType: 'application/json',
    body: JSON.stringify({ error: { code: 'unauthorized', message: 'this key is not valid any more: sign in with another' } }),
  }));
  await go('#/workers');
  await page.waitForSelector('#signin:not([hidden])');
  await waitText('#signin-why', 'this key is not valid any more');
  await shot('9-sign-in');
  await page.unroute('**/api/workers');
  await page.click('#signin-cancel');
  await page.click('#signout');

  log('deleting the function from its page, after a confirmation');
  // Signed out above: the next poll is refused and the page asks for a key by itself.
  await page.waitForSelector('#signin:not([hidden])');
  await page.fill('#signin-key', key);
  await page.click('#signin-form button[type="submit"]');
  await page.waitForSelector('#signin', { state: 'hidden' });
  await go(`#/functions/${name}`);
  await waitText('#view', 'Active version 1');
  page.once('dialog', (d) => d.accept());
  await page.click('#delete-function');
  await waitText('#banner', `${name} is deleted`);
  await page.waitForFunction(() => location.hash === '#/functions');
  await page.waitForFunction((n) => !document.querySelector('#view table')?.textContent.includes(n), name);
  await shot('11-function-deleted');

  if (problems.length) throw new Error(`the page reported errors:\n  ${problems.join('\n  ')}`);
  console.log(`portal.mjs: all steps passed; screenshots in ${shots}`);
} catch (e) {
  console.error(`portal.mjs: FAILED at step "${run.step}": ${e.message}`);
  if (page) await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  await browser.close();
  clearTimeout(hardStop);
  process.exit(1);
}
await browser.close();
clearTimeout(hardStop);
