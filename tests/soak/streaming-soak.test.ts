/**
 * Soak and chaos: thousands of requests through real processes while workers fail,
 * die and hang. Every request ends with one honest outcome before its deadline, nothing is
 * silently truncated, and the controller is left with no pending replies, in-flight requests or
 * extra timers.
 */
import { chat, chatBody, metricValue, startCluster, waitFor, type Cluster } from '../helpers/cluster';
import { expectedAnswer } from '../helpers/expected';
import { summarize } from '../helpers/stream';

const PROMPTS = Array.from({ length: 16 }, (_, i) => `soak prompt ${i}`);
const MAX_TOKENS = 24;

/** Deterministic pseudo-random numbers, so a failing run can be replayed. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

async function expectedTexts(): Promise<Map<string, string>> {
  const map = new Map<string, string>();
  for (const p of PROMPTS) map.set(p, (await expectedAnswer({ content: p, max_tokens: MAX_TOKENS })).text);
  return map;
}

/** Runs `total` tasks with at most `concurrency` at once. */
async function pool(total: number, concurrency: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < total) await task(next++);
    }),
  );
}

function timeoutCount(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
}

interface Outcome {
  ok: boolean;
  aborted: boolean;
  truncated: boolean;
  code?: string;
  ms: number;
}

async function streamOnce(url: string, prompt: string, expected: string, abortAfterMs?: number): Promise<Outcome> {
  const started = performance.now();
  const abort = new AbortController();
  const timer = abortAfterMs === undefined ? undefined : setTimeout(() => abort.abort(), abortAfterMs);
  try {
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(chatBody({ content: prompt, maxTokens: MAX_TOKENS, stream: true })),
      signal: abort.signal,
    });
    const text = await res.text();
    const ms = performance.now() - started;
    if (res.status !== 200) return { ok: false, aborted: false, truncated: false, code: JSON.parse(text).error.router_code, ms };
    const s = summarize(text);
    if (s.done) return { ok: s.content === expected, aborted: false, truncated: s.content !== expected, ms };
    // Not done: it must say why, in-band.
    return { ok: false, aborted: false, truncated: s.errors.length === 0, code: s.errors[0]?.router_code, ms };
  } catch (err) {
    if (abort.signal.aborted) return { ok: false, aborted: true, truncated: false, ms: performance.now() - started };
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

// Each run may take minutes on two loaded cores: its time limit is generous (how long is not what it checks).
describe('soak', () => {
  let cluster: Cluster;
  beforeAll(async () => {
    cluster = await startCluster({
      workers: [{ id: 's1' }, { id: 's2' }, { id: 's3', failRate: 0.1 }, { id: 's4', tokenMs: 1 }],
      config: { 'cluster.requestRouting.firstChunkTimeoutMs': 1000, 'cluster.requestRouting.idleTimeoutMs': 1000 },
    });
  });
  afterAll(async () => cluster?.stop());

  test('soak - 10,000 streamed requests with random faults leave no timers, subscriptions or in-flight entries', async () => {
    const expected = await expectedTexts();
    const random = rng(42);
    const timersBefore = timeoutCount();
    const outcomes: Outcome[] = [];
    const TOTAL = 10_000;
    await pool(TOTAL, 32, async (i) => {
      if (i === 3000) cluster.workers.get('s2')!.kill('SIGKILL');
      if (i === 6000) await cluster.addWorker({ id: 's2' });
      const prompt = PROMPTS[Math.floor(random() * PROMPTS.length)];
      // About 2% of clients leave in the middle of their answer.
      const abortAfter = random() < 0.02 ? 1 + random() * 20 : undefined;
      outcomes.push(await streamOnce(cluster.url, prompt, expected.get(prompt)!, abortAfter));
    });
    expect(outcomes).toHaveLength(TOTAL);
    expect(outcomes.filter((o) => o.truncated)).toEqual([]);
    const finished = outcomes.filter((o) => !o.aborted);
    const failed = finished.filter((o) => !o.ok);
    // Failures are allowed only as honest errors, and rarely.
    expect(failed.length / finished.length).toBeLessThan(0.001);

    // Everything the requests held is released once they are done (aborted requests finish
    // their cleanup asynchronously: wait for it, then check each count).
    const deps = cluster.controller.deps;
    const metricsNow = async (): Promise<string> => (await fetch(`${cluster.url}/metrics`)).text();
    await waitFor(
      async () => {
        const m = await metricsNow();
        return deps.mux.size === 0 && metricValue(m, 'mlx_router_in_flight_requests') === 0 && timeoutCount() <= timersBefore;
      },
      'every request released',
      10_000,
    );
    expect(deps.mux.size).toBe(0);
    expect(deps.registry.online().every((w) => w.outstanding === 0)).toBe(true);
    const metrics = await metricsNow();
    expect(metrics).toMatch(/^mlx_router_in_flight_requests 0$/m);
    expect(metrics).toMatch(/^mlx_router_pending_replies 0$/m);
    expect(timeoutCount()).toBe(timersBefore);
  }, 600_000);
});

describe('chaos', () => {
  let cluster: Cluster;
  const DEADLINE_MS = 5000;
  beforeAll(async () => {
    cluster = await startCluster({
      workers: [{ id: 'c1', tokenMs: 1 }, { id: 'c2', tokenMs: 1 }, { id: 'c3', tokenMs: 1 }, { id: 'c4', tokenMs: 1 }],
      config: {
        'cluster.requestRouting.timeoutMs': DEADLINE_MS,
        'cluster.requestRouting.streamingTimeoutMs': DEADLINE_MS,
        'cluster.requestRouting.attemptTimeoutMs': 1000,
        'cluster.requestRouting.firstChunkTimeoutMs': 1000,
        'cluster.requestRouting.idleTimeoutMs': 1000,
      },
    });
  });
  afterAll(async () => cluster?.stop());

  test('chaos - mixed buffered and streamed load with one worker killed and one hung: every request ends before its deadline, none truncated, 99.9% succeed', async () => {
    const expected = await expectedTexts();
    const random = rng(7);
    const outcomes: Outcome[] = [];
    const TOTAL = 3000;
    await pool(TOTAL, 24, async (i) => {
      if (i === 800) cluster.workers.get('c1')!.kill('SIGKILL');
      if (i === 1500) cluster.workers.get('c2')!.kill('SIGSTOP');
      const prompt = PROMPTS[Math.floor(random() * PROMPTS.length)];
      if (random() < 0.5) {
        outcomes.push(await streamOnce(cluster.url, prompt, expected.get(prompt)!));
      } else {
        const started = performance.now();
        const res = await chat(cluster.url, { content: prompt, maxTokens: MAX_TOKENS });
        const ms = performance.now() - started;
        const ok = res.status === 200 && res.json.choices[0].message.content === expected.get(prompt);
        outcomes.push({ ok, aborted: false, truncated: res.status === 200 && !ok, code: res.json?.error?.router_code, ms });
      }
    });
    cluster.workers.get('c2')!.kill('SIGCONT');
    expect(outcomes).toHaveLength(TOTAL);
    expect(outcomes.filter((o) => o.truncated)).toEqual([]);
    // One outcome each, before the deadline. The client measures from before its fetch to the
    // end of the body, so on a loaded machine it adds scheduling slack; a second is far below what
    // a request that ignored its deadline would take (another attempt of up to 1 s, or a hang).
    expect(Math.max(...outcomes.map((o) => o.ms))).toBeLessThan(DEADLINE_MS + 1000);
    const ok = outcomes.filter((o) => o.ok).length;
    const codes: Record<string, number> = {};
    for (const o of outcomes) if (!o.ok) codes[o.code ?? 'none'] = (codes[o.code ?? 'none'] ?? 0) + 1;
    if (ok / TOTAL < 0.999) throw new Error(`succeeded ${ok} of ${TOTAL}; failures by code: ${JSON.stringify(codes)}`);
    expect(ok / TOTAL).toBeGreaterThanOrEqual(0.999);
  }, 600_000);
});
