/**
 * Seeded, time-bounded fuzzing of a real controller and real workers (docs/security.md): hostile
 * HTTP requests and garbage on every NATS subject. Asserts that no process exits, every HTTP error
 * is OpenAI-shaped JSON with x-request-id, no breaker moves, nothing is left pending, and normal
 * requests succeed afterwards. `npm test` runs a short slice; `npm run test:soak` sets
 * FUZZ_CASES=10000. FUZZ_SEED replays a run (the seed is in the test name).
 */
import { connect as netConnect } from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { encode, makeSubjects, PROTOCOL_VERSION } from '../../src/protocol';
import { chat, chatStream, MODEL, STEADY, startCluster, type Cluster } from './cluster';

const subjects = makeSubjects();

// The controller runs in this process: its heap is this heap. A full GC makes the figure what is
// retained, not what is merely not yet collected.
setFlagsFromString('--expose_gc');
const gc = runInNewContext('gc') as () => void;

/** Heap in use after full collections (bytes). */
function heapAfterGc(): number {
  gc();
  gc();
  return process.memoryUsage().heapUsed;
}

/**
 * How far the heap may stay above its baseline once the fuzz is over and its sockets have closed:
 * 24 MiB, for what the test process itself keeps (fetch's connection pool, Jest's records of the
 * assertions) and V8's own caches. A leak per case would exceed it: 10,000 cases leaving even
 * 3 KiB each behind is 30 MiB (docs/security.md).
 */
export const HEAP_TOLERANCE_BYTES = 24 * 1024 * 1024;

/** mulberry32: a small seeded generator, so a failing run can be replayed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

let cluster: Cluster;

/** The fuzz run as a Jest suite: `defaultCases` unless FUZZ_CASES says otherwise. */
export function fuzzSuite(defaultCases: number): void {
  const CASES = Number(process.env.FUZZ_CASES ?? defaultCases);
  const SEED = Number(process.env.FUZZ_SEED ?? Date.now() % 1_000_000);
  const TIME_LIMIT_MS = Number(process.env.FUZZ_TIME_MS ?? Math.max(20_000, CASES * 30));
  beforeAll(async () => {
    cluster = await startCluster({
      workers: [{ id: 'fz-a' }, { id: 'fz-b' }],
      config: {
        ...STEADY,
        'controller.headersTimeoutMs': 2000,
        // Generous limits: on a loaded machine a slow valid request must not read as a router failure.
        'cluster.requestRouting.attemptTimeoutMs': 20_000,
        'cluster.requestRouting.firstChunkTimeoutMs': 20_000,
      },
    });
  });
  afterAll(async () => {
    await cluster?.stop();
  });
  fuzzCases(CASES, SEED, TIME_LIMIT_MS);
}

function fuzzValue(r: () => number, depth = 0): unknown {
  const pick = Math.floor(r() * 12);
  switch (pick) {
    case 0: return null;
    case 1: return r() < 0.5;
    case 2: return [1e308 * 10, -0, 2 ** 64, Number.MIN_VALUE, Number("123456789012345678901234567890")][Math.floor(r() * 5)];
    case 3: return 'x'.repeat(Math.floor(r() * 3000));
    case 4: return '\ud800\udfff\u0000\u202e<script>'.slice(0, 1 + Math.floor(r() * 8));
    case 5: return depth < 4 ? Array.from({ length: Math.floor(r() * 5) }, () => fuzzValue(r, depth + 1)) : [];
    case 6: return depth < 4 ? { role: fuzzValue(r, depth + 1), content: fuzzValue(r, depth + 1) } : {};
    case 7: return Array.from({ length: 2000 }, () => 0);
    case 8: return MODEL;
    case 9: return { __proto__: { polluted: true }, constructor: { prototype: { polluted: true } } };
    case 10: return Math.floor(r() * 100) - 50;
    default: return [{ role: 'user', content: 'hi' }];
  }
}

function nested(depth: number): string {
  return '['.repeat(depth) + ']'.repeat(depth);
}

/** One hostile request body (as text) and extra headers. */
function httpCase(r: () => number): { body: string; headers: Record<string, string> } {
  const base: Record<string, unknown> = { model: MODEL, messages: [{ role: 'user', content: 'hello' }], max_tokens: 4 };
  const keys = ['model', 'messages', 'max_tokens', 'stream', 'temperature', 'top_p', 'stop', '__proto__', 'constructor', 'stream_options', 'session_id'];
  for (let i = 0, n = 1 + Math.floor(r() * 3); i < n; i++) base[keys[Math.floor(r() * keys.length)]] = fuzzValue(r);
  // A huge but valid max_tokens is a real request for a generation longer than any deadline (its
  // honest answer is a 504 when the deadline passes), not garbage: keep valid ones short.
  if (typeof base.max_tokens === 'number' && base.max_tokens > 64) base.max_tokens = 64;
  let body = JSON.stringify(base);
  const how = Math.floor(r() * 8);
  if (how === 0) body = body.slice(0, Math.floor(r() * body.length)); // truncated
  else if (how === 1) body = nested(5000 + Math.floor(r() * 50_000)); // deep nesting
  else if (how === 2) body = body.replace('{', '{"model":"a","model":"b",'); // duplicate keys
  else if (how === 3) body = Buffer.from(Array.from({ length: 1 + Math.floor(r() * 200) }, () => Math.floor(r() * 256))).toString('latin1');
  else if (how === 4) body = body.replace('hello', '\udc00\ud800'); // lone surrogates
  const headers: Record<string, string> = { 'content-type': ['application/json', 'text/plain', 'multipart/form-data; boundary=x', '', 'application/json; charset=utf-16'][Math.floor(r() * 5)] };
  if (r() < 0.2) headers['x-request-id'] = '../../' + 'z'.repeat(Math.floor(r() * 300));
  if (r() < 0.2) headers['x-session-id'] = 's'.repeat(Math.floor(r() * 5000));
  if (r() < 0.1) headers.authorization = 'Bearer ' + 'k'.repeat(Math.floor(r() * 8000));
  return { body, headers };
}

/** Raw bytes to the socket: malformed HTTP the fetch client would never send. */
function rawCase(r: () => number): string {
  const cases = [
    'GET / HTTP/1.1\r\nHost: x\r\n' + 'X: y\r\n'.repeat(Math.floor(r() * 3000)) + '\r\n',
    'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n',
    `\u0000\u0001${'A'.repeat(Math.floor(r() * 100))}\r\n\r\n`,
    'GET /%%% HTTP/1.1\r\nHost: x\r\n\r\n',
    'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
    'CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n',
    'GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n',
    'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{}',
  ];
  return cases[Math.floor(r() * cases.length)];
}

function rawExchange(port: number, text: string): Promise<string> {
  return new Promise((resolve) => {
    const s = netConnect(port, '127.0.0.1', () => s.end(text));
    let out = '';
    s.on('data', (d) => (out += d.toString('latin1')));
    s.on('error', () => undefined);
    s.on('close', () => resolve(out));
    setTimeout(() => s.destroy(), 5000).unref();
  });
}

function checkRawAnswer(out: string): void {
  if (out.length === 0) return; // the peer's own reset; nothing was answered
  const [head, ...rest] = out.split('\r\n\r\n');
  const status = Number(head.split(' ')[1]);
  expect(status).toBeGreaterThanOrEqual(400);
  expect(head.toLowerCase()).toContain('x-request-id:');
  let body = rest.join('\r\n\r\n');
  if (/transfer-encoding: chunked/i.test(head)) body = body.replace(/^[0-9a-f]+\r\n/, '').replace(/\r\n0\r\n\r\n$/, '');
  if (status !== 405 || body) expect(JSON.parse(body).error.code).toEqual(expect.any(String));
}

function garbage(r: () => number): Uint8Array {
  const forms = [
    () => Buffer.from(Array.from({ length: Math.floor(r() * 300) }, () => Math.floor(r() * 256))),
    () => encode(fuzzValue(r)),
    () => encode({ type: 'heartbeat', version: PROTOCOL_VERSION, id: ['fz-a', 'fz-b', 'x'.repeat(100), 'new-' + Math.floor(r() * 1e6)][Math.floor(r() * 4)], models: fuzzValue(r), instance: fuzzValue(r), state: fuzzValue(r), max_concurrent: fuzzValue(r), in_flight: fuzzValue(r) }),
    () => encode({ type: 'bye', id: ['fz-a', 'fz-b'][Math.floor(r() * 2)], instance: fuzzValue(r) }),
    () => encode({ request_id: fuzzValue(r), attempt: fuzzValue(r), reply: fuzzValue(r), token: fuzzValue(r) }),
    () => encode({ type: ['result', 'chunk', 'end', 'error', 'refuse'][Math.floor(r() * 5)], seq: fuzzValue(r), text: fuzzValue(r), code: 'WORKER_ERROR', outcome: 'worker_failure', instance: fuzzValue(r) }),
  ];
  return forms[Math.floor(r() * forms.length)]();
}

/** The one fuzz test: `CASES` cases from `SEED`, within `TIME_LIMIT_MS`. */
function fuzzCases(CASES: number, SEED: number, TIME_LIMIT_MS: number): void {
  test(`fuzz - ${CASES} hostile HTTP requests and bus messages (seed ${SEED}) change nothing`, async () => {
    const r = rng(SEED);
    const port = Number(new URL(cluster.url).port);
    const pids = [...cluster.workers.values()].map((w) => w.process.pid);
    const inboxPrefix = (cluster.controller.deps.mux as unknown as { prefix: string }).prefix;
    const busSubjects = [subjects.heartbeat, subjects.bye, subjects.discover, ...['fz-a', 'fz-b'].flatMap((id) => [subjects.infer(id), subjects.cancel(id), `mlx.v1.worker.${id}.control`])];
    // Baseline: the paths warmed by normal requests, then a full collection.
    await Promise.all(Array.from({ length: 6 }, (_, i) => chat(cluster.url, { content: `before fuzz ${i}` })));
    await chatStream(cluster.url, { content: 'before fuzz stream' });
    const baseline = heapAfterGc();
    const started = Date.now();
    let done = 0;
    while (done < CASES && Date.now() - started < TIME_LIMIT_MS) {
      const batch: Array<Promise<void>> = [];
      for (let i = 0; i < 10 && done < CASES; i++, done++) {
        const kind = r();
        if (kind < 0.45) {
          const c = httpCase(r);
          batch.push(
            fetch(`${cluster.url}/v1/chat/completions`, { method: 'POST', headers: c.headers, body: c.body }).then(async (res) => {
              const text = await res.text();
              expect(res.headers.get('x-request-id')).toBeTruthy();
              if (res.status >= 400) {
                // A client's garbage is never our failure.
                if (res.status >= 500) throw new Error(`HTTP ${res.status} ${text.slice(0, 400)} for ${JSON.stringify(c).slice(0, 400)}`);
                expect(JSON.parse(text).error).toMatchObject({ message: expect.any(String), type: expect.any(String), code: expect.any(String) });
              }
            }),
          );
        } else if (kind < 0.6) {
          batch.push(rawExchange(port, rawCase(r)).then(checkRawAnswer));
        } else {
          const subject = r() < 0.15 ? `${inboxPrefix}.${Math.floor(r() * 50).toString(36)}` : busSubjects[Math.floor(r() * busSubjects.length)];
          cluster.nc.publish(subject, garbage(r), r() < 0.5 ? { reply: `${inboxPrefix}.${Math.floor(r() * 50).toString(36)}` } : undefined);
        }
      }
      await Promise.all(batch);
    }
    await cluster.nc.flush();
    expect(done).toBeGreaterThanOrEqual(Math.min(CASES, 100));
    // Nothing died, nothing was blamed, nothing is left pending.
    for (const w of cluster.workers.values()) expect(w.process.exitCode).toBeNull();
    expect([...cluster.workers.values()].map((w) => w.process.pid)).toEqual(pids);
    expect(cluster.controller.deps.breakers.snapshot().every(([, kind]) => kind === 'closed')).toBe(true);
    for (const id of ['fz-a', 'fz-b']) expect(cluster.controller.deps.registry.get(id)).toMatchObject({ state: 'ready', models: [MODEL], gone: false });
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    // Memory returns to its baseline: the controller lets go of what the fuzz made it hold, once
    // the fuzz's sockets have closed (keep-alive and stalled-stream limits are a few seconds).
    let heap = heapAfterGc();
    const settleUntil = Date.now() + 30_000;
    while (heap - baseline > HEAP_TOLERANCE_BYTES && Date.now() < settleUntil) {
      await new Promise((res) => setTimeout(res, 500));
      heap = heapAfterGc();
    }
    process.stdout.write(`fuzz memory: baseline ${(baseline / 2 ** 20).toFixed(1)} MiB, after ${done} cases ${(heap / 2 ** 20).toFixed(1)} MiB\n`);
    expect(heap - baseline).toBeLessThanOrEqual(HEAP_TOLERANCE_BYTES);
    // Normal requests succeed afterwards, buffered and streamed.
    const replies = await Promise.all(Array.from({ length: 6 }, (_, i) => chat(cluster.url, { content: `after fuzz ${i}` })));
    expect(replies.map((x) => x.status)).toEqual(Array(6).fill(200));
    const s = await chatStream(cluster.url, { content: 'after fuzz stream' });
    expect(s.text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(cluster.controller.deps.mux.size).toBe(0);
  }, 600_000);
}
