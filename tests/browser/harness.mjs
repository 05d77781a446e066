// What portal.mjs and develop.mjs share: Debian's chromium launched headless (through
// playwright-core), a hard stop, a log of steps, page errors collected, and waiting for a text.
import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

/** Launches chromium for the script `name`; gives up (exit 1) after `seconds`. */
export async function start(name, shots, seconds) {
  mkdirSync(shots, { recursive: true });
  const hardStop = setTimeout(() => {
    console.error(`${name}: still running after ${seconds} s; giving up`);
    process.exit(1);
  }, seconds * 1000);
  const run = { step: 'launching chromium', problems: [], hardStop };
  run.log = (s) => { run.step = s; console.log(`${name}: ${s}`); };
  run.browser = await chromium.launch({
    executablePath: process.env.WARREN_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  /** Collects the page's errors (a failed resource is an answer the page handles itself). */
  run.watch = (page) => {
    page.setDefaultTimeout(20_000);
    page.on('pageerror', (e) => run.problems.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) run.problems.push(`console error: ${m.text()}`);
    });
    return page;
  };
  return run;
}

/** Waits until the element `sel` of `page` contains `text`; fails saying what it shows. */
export function waitText(page, sel, text, timeout = 20_000) {
  return page.waitForFunction(
    ([s, t]) => { const el = document.querySelector(s); return !!el && el.textContent.includes(t); },
    [sel, text], { timeout },
  ).catch(async (e) => {
    const got = await page.evaluate((s) => document.querySelector(s)?.textContent ?? '(no such element)', sel);
    throw new Error(`${sel} never showed ${JSON.stringify(text)}; it shows ${JSON.stringify(got.slice(0, 400))} (${e.message.split('\n')[0]})`);
  });
}
