/**
 * The operator's cluster API against real nats-server and worker processes: GET /v1/cluster,
 * /v1/cluster/workers, /v1/cluster/stats, the /v1/cluster/events feed, and the admin actions
 * (drain and undrain over the worker's control subject, breaker reset, a model out of rotation).
 */
import { Controller } from '../../src/controller/controller';
import { silentLogger } from '../../src/logger';
import { chat, chatStream, MODEL, STEADY, startCluster, testConfig, waitFor, type Cluster } from '../helpers/cluster';
import { followEvents, type EventFeed } from '../helpers/events';

const KEY = 'test-admin-key-0123456789';
const OTHER_MODEL = 'other-model';

async function get(url: string, path: string): Promise<{ status: number; headers: Headers; json: any }> {
  const res = await fetch(`${url}${path}`);
  return { status: res.status, headers: res.headers, json: await res.json() };
}

async function post(url: string, path: string, options: { key?: string; body?: unknown } = {}): Promise<{ status: number; headers: Headers; json: any }> {
  const res = await fetch(`${url}${path}`, {
    method: 'POST',
    headers: { ...(options.key ? { authorization: `Bearer ${options.key}` } : {}), ...(options.body ? { 'content-type': 'application/json' } : {}) },
    body: options.body ? JSON.stringify(options.body) : undefined,
  });
  return { status: res.status, headers: res.headers, json: await res.json() };
}

async function workerView(url: string, id: string): Promise<any> {
  return (await get(url, '/v1/cluster/workers')).json.data.find((w: any) => w.id === id);
}

describe('cluster API', () => {
  let cluster: Cluster;
  let feed: EventFeed;

  beforeAll(async () => {
    cluster = await startCluster({
      workers: [{ id: 'a-bad', failRate: 1 }, { id: 'b-good', models: [MODEL, OTHER_MODEL], tokenMs: 2 }],
      config: {
        ...STEADY,
        'cluster.requestRouting.strategy': 'round-robin',
        'cluster.requestRouting.circuitBreaker.failureThreshold': 2,
        'cluster.requestRouting.circuitBreaker.timeoutMs': 60_000,
        'cluster.requestRouting.circuitBreaker.maxTimeoutMs': 120_000,
        'cluster.admin.key': KEY,
      },
    });
    feed = await followEvents(cluster.url);
  });

  afterAll(async () => {
    await feed?.close();
    await cluster?.stop();
  });

  test('cluster - GET /v1/cluster describes this controller, NATS and the pipeline, and shows no secret', async () => {
    const { status, json } = await get(cluster.url, '/v1/cluster');
    expect(status).toBe(200);
    expect(json.controller.id).toMatch(/\S+/);
    expect(json.controller.pid).toBe(process.pid);
    expect(json.controller.uptimeSeconds).toBeGreaterThanOrEqual(0);
    expect(json.nats).toMatchObject({ connected: true, servers: [cluster.natsUrl] });
    expect(json.pipeline).toEqual(cluster.config.cluster.pipeline);
    expect(json.workers).toEqual({ known: 2, online: 2 });
    expect(json.config).toMatchObject({ strategy: 'round-robin', admin: true, circuitBreaker: { failureThreshold: 2 } });
    expect(JSON.stringify(json)).not.toContain(KEY);
  });

  test('cluster - workers list load, breaker, recent TTFT and tokens/s, errors by code and heartbeat age', async () => {
    // Streams on b-good give TTFT samples; a-bad fails twice (round-robin) and its breaker opens.
    for (let i = 0; i < 4; i++) {
      const r = await chatStream(cluster.url, { content: `w${i}`, maxTokens: 12 });
      expect(r.status).toBe(200);
    }
    const bad = await waitFor(async () => {
      const w = await workerView(cluster.url, 'a-bad');
      return w?.breaker.state === 'open' ? w : undefined;
    }, 'a-bad breaker open');
    expect(bad).toMatchObject({ online: true, state: 'ready', engineHealthy: true, models: [MODEL], host: expect.any(String), pid: expect.any(Number) });
    expect(bad.errors.WORKER_ERROR).toBeGreaterThanOrEqual(2);
    expect(bad.attempts.worker_failure).toBeGreaterThanOrEqual(2);
    expect(bad.breaker.next.to).toBe('half-open');
    expect(bad.breaker.next.inMs).toBeGreaterThan(30_000);
    const good = await workerView(cluster.url, 'b-good');
    expect(good).toMatchObject({ online: true, state: 'ready', breaker: { state: 'closed', failures: 0, next: { to: 'open', afterFailures: 2 } } });
    expect(good.slots).toEqual({ max: 8, inFlight: 0, own: 0, others: 0, free: 8 });
    expect(good.ttftMs).toEqual(expect.any(Number));
    expect(good.tokensPerSecond).toBeGreaterThan(0);
    expect(good.attempts.success).toBeGreaterThanOrEqual(4);
    expect(good.errors).toEqual({});
    // Heartbeats every 100 ms: the age stays well under the 5 s offline limit.
    expect(good.lastHeartbeatAgeMs).toBeLessThan(2500);
  });

  test('cluster - stats give request counts and latency quantiles per time bucket', async () => {
    const { status, json } = await get(cluster.url, '/v1/cluster/stats?windowSeconds=60');
    expect(status).toBe(200);
    expect(json.series.length).toBeGreaterThanOrEqual(12);
    const total = json.series.reduce((n: number, p: any) => n + p.requests, 0);
    expect(total).toBeGreaterThanOrEqual(4);
    const busy = json.series.filter((p: any) => p.requests > 0);
    for (const p of busy) expect(p.p99Ms).toBeGreaterThanOrEqual(p.p50Ms);
    expect(busy.some((p: any) => p.ttftP50Ms !== null)).toBe(true);
    const bad = await get(cluster.url, '/v1/cluster/stats?windowSeconds=0');
    expect(bad.status).toBe(400);
    expect(bad.json.error).toMatchObject({ router_code: 'REQUEST_VALIDATION_FAILED', param: 'windowSeconds' });
  });

  test('cluster - the event feed carries breaker transitions and retries with request ids', async () => {
    expect(feed.status).toBe(200);
    expect(feed.contentType).toMatch(/^text\/event-stream/);
    await waitFor(() => feed.events.find((e) => e.type === 'breaker' && e.worker === 'a-bad' && e.to === 'open'), 'breaker event');
    const retry = await waitFor(() => feed.events.find((e) => e.type === 'retry' && e.worker === 'a-bad'), 'retry event');
    expect(retry).toMatchObject({ code: 'WORKER_ERROR', attempt: 2, requestId: expect.stringMatching(/^req-/) });
    // Sequence numbers only grow.
    const seqs = feed.events.map((e) => e.seq);
    expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);
  });

  test('cluster - a new feed client gets recent events replayed, and only those after Last-Event-ID', async () => {
    const replay = await followEvents(cluster.url);
    try {
      await waitFor(() => replay.events.some((e) => e.type === 'worker.up' && e.worker === 'b-good'), 'worker.up replayed');
    } finally {
      await replay.close();
    }
    const last = replay.events[replay.events.length - 1].seq;
    const after = await followEvents(cluster.url, { 'last-event-id': String(last) });
    try {
      const r = await chat(cluster.url, { content: 'after' });
      expect(r.status).toBe(200);
      // Nothing new for an operator from one clean request: the replay must be empty, but the
      // feed stays open (a worker event would arrive). Add one: a new worker comes up.
      await cluster.addWorker({ id: 'c-late' });
      const up = await waitFor(() => after.events.find((e) => e.type === 'worker.up' && e.worker === 'c-late'), 'c-late up on the feed');
      expect(after.events.every((e) => e.seq > last)).toBe(true);
      expect(up.seq).toBeGreaterThan(last);
    } finally {
      await after.close();
    }
    await cluster.stopWorker('c-late');
    await waitFor(() => feed.events.find((e) => e.type === 'worker.down' && e.worker === 'c-late'), 'c-late down on the feed');
  });

  test('admin - 401 without a key, 403 with a wrong one, OpenAI-shaped with x-request-id', async () => {
    const none = await post(cluster.url, '/v1/cluster/workers/b-good/drain');
    expect(none.status).toBe(401);
    expect(none.json.error).toMatchObject({ router_code: 'ADMIN_UNAUTHORIZED', type: 'invalid_request_error', param: null, message: expect.any(String) });
    expect(none.headers.get('x-request-id')).toMatch(/\S/);
    const wrong = await post(cluster.url, '/v1/cluster/workers/b-good/drain', { key: 'not-the-admin-key-at-all' });
    expect(wrong.status).toBe(403);
    expect(wrong.json.error).toMatchObject({ router_code: 'ADMIN_FORBIDDEN', type: 'invalid_request_error' });
    expect((await workerView(cluster.url, 'b-good')).state).toBe('ready');
    const unknown = await post(cluster.url, '/v1/cluster/workers/nobody/drain', { key: KEY });
    expect(unknown.status).toBe(404);
    expect(unknown.json.error.router_code).toBe('NOT_FOUND');
  });

  test('admin - a breaker reset closes an open breaker and the worker is offered traffic again', async () => {
    expect((await workerView(cluster.url, 'a-bad')).breaker.state).toBe('open');
    const r = await post(cluster.url, '/v1/cluster/workers/a-bad/breaker/reset', { key: KEY });
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({ worker: 'a-bad', from: 'open', state: 'closed' });
    expect((await workerView(cluster.url, 'a-bad')).breaker).toMatchObject({ state: 'closed', failures: 0 });
    await waitFor(() => feed.events.find((e) => e.type === 'admin' && e.action === 'breaker.reset' && e.target === 'a-bad'), 'admin event');
    await waitFor(() => feed.events.find((e) => e.type === 'breaker' && e.worker === 'a-bad' && e.from === 'open' && e.to === 'closed'), 'open -> closed');
    // Round-robin offers it the next requests again: it fails them and the retry saves them.
    const replies = [await chat(cluster.url, { content: 'r1' }), await chat(cluster.url, { content: 'r2' })];
    expect(replies.every((x) => x.status === 200)).toBe(true);
    expect(replies.some((x) => x.json.metadata.failedWorkers.includes('a-bad'))).toBe(true);
  });
});

describe('admin drain', () => {
  let cluster: Cluster;
  let second: Controller | undefined;

  beforeAll(async () => {
    cluster = await startCluster({
      workers: [{ id: 'd-one', tokenMs: 10, models: [MODEL, OTHER_MODEL] }, { id: 'd-two', tokenMs: 10 }],
      config: { ...STEADY, 'cluster.admin.key': KEY, 'cluster.requestRouting.workerWaitTimeoutMs': 200 },
    });
    // Another controller on the same NATS: it must see a drain it did not send.
    second = await Controller.start({ config: testConfig({ ...STEADY, 'nats.servers': [cluster.natsUrl] }), log: silentLogger() });
  });

  afterAll(async () => {
    await second?.stop();
    await cluster?.stop();
  });

  test('admin - without cluster.admin.key admin routes answer 403 (off), even with a token', async () => {
    const r = await post(second!.url, '/v1/cluster/workers/d-one/drain', { key: KEY });
    expect(r.status).toBe(403);
    expect(r.json.error.router_code).toBe('ADMIN_FORBIDDEN');
    expect(r.json.error.message).toMatch(/cluster\.admin\.key/);
  });

  test('admin - drain lets in-flight work finish, takes no new work, shows draining on every controller; undrain brings it back', async () => {
    // A 60-token stream at 10 ms a token: about 0.6 s in flight when the drain arrives.
    let served = '';
    const feed = await followEvents(cluster.url);
    let drained: Promise<{ status: number; json: any }> | undefined;
    const stream = chatStream(cluster.url, { maxTokens: 60, content: 'long one' }, (_e, i) => {
      if (i === 0) {
        served = cluster.controller.deps.registry.all().find((w) => w.outstanding > 0)!.id;
        drained = post(cluster.url, `/v1/cluster/workers/${served}/drain`, { key: KEY });
      }
    });
    const done = await stream;
    expect(done.status).toBe(200);
    expect(done.text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(done.headers.get('x-mlx-worker')).toBe(served);
    const d = await drained!;
    expect(d.status).toBe(200);
    expect(d.json).toMatchObject({ worker: served, action: 'drain', state: 'draining' });
    const other = served === 'd-one' ? 'd-two' : 'd-one';

    // No new work for the drained worker, from either controller.
    for (let i = 0; i < 6; i++) {
      const r = await chat(cluster.url, { content: `after ${i}` });
      expect(r.status).toBe(200);
      expect(r.json.metadata.selectedWorker).toBe(other);
      expect(r.json.metadata.failedWorkers).toEqual([]);
    }
    await waitFor(() => second!.deps.registry.get(served)?.state === 'draining', 'the other controller sees draining');
    const r2 = await chat(second!.url, { content: 'via second' });
    expect(r2.json.metadata.selectedWorker).toBe(other);
    const view = await workerView(cluster.url, served);
    expect(view).toMatchObject({ online: true, state: 'draining' });
    await waitFor(() => feed.events.find((e) => e.type === 'worker.state' && e.worker === served && e.state === 'draining'), 'draining on the feed');
    expect(feed.events.some((e) => e.type === 'admin' && e.action === 'drain' && e.target === served)).toBe(true);
    await feed.close();

    const u = await post(cluster.url, `/v1/cluster/workers/${served}/undrain`, { key: KEY });
    expect(u.status).toBe(200);
    expect(u.json.state).toBe('ready');
    await waitFor(() => second!.deps.registry.get(served)?.state === 'ready', 'the other controller sees ready');
    // Back in rotation: drain the other one, and traffic goes to it.
    expect((await post(cluster.url, `/v1/cluster/workers/${other}/drain`, { key: KEY })).status).toBe(200);
    const back = await chat(cluster.url, { content: 'back' });
    expect(back.json.metadata.selectedWorker).toBe(served);
    expect((await post(cluster.url, `/v1/cluster/workers/${other}/undrain`, { key: KEY })).status).toBe(200);
  });

  test('admin - a model out of rotation gets no traffic on any worker; other models still do; undrain restores it', async () => {
    const out = await post(cluster.url, '/v1/cluster/models/drain', { key: KEY, body: { model: MODEL } });
    expect(out.status).toBe(200);
    expect(out.json.workers.map((w: any) => w.worker).sort()).toEqual(['d-one', 'd-two']);
    expect(out.json.workers.every((w: any) => w.ok && w.drainingModels.includes(MODEL))).toBe(true);
    const refused = await chat(cluster.url, { content: 'model out' });
    expect(refused.status).toBe(503);
    expect(refused.json.error.router_code).toBe('NO_WORKERS_AVAILABLE');
    const otherModel = await chat(cluster.url, { content: 'other model', body: { model: OTHER_MODEL } });
    expect(otherModel.status).toBe(200);
    expect(otherModel.json.metadata.selectedWorker).toBe('d-one');
    expect((await workerView(cluster.url, 'd-two')).drainingModels).toEqual([MODEL]);
    const back = await post(cluster.url, '/v1/cluster/models/undrain', { key: KEY, body: { model: MODEL } });
    expect(back.status).toBe(200);
    expect((await chat(cluster.url, { content: 'model back' })).status).toBe(200);
    const missing = await post(cluster.url, '/v1/cluster/models/drain', { key: KEY, body: {} });
    expect(missing.status).toBe(400);
  });
});
