/**
 * The HTTP front: validation, error bodies and headers, health/ready/models/metrics. Nothing a
 * client sends can crash the controller.
 */
import { MODEL, startCluster, type Cluster } from '../helpers/cluster';

let cluster: Cluster;
beforeAll(async () => {
  cluster = await startCluster({ workers: [{ id: 'h1' }], config: { 'controller.bodyLimitBytes': 4096, 'cluster.requestRouting.workerWaitTimeoutMs': 300 } });
});
afterAll(async () => cluster?.stop());

async function post(body: string, headers: Record<string, string> = { 'content-type': 'application/json' }) {
  const res = await fetch(`${cluster.url}/v1/chat/completions`, { method: 'POST', headers, body });
  return { status: res.status, headers: res.headers, json: (await res.json()) as any };
}

test('http - malformed JSON is a 400 OpenAI error naming the body, with the client request id echoed', async () => {
  const r = await post('{"model": ', { 'content-type': 'application/json', 'x-request-id': 'client-id-1' });
  expect(r.status).toBe(400);
  expect(r.json).toEqual({ error: { message: expect.stringMatching(/not valid JSON/), type: 'invalid_request_error', param: 'body', code: 'request_validation_failed', router_code: 'REQUEST_VALIDATION_FAILED' } });
  expect(r.headers.get('x-request-id')).toBe('client-id-1');
});

test.each([
  ['missing model', 'model', { messages: [{ role: 'user', content: 'x' }] }],
  ['messages not an array', 'messages', { model: MODEL, messages: 'x' }],
  ['bad role', 'messages[0].role', { model: MODEL, messages: [{ role: 'robot', content: 'x' }] }],
  ['stream not boolean', 'stream', { model: MODEL, messages: [{ role: 'user', content: 'x' }], stream: 'yes' }],
  ['temperature out of range', 'temperature', { model: MODEL, messages: [{ role: 'user', content: 'x' }], temperature: 9 }],
])('http - %s is a 400 naming %s', async (_name, param, body) => {
  const r = await post(JSON.stringify(body));
  expect(r.status).toBe(400);
  expect(r.json.error).toMatchObject({ router_code: 'REQUEST_VALIDATION_FAILED', param });
});

test('http - a body without content-type is still read as JSON (curl -d)', async () => {
  const r = await post(JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: 2 }), {});
  expect(r.status).toBe(200);
  expect(r.json.choices[0].message.content.length).toBeGreaterThan(0);
});

test('http - a body over the limit is a 413', async () => {
  const r = await post(JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x'.repeat(5000) }] }));
  expect(r.status).toBe(413);
  expect(r.json.error.router_code).toBe('REQUEST_TOO_LARGE');
});

test('http - an unknown route is a 404 JSON error with a request id', async () => {
  const res = await fetch(`${cluster.url}/v2/nothing`);
  expect(res.status).toBe(404);
  expect(((await res.json()) as any).error.router_code).toBe('NOT_FOUND');
  expect(res.headers.get('x-request-id')).toMatch(/^req-/);
});

test('http - a successful answer carries x-request-id, x-mlx-worker, x-mlx-retries and metadata', async () => {
  const r = await post(JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: 2 }), {
    'content-type': 'application/json',
    'x-request-id': 'mine-42',
  });
  expect(r.status).toBe(200);
  expect(r.headers.get('x-request-id')).toBe('mine-42');
  expect(r.headers.get('x-mlx-worker')).toBe('h1');
  expect(r.headers.get('x-mlx-retries')).toBe('0');
  expect(r.json.metadata).toMatchObject({ requestId: 'mine-42', selectedWorker: 'h1', retryCount: 0 });
  expect(r.json.metadata.totalDurationMs).toBeGreaterThan(0);
});

test('http - health, ready, models and metrics answer', async () => {
  expect((await fetch(`${cluster.url}/health`)).status).toBe(200);
  const ready = await fetch(`${cluster.url}/ready`);
  expect(ready.status).toBe(200);
  expect(await ready.json()).toMatchObject({ nats: 'connected', workersOnline: 1 });
  expect(((await (await fetch(`${cluster.url}/v1/models`)).json()) as any).data.map((m: any) => m.id)).toEqual([MODEL]);
  const metrics = await (await fetch(`${cluster.url}/metrics`)).text();
  expect(metrics).toMatch(/mlx_router_requests_total\{status="200",code="",stream="false"\} \d+/);
  expect(metrics).toMatch(/mlx_router_workers_online 1/);
});

test('http - ready turns 503 when the last worker leaves', async () => {
  await cluster.stopWorker('h1');
  const res = await fetch(`${cluster.url}/ready`);
  expect(res.status).toBe(503);
  expect(await res.json()).toMatchObject({ workersOnline: 0 });
  // Its model is still known, so the request waits workerWaitTimeoutMs (300 ms) for it to return.
  const started = performance.now();
  const r = await post(JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x' }] }));
  expect(performance.now() - started).toBeGreaterThanOrEqual(290);
  expect(r.status).toBe(503);
  expect(r.json.error.router_code).toBe('NO_WORKERS_AVAILABLE');
  expect(r.headers.get('retry-after')).toBe('1');
});
