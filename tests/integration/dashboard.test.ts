/**
 * The /dashboard page in a real headless Chromium (Debian's, through playwright-core) against a
 * real cluster: it lists the workers, a worker killed here turns red within two seconds, a drain
 * clicked in the page stops traffic to that worker, and a screenshot is kept in tests/artifacts/.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ARTIFACTS, launchBrowser, type Browser } from '../helpers/browser';
import { chat, chatStream, startCluster, type Cluster } from '../helpers/cluster';

const KEY = 'dashboard-admin-key-0123456789';

describe('dashboard', () => {
  let cluster: Cluster;
  let browser: Browser;
  const pageErrors: string[] = [];

  beforeAll(async () => {
    // The browser first: its start-up is the heaviest moment, and workers must not look silent then.
    browser = await launchBrowser();
    cluster = await startCluster({
      workers: [{ id: 'w-1', tokenMs: 2 }, { id: 'w-2', tokenMs: 2 }, { id: 'w-3', tokenMs: 2 }],
      // A killed worker must be noticed well within the two seconds under test, yet a worker
      // starved by the browser on a loaded machine must not look dead: 1 s of silence.
      config: { 'cluster.admin.key': KEY, 'discovery.offlineAfterMs': 1000 },
    });
    browser.page.on('pageerror', (err) => pageErrors.push(err.message));
  });

  afterAll(async () => {
    await browser?.close();
    await cluster?.stop();
  });

  test('dashboard - lists every worker with its state, breaker and the live event feed', async () => {
    // Some traffic first, so the tiles and sparklines have data.
    for (let i = 0; i < 6; i++) {
      expect((await chatStream(cluster.url, { content: `warm ${i}`, maxTokens: 20 })).status).toBe(200);
    }
    const { page } = browser;
    await page.goto(`${cluster.url}/dashboard`);
    for (const id of ['w-1', 'w-2', 'w-3']) {
      await page.waitForSelector(`[data-worker="${id}"][data-state="ready"]`, { timeout: 10_000 });
    }
    expect(await page.locator('[data-worker]').count()).toBe(3);
    expect(await page.locator('[data-worker="w-1"] .badge').nth(1).textContent()).toBe('breaker closed');
    await page.waitForSelector('#feed-status.ok', { timeout: 10_000 });
    // The feed replays the workers coming up.
    await page.waitForSelector('#events li[data-type="worker.up"]', { timeout: 10_000 });
    // A string: it runs in the page, where `document` is (this file is compiled without DOM types).
    await page.waitForFunction("document.getElementById('v-p50').textContent !== '–'", undefined, { timeout: 10_000 });
    // No admin key entered: no admin buttons.
    expect(await page.locator('[data-action]').count()).toBe(0);
  });

  test('dashboard - a killed worker turns red within two seconds', async () => {
    const { page } = browser;
    const killedAt = Date.now();
    cluster.workers.get('w-3')!.kill('SIGKILL');
    // Heartbeat silence (1 s here) is noticed by the sweep and pushed on the event feed.
    // Offline and red, checked in the page in one step: the list re-renders on every update, and an
    // element read after a re-render has detached has no computed style.
    await page.waitForFunction(
      "(() => { const el = document.querySelector('[data-worker=\"w-3\"][data-state=\"offline\"]'); return el !== null && getComputedStyle(el).borderLeftColor === 'rgb(248, 81, 73)'; })()",
      undefined,
      { timeout: 2000 },
    );
    expect(Date.now() - killedAt).toBeLessThan(2000);
    await page.waitForSelector('#events li[data-type="worker.down"]', { timeout: 2000 });
  });

  test('dashboard - a drain clicked in the page stops traffic to that worker', async () => {
    const { page } = browser;
    await page.fill('#admin-key', KEY);
    await page.click('#admin-save');
    const drain = page.locator('[data-worker="w-1"] button[data-action="drain"]');
    await drain.waitFor({ timeout: 5000 });
    await drain.click();
    await page.waitForSelector('[data-worker="w-1"][data-state="draining"]', { timeout: 5000 });
    await page.waitForSelector('[data-worker="w-1"] button[data-action="undrain"]', { timeout: 5000 });
    expect(await page.locator('#error').isHidden()).toBe(true);
    for (let i = 0; i < 8; i++) {
      const r = await chat(cluster.url, { content: `after drain ${i}` });
      expect(r.status).toBe(200);
      expect(r.json.metadata.selectedWorker).toBe('w-2');
      expect(r.json.metadata.failedWorkers).toEqual([]);
    }
    await page.waitForSelector('#events li[data-type="admin"]', { timeout: 5000 });
    mkdirSync(ARTIFACTS, { recursive: true });
    const file = join(ARTIFACTS, 'dashboard.png');
    await page.screenshot({ path: file });
    expect(pageErrors).toEqual([]);
  });
});
