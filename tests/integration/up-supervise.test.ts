/**
 * `mlx-router up` supervises its workers: one that crashes is started again with backoff, the
 * event feed and the dashboard show the restart, and Ctrl-C still leaves no process behind.
 */
import { launchBrowser } from '../helpers/browser';
import { MODEL, waitFor } from '../helpers/cluster';
import { followEvents } from '../helpers/events';
import { alive, childrenOf, startUp } from '../helpers/up';

/** The full id of `up`'s worker number n (`worker-<n>-<run>`: ids are unique per run). */
async function workerId(url: string, n: number): Promise<string | undefined> {
  const res = await fetch(`${url}/v1/cluster/workers`);
  return ((await res.json()) as any).data.map((x: any) => x.id as string).find((id: string) => id.startsWith(`worker-${n}-`));
}

async function workerPid(url: string, id: string): Promise<number | undefined> {
  const res = await fetch(`${url}/v1/cluster/workers`);
  const w = ((await res.json()) as any).data.find((x: any) => x.id === id);
  return w?.online ? w.pid : undefined;
}

test('up - a crashed worker is restarted with growing backoff, the dashboard shows it, and Ctrl-C leaves nothing behind', async () => {
  const cluster = startUp(2);
  const gone: number[] = [];
  try {
    const url = await cluster.ready();
    expect(cluster.output()).toContain(`dashboard: ${url}/dashboard`);
    const w1 = await waitFor(() => workerId(url, 1), 'worker 1 known');
    const feed = await followEvents(url);
    try {
      const first = await waitFor(() => workerPid(url, w1), 'worker 1 online with its pid');
      expect(childrenOf(cluster.up.pid!)).toContain(first);
      process.kill(first, 'SIGKILL');
      gone.push(first);
      const restart1 = await waitFor(() => feed.events.find((e) => e.type === 'worker.restart' && e.worker === w1), 'first restart event');
      expect(restart1).toMatchObject({ restarts: 1, backoffMs: 500, exit: 'signal SIGKILL' });
      const second = await waitFor(async () => {
        const pid = await workerPid(url, w1);
        return pid !== undefined && pid !== first ? pid : undefined;
      }, 'worker-1 back with a new pid', 20_000);

      // A second crash soon after: the backoff doubles.
      process.kill(second, 'SIGKILL');
      gone.push(second);
      const restart2 = await waitFor(() => feed.events.find((e) => e.type === 'worker.restart' && e.worker === w1 && e.restarts === 2), 'second restart event');
      expect(restart2.backoffMs).toBe(1000);
      await waitFor(async () => {
        const pid = await workerPid(url, w1);
        return pid !== undefined && !gone.includes(pid);
      }, 'worker-1 back again', 20_000);
    } finally {
      await feed.close();
    }

    // The restarted worker serves.
    const res = await fetch(`${url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 }) });
    expect(res.status).toBe(200);

    // The dashboard shows the restarts (replayed from the event feed).
    const browser = await launchBrowser();
    try {
      await browser.page.goto(`${url}/dashboard`);
      await browser.page.waitForSelector(`[data-worker="${w1}"] .badge.restarts[data-restarts="2"]`, { timeout: 10_000 });
      expect(await browser.page.locator('#events li[data-type="worker.restart"]').count()).toBe(2);
    } finally {
      await browser.close();
    }

    const children = childrenOf(cluster.up.pid!);
    // nats-server and the two current workers.
    expect(children).toHaveLength(3);
    cluster.ctrlC();
    expect(await cluster.exited).toBe(0);
    await waitFor(() => [...children, ...gone].every((p) => !alive(p)), 'every child gone', 5000);
  } finally {
    await cluster.kill();
  }
}, 90_000);
