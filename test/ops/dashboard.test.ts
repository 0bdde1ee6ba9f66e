/**
 * The dashboard in a real browser: Playwright (playwright-core) driving Debian's chromium,
 * headless, against a real pair on loopback. It signs in, watches a message sent through the
 * pair appear in the queue (live, without a reload), holds, releases and deletes it, sees
 * the peer go down when it is stopped, and the page say "Disconnected" when its own node
 * stops and "Live" again when it is back. A screenshot of each page is kept in
 * .artifacts/dashboard/ (path printed). Skipped, with the reason, where no chromium is
 * installed (.ci/run installs it).
 */
import { describe, it, expect, afterEach } from 'vitest';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { startPair, send, queueIdOf, waitFor, which, tmpDir, freePort, ROOT } from '../helpers/index.js';

const CHROMIUM = which('chromium');
const noBrowser = CHROMIUM ? null : 'chromium is not installed (.ci/run installs it: apt-get install chromium)';
if (noBrowser) console.warn(`dashboard.test: browser scenarios skipped: ${noBrowser}`);

const ARTIFACTS = path.join(ROOT, '.artifacts', 'dashboard');
const TOKEN = 'dashboard-test-token-0123456789';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function browser(): Promise<BrowserContext> {
  const profile = tmpDir('sr-chromium-');
  const ctx = await chromium.launchPersistentContext(profile.dir, {
    executablePath: CHROMIUM!,
    headless: true,
    viewport: { width: 1440, height: 900 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-dev-shm-usage'],
  });
  cleanups.push(async () => {
    await ctx.close();
    profile.cleanup();
  });
  return ctx;
}

async function shot(page: Page, name: string): Promise<void> {
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`dashboard.test: screenshot ${file}`);
}

/** Waits until the page's text at `selector` matches. */
async function textOf(page: Page, selector: string, re: RegExp, timeout = 20000): Promise<void> {
  await page.waitForFunction(
    ([sel, src]) => {
      const e = document.querySelector(sel!);
      return !!e && new RegExp(src!).test(e.textContent ?? '');
    },
    [selector, re.source],
    { timeout },
  );
}

async function confirmDialog(page: Page): Promise<void> {
  await page.locator('#confirm[open] #confirm-ok').click();
}

describe('dashboard in a real browser', () => {
  it.skipIf(!!noBrowser)(
    'sign in, a message appears live, hold / release / delete it, a stopped peer shows down, a stopped node shows disconnected and comes back',
    async () => {
      const adminPort = await freePort();
      // the next hop is down: the message stays in the queue to be acted on
      const pair = await startPair({}, { 'relay-a': { admin: { listen: `127.0.0.1:${adminPort}`, token: TOKEN } } }, { sinkDown: true });
      cleanups.push(() => pair.stop());
      const ctx = await browser();
      const page = await ctx.newPage();
      const problems: string[] = [];
      page.on('console', (m) => {
        if (m.type() === 'error' && !/Failed to load resource|ERR_CONNECTION_REFUSED|net::ERR_/.test(m.text())) problems.push(m.text());
      });
      page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
      page.on('request', (r) => {
        const u = new URL(r.url());
        if (u.hostname !== '127.0.0.1') problems.push(`request left the node: ${r.url()}`);
      });
      const base = `http://127.0.0.1:${adminPort}/`;

      // sign in: a wrong token is refused, the right one opens the overview
      const res = await page.goto(base);
      expect(res!.headers()['content-security-policy']).toContain("default-src 'self'");
      await page.locator('#login #token').waitFor();
      await shot(page, '01-login');
      await page.fill('#token', 'not-the-token-at-all');
      await page.click('#login button[type=submit]');
      await textOf(page, '#login-error', /not accepted/);
      await page.fill('#token', TOKEN);
      await page.click('#login button[type=submit]');
      await textOf(page, '[data-peer="relay-b"] .pill', /^up$/);
      await textOf(page, '#conn', /^Live$/);
      expect(await page.evaluate(() => sessionStorage.getItem('shadowrelay.token'))).toBe(TOKEN);
      expect(page.url()).not.toContain(TOKEN);

      // a message sent through the pair appears on the open queue page, without a reload
      await page.click('#nav a[data-view="queue"]');
      await page.locator('#queue-table').waitFor();
      const r = await send(pair.a.addresses.smtp.port, { from: 'alice@example.test', to: ['bob@example.test', 'carol@example.test'] });
      expect(r.code).toBe(250);
      const id = queueIdOf(r.response);
      await page.locator(`tr[data-id="${id}"]`).waitFor({ timeout: 20000 });
      // the next hop is down: its first attempt fails and the row says deferred, live
      await waitFor(() => (pair.a.spool.get(id)?.attempts ?? 0) >= 1, 20000, 'the first delivery attempt');
      await textOf(page, `tr[data-id="${id}"] .pill`, /^deferred$/);
      await shot(page, '03-queue');

      // the message page: envelope, recipients with their replies, history, headers, no body
      await page.click(`tr[data-id="${id}"] a`);
      await textOf(page, '#message-id', new RegExp(`^${id}$`));
      await textOf(page, '#recipients', /carol@example\.test/);
      await textOf(page, '#headers', /Subject: test/);
      expect(await page.locator('#headers').textContent()).not.toContain('hello');
      await shot(page, '04-message');

      // hold → confirm → held in the spool
      await page.click('[data-action="hold"]');
      await confirmDialog(page);
      await waitFor(() => pair.a.spool.get(id)?.state === 'held', 10000, 'held');
      await page.locator('[data-action="release"]').waitFor();
      // release → queued again
      await page.click('[data-action="release"]');
      await confirmDialog(page);
      await waitFor(() => pair.a.spool.get(id)?.state === 'queued', 10000, 'released');
      await page.locator('[data-action="hold"]').waitFor();
      // cancelling the confirmation does nothing
      await page.click('[data-action="delete"]');
      await page.locator('#confirm[open] button[value="cancel"]').click();
      expect(pair.a.spool.get(id)).toBeDefined();
      // delete → gone here, and the peer's shadow copy is discarded
      await page.click('[data-action="delete"]');
      await confirmDialog(page);
      await waitFor(() => pair.a.spool.get(id) === undefined, 10000, 'deleted');
      await waitFor(() => pair.b.spool.get(id) === undefined, 10000, "the peer's shadow copy discarded");
      await page.locator('#queue-table').waitFor();
      await page.waitForFunction((qid) => !document.querySelector(`tr[data-id="${qid}"]`), id, { timeout: 20000 });
      for (const what of ['held', 'released', 'deleted by the operator']) {
        expect(pair.logs['relay-a']!.some((l) => l.msg === what && l.id === id), `operator action logged: ${what}`).toBe(true);
      }

      // the overview with traffic in its chart
      for (let i = 0; i < 3; i++) expect((await send(pair.a.addresses.smtp.port)).code).toBe(250);
      await page.click('#nav a[data-view="overview"]');
      await textOf(page, '[data-card="queued"] .value', /^3$/);
      await page.locator('#chart canvas').first().waitFor();
      await shot(page, '02-overview');

      // the peer stops: its link shows down, and the page says the node is not ready
      await pair.b.stop();
      await textOf(page, '[data-peer="relay-b"] .pill', /^down$/, 30000);
      await textOf(page, '#banner', /Not ready/);
      await shot(page, '05-peer-down');

      // this node stops: the page says so, and reconnects by itself when it is back
      await pair.a.stop();
      await textOf(page, '#conn', /Disconnected/, 30000);
      await shot(page, '06-disconnected');
      await pair.start('relay-a');
      await textOf(page, '#conn', /^Live$/, 30000);

      expect(problems).toEqual([]);
      console.log(`dashboard.test: screenshots in ${ARTIFACTS}`);
    },
    180000,
  );
});
