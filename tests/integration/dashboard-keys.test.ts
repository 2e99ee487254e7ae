/**
 * The /dashboard page in a real headless Chromium with client API keys on: the page itself loads
 * without a key, the cluster API it reads does not (the page says so), and once an admin API key is
 * entered it lists the workers, follows the event feed (read with the key, as EventSource cannot
 * send one) and takes admin actions with it.
 */
import { generateKey, hashKey } from '../../src/api-keys';
import { launchBrowser, type Browser } from '../helpers/browser';
import { startCluster, type Cluster } from '../helpers/cluster';

describe('dashboard with client keys', () => {
  let cluster: Cluster;
  let browser: Browser;
  const admin = generateKey();
  const pageErrors: string[] = [];

  beforeAll(async () => {
    browser = await launchBrowser();
    cluster = await startCluster({
      workers: [{ id: 'dk-1', tokenMs: 2 }, { id: 'dk-2', tokenMs: 2 }],
      config: { 'discovery.offlineAfterMs': 2000, 'cluster.auth.keys': [{ id: 'ops', hash: hashKey(admin), admin: true }] },
    });
    browser.page.on('pageerror', (err) => pageErrors.push(err.message));
  });

  afterAll(async () => {
    await browser?.close();
    await cluster?.stop();
  });

  test('dashboard - without a key it says one is needed; with an admin key it shows workers, the live feed and admin actions', async () => {
    const { page } = browser;
    await page.goto(`${cluster.url}/dashboard`);
    await page.waitForFunction("/enter an admin key/.test(document.getElementById('error').textContent)", undefined, { timeout: 10_000 });
    expect(await page.locator('[data-worker]').count()).toBe(0);
    await page.fill('#admin-key', admin);
    await page.click('#admin-save');
    for (const id of ['dk-1', 'dk-2']) await page.waitForSelector(`[data-worker="${id}"][data-state="ready"]`, { timeout: 10_000 });
    await page.waitForSelector('#feed-status.ok', { timeout: 10_000 });
    await page.waitForSelector('#events li[data-type="worker.up"]', { timeout: 10_000 });
    const drain = page.locator('[data-worker="dk-1"] button[data-action="drain"]');
    await drain.waitFor({ timeout: 5000 });
    await drain.click();
    await page.waitForSelector('[data-worker="dk-1"][data-state="draining"]', { timeout: 5000 });
    await page.waitForSelector('#events li[data-type="admin"]', { timeout: 5000 });
    expect(pageErrors).toEqual([]);
  });
});
