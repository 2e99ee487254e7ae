/**
 * The reliability chain against real nats-server and worker processes: the plain path, session
 * affinity across a worker's death, "no responders" after a SIGKILL, and load. Workers are really killed (SIGKILL: no bye, heartbeats just stop).
 */
import { chat, MODEL, metricsText, metricValue, STEADY, startCluster, waitForNatsGone, type Cluster } from '../helpers/cluster';

type Reply = Awaited<ReturnType<typeof chat>>;

describe('healthy workers', () => {
  let cluster: Cluster;
  const ids = ['f1', 'f2', 'f3'];

  beforeAll(async () => {
    cluster = await startCluster({
      workers: [
        { id: 'f1', ttftMs: 5, maxConcurrent: 64 },
        { id: 'f2', ttftMs: 20, tokenMs: 1, maxConcurrent: 64 },
        { id: 'f3', ttftMs: 40, tokenMs: 2, maxConcurrent: 64 },
      ],
      config: STEADY,
    });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  test('routing - a request succeeds on the first try and says so in headers and metadata', async () => {
    const r = await chat(cluster.url, { headers: { 'x-request-id': 'first-try-1' } });
    expect(r.status).toBe(200);
    expect(r.json.id).toBe('chatcmpl-first-try-1');
    expect(r.json.usage.completion_tokens).toBe(16);
    expect(r.headers.get('x-request-id')).toBe('first-try-1');
    expect(r.headers.get('x-mlx-retries')).toBe('0');
    const worker = r.headers.get('x-mlx-worker');
    expect(ids).toContain(worker);
    const md = r.json.metadata;
    expect(md).toMatchObject({ requestId: 'first-try-1', selectedWorker: worker, retryCount: 0, failedWorkers: [], circuitBreakerTrips: 0, timeouts: 0 });
    expect(md.attempts).toEqual([{ attempt: 1, worker, outcome: 'success', code: null, durationMs: expect.any(Number) }]);
    expect(md.totalDurationMs).toBeGreaterThanOrEqual(md.attempts[0].durationMs);
  });

  test('load - 100 concurrent requests all succeed, spread over every worker, and leave nothing pending', async () => {
    const replies = await Promise.all(Array.from({ length: 100 }, (_, i) => chat(cluster.url, { content: `load ${i % 5}`, maxTokens: 12 })));
    for (const r of replies) {
      expect(r.status).toBe(200);
      expect(r.json.metadata.retryCount).toBe(0);
      expect(r.json.choices[0].message.content.split(' ')).toHaveLength(12);
    }
    expect(new Set(replies.map((r) => r.json.metadata.requestId)).size).toBe(100);
    // The same prompt gives the same answer whichever worker served it.
    for (let p = 0; p < 5; p++) {
      const texts = new Set(replies.filter((_, i) => i % 5 === p).map((r) => r.json.choices[0].message.content));
      expect(texts.size).toBe(1);
    }
    const perWorker = new Map<string, number>();
    for (const r of replies) perWorker.set(r.json.metadata.selectedWorker, (perWorker.get(r.json.metadata.selectedWorker) ?? 0) + 1);
    expect([...perWorker.keys()].sort()).toEqual(ids);
    for (const n of perWorker.values()) expect(n).toBeGreaterThanOrEqual(10);

    const m = await metricsText(cluster.url);
    expect(metricValue(m, 'mlx_router_in_flight_requests')).toBe(0);
    expect(metricValue(m, 'mlx_router_pending_replies')).toBe(0);
    for (const w of cluster.controller.deps.registry.forModel(MODEL)) expect(w.outstanding).toBe(0);
  });
});

describe('session affinity', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await startCluster({
      workers: [{ id: 's1' }, { id: 's2' }, { id: 's3' }],
      config: {
        // Round-robin, so requests without a session visibly rotate while session ones stay put.
        'cluster.requestRouting.strategy': 'round-robin',
        // Heartbeat silence must not be what moves the session: the "no responders" answer must.
        ...STEADY,
      },
    });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  const withHeader = (session: string) => ({ headers: { 'x-session-id': session } });
  const withBody = (session: string) => ({ body: { session_id: session } });

  test('session - requests with an x-session-id header stick to one worker while others rotate', async () => {
    const first = await chat(cluster.url, withHeader('alpha'));
    const home = first.json.metadata.selectedWorker as string;
    const plain: string[] = [];
    for (let i = 0; i < 3; i++) {
      const sticky = await chat(cluster.url, withHeader('alpha'));
      expect(sticky.status).toBe(200);
      expect(sticky.json.metadata.selectedWorker).toBe(home);
      plain.push((await chat(cluster.url)).json.metadata.selectedWorker);
    }
    expect(new Set(plain)).toEqual(new Set(['s1', 's2', 's3']));
  });

  test('session - a session_id body field sticks to one worker too', async () => {
    const first = await chat(cluster.url, withBody('beta'));
    const home = first.json.metadata.selectedWorker as string;
    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) {
      seen.add((await chat(cluster.url, withBody('beta'))).json.metadata.selectedWorker);
      await chat(cluster.url);
    }
    expect([...seen]).toEqual([home]);
  });

  test("session - when the session's worker is killed, the retry moves the session and later requests stay there", async () => {
    const home = (await chat(cluster.url, withHeader('gamma'))).json.metadata.selectedWorker as string;
    const killedAt = Date.now();
    await cluster.stopWorker(home, 'SIGKILL');
    await waitForNatsGone(cluster, home);
    const registry = cluster.controller.deps.registry;
    // Its heartbeats stopped, but not for long enough to be noticed: still a candidate.
    expect(registry.forModel(MODEL).map((w) => w.id)).toContain(home);

    const moved = await chat(cluster.url, withHeader('gamma'));
    expect(moved.status).toBe(200);
    const next = moved.json.metadata.selectedWorker as string;
    expect(next).not.toBe(home);
    expect(moved.headers.get('x-mlx-worker')).toBe(next);
    expect(moved.headers.get('x-mlx-retries')).toBe('1');
    expect(moved.json.metadata).toMatchObject({ retryCount: 1, failedWorkers: [home], timeouts: 0 });
    // Its own publish meets "no responders" (not_delivered), unless the liveness probe, which asks
    // the same question, answered first: then the attempt ends as "went offline during the request".
    expect(moved.json.metadata.attempts).toEqual([
      { attempt: 1, worker: home, outcome: expect.stringMatching(/^(not_delivered|ambiguous)$/), code: 'WORKER_UNAVAILABLE', durationMs: expect.any(Number) },
      { attempt: 2, worker: next, outcome: 'success', code: null, durationMs: expect.any(Number) },
    ]);
    // Marked offline by a "no responders" answer, well before its silence would have said so.
    expect(registry.get(home)?.gone).toBe(true);
    expect(registry.forModel(MODEL).map((w) => w.id)).not.toContain(home);
    expect(Date.now() - killedAt).toBeLessThan(cluster.config.discovery.offlineAfterMs);

    for (let i = 0; i < 4; i++) {
      const later = await chat(cluster.url, withHeader('gamma'));
      expect(later.json.metadata).toMatchObject({ selectedWorker: next, retryCount: 0 });
    }
  });
});

describe('a worker killed without warning', () => {
  let cluster: Cluster;
  const backoffMs = 10_000;

  beforeAll(async () => {
    cluster = await startCluster({
      workers: [{ id: 'a-victim' }, { id: 'b' }, { id: 'c' }],
      config: {
        // Round-robin orders by id: the first request is sent to a-victim.
        'cluster.requestRouting.strategy': 'round-robin',
        ...STEADY,
        // A backoff would be uniform in [0, 10 s]: its absence is visible in the durations.
        'cluster.requestRouting.retry.retryDelayMs': backoffMs,
        'cluster.requestRouting.retry.maxRetryDelayMs': backoffMs,
      },
    });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  test('no responders - requests right after a SIGKILL succeed elsewhere at once and the worker is marked offline', async () => {
    const registry = cluster.controller.deps.registry;
    const killedAt = Date.now();
    await cluster.stopWorker('a-victim', 'SIGKILL');
    await waitForNatsGone(cluster, 'a-victim');
    expect(registry.forModel(MODEL).map((w) => w.id)).toContain('a-victim');

    // Three at once take round-robin turns 0, 1 and 2: exactly the first is sent to a-victim
    // (later turns skip it once it is marked offline, and turn 3 never comes).
    const replies: Reply[] = await Promise.all(Array.from({ length: 3 }, (_, i) => chat(cluster.url, { content: `after kill ${i}` })));
    for (const r of replies) {
      expect(r.status).toBe(200);
      expect(r.json.metadata.selectedWorker).not.toBe('a-victim');
    }
    const hit = replies.filter((r) => r.json.metadata.attempts[0].worker === 'a-victim');
    expect(hit).toHaveLength(1);
    const md = hit[0].json.metadata;
    expect(md.retryCount).toBe(1);
    expect(md.failedWorkers).toEqual(['a-victim']);
    expect(md.attempts[0]).toMatchObject({ outcome: 'not_delivered', code: 'WORKER_UNAVAILABLE' });
    // Retried at once: the time outside the two attempts is overhead, not a backoff.
    const attemptsMs = md.attempts.reduce((n: number, a: { durationMs: number }) => n + a.durationMs, 0);
    expect(md.totalDurationMs - attemptsMs).toBeLessThan(500);
    expect(registry.get('a-victim')?.gone).toBe(true);
    expect(Date.now() - killedAt).toBeLessThan(cluster.config.discovery.offlineAfterMs);

    // Offline now: later requests do not even try it, and its breaker was not charged.
    for (let i = 0; i < 4; i++) {
      const r = await chat(cluster.url);
      expect(r.json.metadata.retryCount).toBe(0);
    }
    const m = await metricsText(cluster.url);
    expect(metricValue(m, 'mlx_router_breaker_state', { worker: 'a-victim' }) ?? 0).toBe(0);
    expect(metricValue(m, 'mlx_router_attempts_total', { outcome: 'not_delivered' })).toBe(1);
  });
});
