/**
 * HTTP limits against a real controller and worker (docs/security.md): every answer, Node's and
 * fastify's own included, is OpenAI-shaped JSON with x-request-id; slow senders, idle sockets,
 * connection floods and streams nobody reads are cut within their limits and release what they
 * held; SSE honours `Connection: close`.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { Controller } from '../../src/controller/controller';
import { silentLogger } from '../../src/logger';
import { chat, chatBody, STEADY, startCluster, testConfig, waitFor, type Cluster } from '../helpers/cluster';

let cluster: Cluster;
let port: number;
const HEADERS_MS = 600;
const PER_CLIENT = 12;

beforeAll(async () => {
  cluster = await startCluster({
    workers: [{ id: 'http-w', tokenMs: 1 }, { id: 'http-flood', models: ['flood-model'] }],
    config: {
      ...STEADY,
      'controller.headersTimeoutMs': HEADERS_MS,
      'controller.requestTimeoutMs': 1500,
      'controller.keepAliveTimeoutMs': 500,
      'controller.maxConnectionsPerClient': PER_CLIENT,
      'controller.stalledStreamTimeoutMs': 500,
      'cluster.streaming.maxBufferedBytes': 16 * 1024,
    },
  });
  port = Number(new URL(cluster.url).port);
});

afterAll(async () => {
  await cluster?.stop();
});

interface RawAnswer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

function parseRaw(text: string): RawAnswer {
  const cut = text.indexOf('\r\n\r\n');
  const head = text.slice(0, cut).split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of head.slice(1)) {
    const i = line.indexOf(':');
    headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
  }
  let body = text.slice(cut + 4);
  if (headers['transfer-encoding'] === 'chunked') body = body.replace(/^[0-9a-f]+\r\n/, '').replace(/\r\n0\r\n\r\n$/, '');
  return { status: Number(head[0].split(' ')[1]), headers, body };
}

/** Sends `text` on a new socket and collects everything until the server closes it. */
function raw(text: string, timeoutMs = 5000, to = port): Promise<RawAnswer & { closedAfterMs: number }> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const s = netConnect(to, '127.0.0.1', () => s.write(text));
    let out = '';
    s.on('data', (d) => (out += d.toString()));
    s.on('error', () => undefined);
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no close within ${timeoutMs} ms; got ${JSON.stringify(out.slice(0, 200))}`));
    }, timeoutMs);
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ ...parseRaw(out), closedAfterMs: Date.now() - started });
    });
  });
}

function expectOpenAiError(a: RawAnswer, status: number): void {
  expect(a.status).toBe(status);
  expect(a.headers['x-request-id']).toMatch(/^req-/);
  expect(a.headers['content-type']).toMatch(/^application\/json/);
  const body = JSON.parse(a.body);
  expect(typeof body.error.message).toBe('string');
  expect(typeof body.error.type).toBe('string');
  expect(typeof body.error.code).toBe('string');
  expect(typeof body.error.router_code).toBe('string');
}

const WS = 'Upgrade: websocket\r\nConnection: Upgrade\r\n';

test.each<[string, string, number]>([
  ['a malformed request line', 'GARBAGE\r\n\r\n', 400],
  ['a conflicting Content-Length and Transfer-Encoding', 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n', 400],
  ['headers over 16 KiB (431)', `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`, 431],
  ['an unknown Expect (417)', 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: bogus\r\nContent-Length: 2\r\n\r\n{}', 417],
  ['CONNECT (405)', 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n', 405],
  ['a bad URL encoding', 'GET /%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', 400],
  ['a WebSocket handshake with a bad key', `GET /v1/stream HTTP/1.1\r\nHost: x\r\n${WS}Sec-WebSocket-Key: bad\r\nSec-WebSocket-Version: 13\r\n\r\n`, 400],
  ['a WebSocket handshake with a bad version', `GET /v1/stream HTTP/1.1\r\nHost: x\r\n${WS}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 99\r\n\r\n`, 400],
  ['a WebSocket upgrade on an unknown path', `GET /nope HTTP/1.1\r\nHost: x\r\n${WS}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n`, 404],
  ['a body that is not JSON', 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\n{x}', 400],
])('http - %s gets OpenAI-shaped JSON with x-request-id', async (_name, request, status) => {
  expectOpenAiError(await raw(request), status);
});

test('http - slow senders: partial headers or a body that never completes are cut with 408 within the limits', async () => {
  const headers = await Promise.all(Array.from({ length: 5 }, () => raw('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ')));
  for (const a of headers) {
    // Cut after headersTimeoutMs (checked every headersTimeoutMs / 2); generous margin for load.
    expect(a.closedAfterMs).toBeLessThan(HEADERS_MS * 2 + 3000);
    expectOpenAiError(a, 408);
  }
  const body = await raw('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"model":');
  expect(body.closedAfterMs).toBeLessThan(1500 + 3000);
  expectOpenAiError(body, 408);
  // An idle connection that never says anything is closed too.
  const idle = await raw('');
  expect(idle.closedAfterMs).toBeLessThan(HEADERS_MS * 2 + 3000);
  expect((await chat(cluster.url)).status).toBe(200);
});

test('http - connections beyond the per-address cap get 503 TOO_MANY_CONNECTIONS; released ones free the slots', async () => {
  // A controller of its own with a long headers limit, so the held sockets stay open meanwhile.
  const config = testConfig({ 'nats.servers': [cluster.natsUrl], 'controller.maxConnectionsPerClient': PER_CLIENT, 'controller.headersTimeoutMs': 60_000, 'controller.requestTimeoutMs': 60_000 });
  const ctl = await Controller.start({ config, log: silentLogger() });
  const ctlPort = Number(new URL(ctl.url).port);
  const held: Socket[] = [];
  try {
    for (let i = 0; i < PER_CLIENT; i++) {
      const s = netConnect(ctlPort, '127.0.0.1');
      s.on('error', () => undefined);
      await new Promise((r) => s.once('connect', r));
      // Keep it busy with a request that has not finished sending its headers yet.
      s.write('GET /health HTTP/1.1\r\n');
      held.push(s);
    }
    const refused = await raw('GET /health HTTP/1.1\r\nHost: x\r\n\r\n', 5000, ctlPort);
    expectOpenAiError(refused, 503);
    expect(JSON.parse(refused.body).error.router_code).toBe('TOO_MANY_CONNECTIONS');
    expect(refused.headers['retry-after']).toBe('1');
    for (const s of held) s.destroy();
    await waitFor(async () => (await fetch(`${ctl.url}/health`).catch(() => undefined))?.status === 200, 'slots released');
  } finally {
    for (const s of held) s.destroy();
    await ctl.stop();
  }
});

test('http - a stream whose client stops reading is cut and its socket closed within the stalled limit', async () => {
  const count = (): Promise<number> => new Promise((r) => cluster.controller['app'].server.getConnections((_e: unknown, n: number) => r(n)));
  const before = await count();
  const body = JSON.stringify(chatBody({ stream: true, maxTokens: 3_000_000, content: 'a long one', body: { model: 'flood-model' } }));
  const s = netConnect(port, '127.0.0.1', () => {
    s.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    s.pause(); // never reads a byte
  });
  s.on('error', () => undefined);
  try {
    await waitFor(async () => (await count()) > before, 'the stream open');
    // Cut at the buffer cap, then closed after stalledStreamTimeoutMs: the server holds nothing.
    await waitFor(async () => (await count()) <= before, 'the stalled stream closed by the server', 20_000);
    await waitFor(() => cluster.controller.deps.mux.size === 0, 'no reply handler left');
  } finally {
    s.destroy();
  }
});

test('http - SSE honours Connection: close, and keeps the connection otherwise', async () => {
  const body = JSON.stringify(chatBody({ stream: true, maxTokens: 5 }));
  const request = (conn: string) =>
    `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: ${conn}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
  const closed = await raw(request('close'));
  expect(closed.status).toBe(200);
  expect(closed.headers.connection).toBe('close');
  expect(closed.body).toContain('data: [DONE]');
  const res = await fetch(`${cluster.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
  expect(res.headers.get('connection')).toBe('keep-alive');
  expect(await res.text()).toContain('data: [DONE]');
});
