/**
 * Client API keys against a real controller, nats-server and workers (docs/security.md): keys
 * checked first (401 before the body is read), 403 for a model outside the key's list and for
 * the operator endpoints without admin, 429 with a correct Retry-After for requests and tokens
 * per minute and requests at once, priority classes under saturation, early 503 for a request
 * that could not be served in time, `mlx-router keys create`, and the warning of a controller
 * that listens beyond loopback without keys.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKey, hashKey, type ApiKeyEntry } from '../../src/api-keys';
import { loadConfig } from '../../src/config';
import WebSocket from 'ws';
import { startNatsServer } from '../../src/nats-server';
import { chat, chatStream, CLI, MODEL, spawnCli, STEADY, startCluster, waitFor, type Cluster } from '../helpers/cluster';

const OTHER = 'other-model';
const keys = {
  plain: generateKey(),
  onlyMain: generateKey(),
  rpm: generateKey(),
  tpm: generateKey(),
  conc: generateKey(),
  admin: generateKey(),
};
const entries: ApiKeyEntry[] = [
  { id: 'plain', hash: hashKey(keys.plain) },
  { id: 'only-main', hash: hashKey(keys.onlyMain), models: [MODEL] },
  { id: 'rpm3', hash: hashKey(keys.rpm), rpm: 3 },
  { id: 'tpm20', hash: hashKey(keys.tpm), tpm: 20 },
  { id: 'conc2', hash: hashKey(keys.conc), concurrency: 2 },
  { id: 'ops', hash: hashKey(keys.admin), admin: true },
];
const bearer = (key: string) => ({ authorization: `Bearer ${key}` });

async function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: Headers; json: any }> {
  const res = await fetch(url, { headers });
  const text = await res.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, headers: res.headers, json };
}

function expectError(r: { status: number; headers: Headers; json: any }, status: number, type: string, code: string): void {
  expect(r.status).toBe(status);
  expect(r.headers.get('x-request-id')).toMatch(/\S/);
  expect(r.headers.get('content-type')).toMatch(/^application\/json/);
  expect(r.json.error).toMatchObject({ type, code });
  expect(typeof r.json.error.message).toBe('string');
}

describe('keys, models, limits', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await startCluster({
      workers: [
        { id: 'k-main', maxConcurrent: 16, tokenMs: 1 },
        { id: 'k-other', models: [OTHER], maxConcurrent: 4, tokenMs: 40 },
      ],
      config: { ...STEADY, 'cluster.auth.keys': entries },
    });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  test('keys - without a key 401 MISSING_API_KEY, with an unknown one 401 INVALID_API_KEY, before the body is read', async () => {
    expectError(await chat(cluster.url), 401, 'authentication_error', 'MISSING_API_KEY');
    expectError(await chat(cluster.url, { headers: bearer(generateKey()) }), 401, 'authentication_error', 'INVALID_API_KEY');
    expectError(await chat(cluster.url, { headers: { 'x-api-key': 'mlxr-nope' } }), 401, 'authentication_error', 'INVALID_API_KEY');
    // A body that is not JSON: without a key the answer is 401, not the parser's 400.
    const res = await fetch(`${cluster.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{not json' });
    expect(res.status).toBe(401);
    expect(((await res.json()) as any).error.code).toBe('MISSING_API_KEY');
    // Liveness and readiness stay open.
    expect((await get(`${cluster.url}/health`)).status).toBe(200);
    expect((await get(`${cluster.url}/ready`)).status).toBe(200);
  });

  test('keys - Authorization: Bearer and x-api-key both work; the key id is in the metadata, never the key', async () => {
    const a = await chat(cluster.url, { headers: bearer(keys.plain) });
    expect(a.status).toBe(200);
    expect(a.json.metadata.keyId).toBe('plain');
    expect(a.text).not.toContain(keys.plain);
    const b = await chat(cluster.url, { headers: { 'x-api-key': keys.plain } });
    expect(b.status).toBe(200);
    expect(b.json.metadata.keyId).toBe('plain');
  });

  test('keys - a model outside the key\'s list is 403 MODEL_NOT_ALLOWED, and /v1/models lists only what the key may use', async () => {
    const denied = await chat(cluster.url, { headers: bearer(keys.onlyMain), body: { model: OTHER } });
    expectError(denied, 403, 'permission_error', 'MODEL_NOT_ALLOWED');
    expect(denied.json.error.param).toBe('model');
    expectError(await get(`${cluster.url}/v1/models/${OTHER}`, bearer(keys.onlyMain)), 403, 'permission_error', 'MODEL_NOT_ALLOWED');
    expect((await chat(cluster.url, { headers: bearer(keys.onlyMain) })).status).toBe(200);
    const limited = await get(`${cluster.url}/v1/models`, bearer(keys.onlyMain));
    expect(limited.json.data.map((m: { id: string }) => m.id)).toEqual([MODEL]);
    const all = await get(`${cluster.url}/v1/models`, bearer(keys.plain));
    expect(all.json.data.map((m: { id: string }) => m.id).sort()).toEqual([MODEL, OTHER].sort());
    expectError(await get(`${cluster.url}/v1/models`), 401, 'authentication_error', 'MISSING_API_KEY');
  });

  test('keys - the operator endpoints need a key marked admin; metrics count requests by key id', async () => {
    expectError(await get(`${cluster.url}/metrics`), 401, 'authentication_error', 'MISSING_API_KEY');
    expectError(await get(`${cluster.url}/metrics`, bearer(keys.plain)), 403, 'invalid_request_error', 'ADMIN_FORBIDDEN');
    expectError(await get(`${cluster.url}/v1/cluster/workers`, bearer(keys.plain)), 403, 'invalid_request_error', 'ADMIN_FORBIDDEN');
    expectError(await fetch(`${cluster.url}/v1/cluster/workers/k-main/drain`, { method: 'POST', headers: bearer(keys.plain) }).then(async (r) => ({ status: r.status, headers: r.headers, json: await r.json() })), 403, 'invalid_request_error', 'ADMIN_FORBIDDEN');
    const metrics = await get(`${cluster.url}/metrics`, bearer(keys.admin));
    expect(metrics.status).toBe(200);
    expect(metrics.json).toMatch(/mlx_router_key_requests_total\{key="plain",status="200"\} [1-9]/);
    for (const k of Object.values(keys)) expect(metrics.json).not.toContain(k);
    expect((await get(`${cluster.url}/v1/cluster/workers`, bearer(keys.admin))).status).toBe(200);
    // The dashboard's static page holds no data: it stays open (its reads need the key).
    expect((await get(`${cluster.url}/dashboard`)).status).toBe(200);
  });

  test('keys - requests per minute: the 4th of rpm 3 is 429 RATE_LIMIT_EXCEEDED with Retry-After of about 20 s', async () => {
    for (let i = 0; i < 3; i++) expect((await chat(cluster.url, { headers: bearer(keys.rpm) })).status).toBe(200);
    const r = await chat(cluster.url, { headers: bearer(keys.rpm) });
    expectError(r, 429, 'rate_limit_error', 'RATE_LIMIT_EXCEEDED');
    // One request refills every 20 s; a little has refilled since the first.
    const after = Number(r.headers.get('retry-after'));
    expect(after).toBeGreaterThanOrEqual(15);
    expect(after).toBeLessThanOrEqual(20);
    // Another key is not affected.
    expect((await chat(cluster.url, { headers: bearer(keys.plain) })).status).toBe(200);
  });

  test('keys - tokens per minute are counted from the usage the answers report', async () => {
    const first = await chat(cluster.url, { headers: bearer(keys.tpm), maxTokens: 24 });
    expect(first.status).toBe(200);
    const used = first.json.usage.total_tokens as number;
    expect(used).toBeGreaterThan(20);
    const r = await chat(cluster.url, { headers: bearer(keys.tpm), maxTokens: 1 });
    expectError(r, 429, 'rate_limit_error', 'RATE_LIMIT_EXCEEDED');
    expect(r.json.error.message).toMatch(/20 tokens per minute/);
    // The bucket is at 20 - used: it must refill used - 20 + 1 tokens at 20 per minute.
    const expected = ((used - 20 + 1) * 60) / 20;
    const after = Number(r.headers.get('retry-after'));
    expect(after).toBeLessThanOrEqual(Math.ceil(expected));
    expect(after).toBeGreaterThanOrEqual(Math.ceil(expected) - 3);
    const metrics = await get(`${cluster.url}/metrics`, bearer(keys.admin));
    expect(metrics.json).toContain(`mlx_router_key_tokens_total{key="tpm20"} ${used}`);
    expect(metrics.json).toMatch(/mlx_router_rate_limited_total\{key="tpm20",limit="tpm"\} 1/);
  });

  test('keys - requests at once: a third while two stream is 429; after they end the key is served again', async () => {
    const holders: Array<Promise<unknown>> = [];
    let started = 0;
    for (let i = 0; i < 2; i++) {
      holders.push(
        chatStream(cluster.url, { headers: bearer(keys.conc), body: { model: OTHER }, maxTokens: 40 }, () => {
          started++;
        }),
      );
    }
    await waitFor(() => started >= 2, 'both streams started');
    const r = await chat(cluster.url, { headers: bearer(keys.conc), body: { model: OTHER }, maxTokens: 1 });
    expectError(r, 429, 'rate_limit_error', 'RATE_LIMIT_EXCEEDED');
    expect(r.json.error.message).toMatch(/concurrency 2/);
    expect(Number(r.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    const done = (await Promise.all(holders)) as Array<{ status: number }>;
    expect(done.map((d) => d.status)).toEqual([200, 200]);
    expect((await chat(cluster.url, { headers: bearer(keys.conc), body: { model: OTHER }, maxTokens: 1 })).status).toBe(200);
  });

  test('keys - a WebSocket upgrade without a key is refused 401', async () => {
    const wsUrl = cluster.url.replace(/^http/, 'ws') + '/v1/stream';
    const refused = (headers: Record<string, string>) =>
      new Promise<{ status: number; requestId: string | undefined; opened: boolean }>((resolve, reject) => {
        const ws = new WebSocket(wsUrl, { headers });
        ws.on('unexpected-response', (_req, res) => {
          resolve({ status: res.statusCode ?? 0, requestId: res.headers['x-request-id'] as string | undefined, opened: false });
          res.resume();
          ws.terminate();
        });
        ws.on('open', () => {
          resolve({ status: 101, requestId: undefined, opened: true });
          ws.close();
        });
        ws.on('error', (e) => (e.message.includes('Unexpected server response') ? undefined : reject(e)));
      });
    const none = await refused({});
    expect(none.status).toBe(401);
    expect(none.requestId).toMatch(/\S/);
    expect((await refused(bearer(keys.plain))).opened).toBe(true);
  });
});

describe('priority under saturation', () => {
  let cluster: Cluster;
  const high = generateKey();
  const low = generateKey();

  beforeAll(async () => {
    cluster = await startCluster({
      // Two slots; an answer of 8 tokens at 25 ms holds one for about 200 ms.
      workers: [{ id: 'p-one', maxConcurrent: 2, tokenMs: 25 }],
      config: {
        ...STEADY,
        'cluster.requestRouting.workerWaitTimeoutMs': 60_000,
        'cluster.requestRouting.attemptTimeoutMs': 60_000,
        'cluster.auth.keys': [
          { id: 'gold', hash: hashKey(high), priority: 'high' },
          { id: 'bulk', hash: hashKey(low), priority: 'low' },
        ],
      },
    });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  test('priority - a high class is served ahead of a flooding low class, and the low class still progresses', async () => {
    const finished: Array<{ who: string; at: number }> = [];
    const send = (key: string, who: string) =>
      chat(cluster.url, { headers: bearer(key), maxTokens: 8 }).then((r) => {
        finished.push({ who, at: performance.now() });
        return r.status;
      });
    const lows = Array.from({ length: 30 }, (_, i) => send(low, `low${i}`));
    const queued = () => cluster.controller.deps.metrics.queued.get().then((g) => g.values.find((v) => v.labels.class === 'low')?.value ?? 0);
    await waitFor(async () => (await queued()) >= 20, '20 low requests waiting for a slot', 20_000);
    const lowsDoneBefore = finished.length;
    const highs = Array.from({ length: 10 }, (_, i) => send(high, `high${i}`));
    const statuses = await Promise.all([...lows, ...highs]);
    expect(statuses.every((s) => s === 200)).toBe(true);
    const after = finished.slice(lowsDoneBefore);
    const highAt = after.map((f, i) => (f.who.startsWith('high') ? i : -1)).filter((i) => i >= 0);
    // Every high request was served before most of the lows that had waited longer: weights
    // 6:1 give the last of 10 highs about 12 grants, of 30-odd waiting.
    expect(Math.max(...highAt)).toBeLessThan(18);
    // ...and lows kept finishing while highs waited (no starvation).
    const lowsBetween = after.slice(0, Math.max(...highAt)).filter((f) => f.who.startsWith('low')).length;
    expect(lowsBetween).toBeGreaterThanOrEqual(1);
  }, 90_000);
});

describe('early 503 under saturation', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await startCluster({
      workers: [{ id: 's-one', maxConcurrent: 2, tokenMs: 25 }],
      config: { ...STEADY, 'cluster.requestRouting.workerWaitTimeoutMs': 3000 },
    });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  test('priority - requests that could not get a slot within their wait limit get 503 with Retry-After at once, not after waiting it out', async () => {
    // Learn how long a request holds its slot (about 200 ms).
    for (let i = 0; i < 4; i++) expect((await chat(cluster.url, { maxTokens: 8 })).status).toBe(200);
    // What the controller itself measured: a served request holds its slot for 8 tokens × 25 ms,
    // so one that ended within 100 ms of reaching the chain was refused at once. (The time the
    // clients see adds this machine's own delay of 80 requests at once, not what is under test.)
    const fast = async (): Promise<number> => {
      const h = await cluster.controller.deps.metrics.duration.get();
      const bucket = h.values.find((v) => v.metricName === 'mlx_router_request_duration_seconds_bucket' && (v.labels as Record<string, unknown>).le === 0.1 && v.labels.stream === 'false');
      return bucket?.value ?? 0;
    };
    const fastBefore = await fast();
    const results = await Promise.all(
      Array.from({ length: 80 }, async () => {
        const r = await chat(cluster.url, { maxTokens: 8 });
        return { status: r.status, retryAfter: Number(r.headers.get('retry-after')), code: r.json?.error?.code, message: String(r.json?.error?.message ?? '') };
      }),
    );
    const refusedAtOnce = (await fast()) - fastBefore;
    const ok = results.filter((r) => r.status === 200);
    const shed = results.filter((r) => r.status === 503);
    expect(ok.length + shed.length).toBe(80);
    // Two slots for 3 s serve about 30 of 80; the rest are told so.
    expect(ok.length).toBeGreaterThanOrEqual(8);
    expect(shed.length).toBeGreaterThanOrEqual(20);
    expect(shed.every((r) => r.code === 'NO_WORKERS_AVAILABLE' && r.retryAfter >= 1)).toBe(true);
    // Most at once, by prediction, not after waiting out the 3 s.
    const predicted = shed.filter((r) => /predicted wait/.test(r.message));
    expect(predicted.length / shed.length).toBeGreaterThanOrEqual(0.7);
    expect(refusedAtOnce).toBeGreaterThanOrEqual(predicted.length * 0.9);
    // Their Retry-After is the predicted wait: beyond the 3 s they could wait.
    expect(predicted.every((r) => r.retryAfter >= 3)).toBe(true);
  }, 60_000);
});

describe('CLI', () => {
  test('keys create - prints a new key once and an entry that holds only its hash, which the configuration accepts', async () => {
    const proc = spawnCli('keys', [CLI, 'keys', 'create', '--id', 'team-a', '--models', `${MODEL},${OTHER}`, '--rpm', '60', '--priority', 'high']);
    const exit = await proc.exited;
    expect(exit.code).toBe(0);
    const out = proc.output();
    const key = /^\s+(mlxr-[A-Za-z0-9_-]{43})$/m.exec(out)?.[1];
    expect(key).toBeDefined();
    expect(out.split(key!).length - 1).toBe(1);
    const snippet = out.slice(out.indexOf('cluster:'));
    expect(snippet).toContain(hashKey(key!));
    expect(snippet).not.toContain(key!);
    const dir = mkdtempSync(join(tmpdir(), 'mlx-keys-'));
    writeFileSync(join(dir, 'keys.yaml'), snippet);
    const config = loadConfig({ file: join(dir, 'keys.yaml'), env: {} });
    expect(config.cluster.auth.keys).toEqual([{ id: 'team-a', hash: hashKey(key!), models: [MODEL, OTHER], rpm: 60, priority: 'high' }]);
    // Two runs, two different keys.
    const again = spawnCli('keys2', [CLI, 'keys', 'create']);
    expect((await again.exited).code).toBe(0);
    expect(again.output()).not.toContain(key!);
    expect(again.output()).toMatch(/id: key-/);
  });

  test('controller - listening beyond loopback without keys prints a clear warning; on loopback it does not', async () => {
    const nats = await startNatsServer();
    try {
      const open = spawnCli('open', [CLI, 'controller', '--nats', nats.url, '--host', '0.0.0.0', '--port', '0'], { MLX_ROUTER_CONFIG: '' });
      const local = spawnCli('local', [CLI, 'controller', '--nats', nats.url, '--host', '127.0.0.1', '--port', '0'], { MLX_ROUTER_LOG_LEVEL: 'info' });
      try {
        await waitFor(() => /no client API keys are configured/.test(open.output()), 'the warning', 20_000);
        expect(open.output()).toMatch(/listens on 0\.0\.0\.0/);
        await waitFor(() => /controller listening/.test(local.output()), 'the loopback controller listening', 20_000);
        expect(local.output()).not.toMatch(/no client API keys/);
      } finally {
        open.kill();
        local.kill();
        await Promise.all([open.exited, local.exited]);
      }
    } finally {
      await nats.stop();
    }
  }, 45_000);
});
