/**
 * A NATS blip is not a worker failure (issue 11): nats-server is killed under mixed load and
 * restarted on the same port two seconds later. Attempts that may have been lost fail over as
 * NATS_DISCONNECTED (never counted against a worker), the controller re-learns its workers before
 * selecting them, no breaker opens, and requests succeed again within three seconds.
 */
import { chat, chatStream, startCluster, waitFor, type Cluster } from '../helpers/cluster';

interface Outcome {
  startedAt: number;
  endedAt: number;
  ok: boolean;
  what: string;
}

describe('nats-server killed and restarted under load', () => {
  let cluster: Cluster;
  beforeAll(async () => {
    cluster = await startCluster({
      workers: [
        { id: 'n1', tokenMs: 2, maxConcurrent: 16 },
        { id: 'n2', tokenMs: 2, maxConcurrent: 16 },
        { id: 'n3', tokenMs: 2, maxConcurrent: 16 },
      ],
      // A blip must not make heartbeat silence take workers offline mid-test.
      config: { 'discovery.offlineAfterMs': 5000 },
    });
  });
  afterAll(async () => cluster?.stop());

  test('blip - >= 99% of mixed requests succeed, no breaker opens, and requests succeed within 3 s of NATS being back', async () => {
    const transitions: string[] = [];
    const outcomes: Outcome[] = [];
    let running = true;
    const client = async (i: number): Promise<void> => {
      for (let n = 0; running; n++) {
        const stream = i % 2 === 1;
        const startedAt = performance.now();
        let ok = false;
        let what = '';
        try {
          if (stream) {
            const r = await chatStream(cluster.url, { maxTokens: 20, content: `c${i} n${n}` });
            ok = r.status === 200 && r.events[r.events.length - 1]?.data === '[DONE]' && !r.events.some((e) => e.event === 'error');
            what = ok ? 'ok' : `${r.status} ${r.events.filter((e) => e.event === 'error').map((e) => e.data).join(' ')}`;
          } else {
            const r = await chat(cluster.url, { maxTokens: 20, content: `c${i} n${n}` });
            ok = r.status === 200;
            what = ok ? 'ok' : `${r.status} ${r.text.slice(0, 300)}`;
          }
        } catch (err) {
          what = String(err);
        }
        outcomes.push({ startedAt, endedAt: performance.now(), ok, what });
      }
    };
    const snapshot = (): string[] => cluster.controller.deps.breakers.snapshot().filter(([, k]) => k !== 'closed').map(([w, k]) => `${w}:${k}`);
    const watch = setInterval(() => transitions.push(...snapshot()), 20);
    const clients = Array.from({ length: 16 }, (_, i) => client(i));
    try {
      await waitFor(() => outcomes.filter((o) => o.ok).length >= 50, 'traffic flowing', 20_000);
      const backAt = await cluster.restartNats(2000);
      await waitFor(() => outcomes.some((o) => o.ok && o.endedAt > backAt), 'a success after NATS is back', 20_000, 5);
      const firstSuccessMs = Math.min(...outcomes.filter((o) => o.ok && o.endedAt > backAt).map((o) => o.endedAt)) - backAt;
      // Keep the load on a while after the blip, then stop the clients.
      const countAtBack = outcomes.length;
      await waitFor(() => outcomes.length >= countAtBack + 100, 'traffic after the blip', 30_000);
      running = false;
      await Promise.all(clients);
      const failures = outcomes.filter((o) => !o.ok);
      const rate = (outcomes.length - failures.length) / outcomes.length;
      process.stdout.write(`nats blip: ${outcomes.length} requests, success ${(rate * 100).toFixed(2)} %, first success ${Math.round(firstSuccessMs)} ms after NATS was back\n`);
      if (rate < 0.99) throw new Error(`success ${(rate * 100).toFixed(2)}% of ${outcomes.length}; failures: ${failures.slice(0, 5).map((f) => f.what).join(' | ')}`);
      expect(rate).toBeGreaterThanOrEqual(0.99);
      expect(firstSuccessMs).toBeLessThan(3000);
      expect(transitions).toEqual([]);
      expect(snapshot()).toEqual([]);
    } finally {
      running = false;
      clearInterval(watch);
      await Promise.all(clients);
    }
  }, 90_000);
});
