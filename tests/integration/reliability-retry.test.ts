/**
 * The reliability chain against real nats-server and worker processes: retries and the retry
 * budget. Faults are real: workers started with --fail-rate fail
 * every (or every other) request in their engine, before the first token.
 */
import { chat, metricsText, metricValue, STEADY, startCluster, waitFor, type Cluster } from '../helpers/cluster';

type Reply = Awaited<ReturnType<typeof chat>>;

/** What every answer says about itself, whatever path it took. */
function expectConsistentMetadata(r: Reply): void {
  const md = r.json.metadata;
  expect(md.requestId).toBe(r.headers.get('x-request-id'));
  expect(md.selectedWorker).toBe(r.headers.get('x-mlx-worker'));
  expect(String(md.retryCount)).toBe(r.headers.get('x-mlx-retries'));
  expect(md.attempts).toHaveLength(md.retryCount + 1);
  expect(md.attempts[md.attempts.length - 1]).toMatchObject({ worker: md.selectedWorker, outcome: 'success', code: null });
}

describe('a failing worker beside a healthy one', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await startCluster({
      workers: [
        { id: 'a-bad', failRate: 1 },
        { id: 'b-good' },
      ],
      // Round-robin orders workers by id, so a-bad takes the first turn and every other one after.
      config: { ...STEADY, 'cluster.requestRouting.strategy': 'round-robin' },
    });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  test('retry - a request that fails on one worker succeeds on a different worker', async () => {
    const replies: Reply[] = [];
    for (let i = 0; i < 4; i++) replies.push(await chat(cluster.url, { content: `question ${i}`, maxTokens: 8 }));

    for (const r of replies) {
      expect(r.status).toBe(200);
      expect(r.json.choices[0].message.content.split(' ')).toHaveLength(8);
      expect(r.headers.get('x-mlx-worker')).toBe('b-good');
      expectConsistentMetadata(r);
    }
    // Turns 0 and 2 met a-bad first; turns 1 and 3 went straight to b-good.
    const retried = replies.filter((r) => r.json.metadata.retryCount === 1);
    const direct = replies.filter((r) => r.json.metadata.retryCount === 0);
    expect(retried).toHaveLength(2);
    expect(direct).toHaveLength(2);
    for (const r of retried) {
      expect(r.headers.get('x-mlx-retries')).toBe('1');
      expect(r.json.metadata).toMatchObject({ retryCount: 1, selectedWorker: 'b-good', failedWorkers: ['a-bad'], circuitBreakerTrips: 0, timeouts: 0 });
      expect(r.json.metadata.attempts).toEqual([
        { attempt: 1, worker: 'a-bad', outcome: 'worker_failure', code: 'WORKER_ERROR', durationMs: expect.any(Number) },
        { attempt: 2, worker: 'b-good', outcome: 'success', code: null, durationMs: expect.any(Number) },
      ]);
    }
    for (const r of direct) expect(r.json.metadata).toMatchObject({ retryCount: 0, failedWorkers: [], circuitBreakerTrips: 0, timeouts: 0 });

    const m = await metricsText(cluster.url);
    expect(metricValue(m, 'mlx_router_retries_total')).toBe(2);
    expect(metricValue(m, 'mlx_router_attempts_total', { outcome: 'worker_failure' })).toBe(2);
    expect(metricValue(m, 'mlx_router_attempts_total', { outcome: 'success' })).toBe(4);
    expect(metricValue(m, 'mlx_router_requests_total', { status: '200', code: '', stream: 'false' })).toBe(4);
  });
});

describe('every worker failing', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await startCluster({
      workers: [{ id: 'x1', failRate: 1 }, { id: 'x2', failRate: 1 }],
      // A small budget, so that one outage request visibly spends it (the arithmetic is below).
      config: { ...STEADY, 'cluster.requestRouting.retry.budget.maxTokens': 10 },
    });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  // The two tests share the controller's retry budget (10 tokens): the first spends 3 of them.
  test('retry - all retries exhausted is a 502 ALL_RETRIES_EXHAUSTED listing every attempt', async () => {
    const r = await chat(cluster.url);
    expect(r.status).toBe(502);
    expect(r.headers.get('x-mlx-retries')).toBe('2');
    expect(r.headers.get('x-request-id')).toMatch(/.+/);
    expect(r.json.error).toMatchObject({ router_code: 'ALL_RETRIES_EXHAUSTED', type: 'server_error', param: null });
    const attempts = r.json.error.attempts as Array<{ attempt: number; worker: string; outcome: string; code: string }>;
    expect(attempts.map((a) => a.attempt)).toEqual([1, 2, 3]);
    for (const a of attempts) expect(a).toMatchObject({ outcome: 'worker_failure', code: 'WORKER_ERROR' });
    // Never the same worker twice while an untried one remains.
    expect(new Set([attempts[0].worker, attempts[1].worker])).toEqual(new Set(['x1', 'x2']));
    expect(['x1', 'x2']).toContain(attempts[2].worker);
    for (const a of attempts) expect(r.json.error.message).toContain(`#${a.attempt} ${a.worker}: WORKER_ERROR`);
  });

  test('retry budget - once an outage has spent it, a failure is not retried (503 RETRY_BUDGET_EXHAUSTED)', async () => {
    // 10 - 3 = 7 tokens left: this request's first failure leaves 6 (> half: retry), its second 5 (stop).
    const r = await chat(cluster.url);
    expect(r.status).toBe(503);
    expect(r.json.error.router_code).toBe('RETRY_BUDGET_EXHAUSTED');
    expect(r.json.error.attempts).toHaveLength(2);
    expect(r.headers.get('retry-after')).toBe('1');
    const m = await metricsText(cluster.url);
    expect(metricValue(m, 'mlx_router_retries_total')).toBe(3);
    expect(metricValue(m, 'mlx_router_requests_total', { status: '503', code: 'RETRY_BUDGET_EXHAUSTED', stream: 'false' })).toBe(1);
  });
});

describe('no workers', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await startCluster({ config: STEADY });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  test('no workers - an empty cluster answers 503 NO_WORKERS_AVAILABLE with Retry-After', async () => {
    const r = await chat(cluster.url);
    expect(r.status).toBe(503);
    expect(r.json.error).toMatchObject({ router_code: 'NO_WORKERS_AVAILABLE', type: 'server_error' });
    expect(r.headers.get('retry-after')).toBe('1');
  });

  test('no workers - after the last worker leaves, requests get 503 NO_WORKERS_AVAILABLE with Retry-After', async () => {
    await cluster.addWorker({ id: 'only' });
    expect((await chat(cluster.url)).status).toBe(200);
    await cluster.stopWorker('only');
    await waitFor(() => cluster.controller.deps.registry.online().length === 0, 'the registry to see the bye');
    const r = await chat(cluster.url);
    expect(r.status).toBe(503);
    expect(r.json.error.router_code).toBe('NO_WORKERS_AVAILABLE');
    expect(r.headers.get('retry-after')).toBe('1');
    // Nothing was sent anywhere: the one attempt found no worker to try.
    expect(r.json.error.attempts).toEqual([{ attempt: 1, worker: null, outcome: 'no_capacity', code: 'NO_WORKERS_AVAILABLE', durationMs: expect.any(Number) }]);
    const ready = await fetch(`${cluster.url}/ready`);
    expect(ready.status).toBe(503);
  });
});

describe('mixed success and failure', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await startCluster({
      workers: [{ id: 'flaky', failRate: 0.5 }, { id: 'ok1' }, { id: 'ok2' }],
      config: {
        ...STEADY,
        'cluster.requestRouting.strategy': 'round-robin',
        // One worker in three failing half the time is ~17% failed attempts, more than a budget
        // refilling 0.1 per success sustains for long. This scenario is about retries hiding a
        // flaky worker, so the budget is made large enough never to interfere.
        'cluster.requestRouting.retry.budget.maxTokens': 1000,
      },
    });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  test('retry - with one worker failing half its requests, every request still succeeds and retries are recorded', async () => {
    const replies: Reply[] = [];
    // Five at a time: enough overlap to be realistic, and 45 requests give flaky ~15 tries.
    for (let batch = 0; batch < 9; batch++) {
      replies.push(...(await Promise.all(Array.from({ length: 5 }, (_, i) => chat(cluster.url, { content: `q${batch}-${i}`, maxTokens: 4 })))));
    }
    for (const r of replies) {
      expect(r.status).toBe(200);
      expectConsistentMetadata(r);
    }
    const retried = replies.filter((r) => r.json.metadata.retryCount > 0);
    // P(flaky never failed in ~15 tries) is about 3e-5.
    expect(retried.length).toBeGreaterThan(0);
    for (const r of retried) {
      const md = r.json.metadata;
      expect(md.retryCount).toBe(1);
      expect(md.failedWorkers).toEqual(['flaky']);
      expect(md.selectedWorker).not.toBe('flaky');
      expect(md.attempts[0]).toMatchObject({ worker: 'flaky', outcome: 'worker_failure', code: 'WORKER_ERROR' });
    }
    const totalRetries = replies.reduce((n, r) => n + r.json.metadata.retryCount, 0);
    const m = await metricsText(cluster.url);
    expect(metricValue(m, 'mlx_router_retries_total')).toBe(totalRetries);
    expect(metricValue(m, 'mlx_router_attempts_total', { outcome: 'worker_failure' })).toBe(totalRetries);
    expect(metricValue(m, 'mlx_router_requests_total', { status: '200', code: '', stream: 'false' })).toBe(45);
  });
});
