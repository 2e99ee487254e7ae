/**
 * W3C trace context end to end: HTTP request → controller → NATS headers → worker process
 * (`--engine openai`) → the engine's HTTP request (a fake OpenAI-compatible server records it).
 * The trace id survives every hop; each hop gets its own parent id; `tracestate` passes unchanged.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { headers as natsHeaders } from '@nats-io/transport-node';
import { makeSubjects } from '../../src/protocol';
import { addEngineWorker, chat, chatStream, MODEL, STEADY, startCluster, startTogether, waitFor, type Cluster } from '../helpers/cluster';
import { startFakeEngine, type FakeEngine } from '../helpers/fake-engine';

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const CLIENT_PARENT = '00f067aa0ba902b7';
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

let cluster: Cluster;
let engine: FakeEngine;
let collector: Server;
/** Every span the controller exported to the collector (OTLP/HTTP JSON). */
const exported: any[] = [];

/** A minimal OTLP/HTTP collector: records the spans of every POST /v1/traces. */
async function startCollector(): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      if (req.method === 'POST' && req.url === '/v1/traces' && req.headers['content-type'] === 'application/json') {
        for (const rs of JSON.parse(body).resourceSpans) {
          const service = rs.resource.attributes.find((a: any) => a.key === 'service.name')?.value.stringValue;
          for (const ss of rs.scopeSpans) for (const sp of ss.spans) exported.push({ ...sp, service });
        }
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      } else {
        res.writeHead(404).end();
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

beforeAll(async () => {
  const c = await startCollector();
  collector = c.server;
  [cluster, engine] = await startTogether([
    startCluster({ config: { ...STEADY, 'cluster.streaming.resume': false, 'tracing.otlpEndpoint': c.url, 'tracing.serviceName': 'router-under-test' } }),
    startFakeEngine({ models: [MODEL] }),
  ]);
  await addEngineWorker(cluster, { id: 'tr1', engineUrl: engine.url });
});

afterAll(async () => {
  await cluster?.stop();
  await engine?.close();
  await new Promise((r) => collector?.close(r));
});

beforeEach(() => engine.reset());

function engineTrace(): { traceparent: string; tracestate?: string } {
  const reqs = engine.chatRequests();
  expect(reqs).toHaveLength(1);
  return { traceparent: String(reqs[0].headers.traceparent), tracestate: reqs[0].headers.tracestate as string | undefined };
}

test('trace - a client traceparent reaches the engine under the same trace id with the attempt as parent, tracestate unchanged', async () => {
  // Spy on the NATS hop too: the attempt's headers carry the trace.
  const seen: string[] = [];
  const spy = cluster.nc.subscribe(makeSubjects().infer('tr1'), { callback: (_e, msg) => void seen.push(msg.headers?.get('traceparent') ?? '') });
  await cluster.nc.flush();
  try {
    const r = await chat(cluster.url, { headers: { traceparent: `00-${TRACE_ID}-${CLIENT_PARENT}-01`, tracestate: 'vendor=abc,other=1' } });
    expect(r.status).toBe(200);
    const onEngine = engineTrace();
    const m = TRACEPARENT.exec(onEngine.traceparent)!;
    expect(m).not.toBeNull();
    expect(m[1]).toBe(TRACE_ID);
    expect(m[2]).not.toBe(CLIENT_PARENT);
    expect(m[3]).toBe('01');
    expect(onEngine.tracestate).toBe('vendor=abc,other=1');
    await waitFor(() => seen.length === 1, 'the attempt seen on NATS');
    const hop = TRACEPARENT.exec(seen[0])!;
    expect(hop[1]).toBe(TRACE_ID);
    // The worker records no span: the engine's parent is the controller's attempt.
    expect(hop[2]).toBe(m[2]);
  } finally {
    spy.unsubscribe();
  }
});

test('trace - streamed requests carry the trace too', async () => {
  const r = await chatStream(cluster.url, { headers: { traceparent: `00-${TRACE_ID}-${CLIENT_PARENT}-00` } });
  expect(r.status).toBe(200);
  const m = TRACEPARENT.exec(engineTrace().traceparent)!;
  expect(m[1]).toBe(TRACE_ID);
  expect(m[3]).toBe('00');
});

test('trace - without a traceparent, or with a malformed one, a new trace starts (one per request)', async () => {
  const ids: string[] = [];
  const cases: Array<Record<string, string>> = [{}, { traceparent: 'garbage' }, { traceparent: `00-${'0'.repeat(32)}-${CLIENT_PARENT}-01` }];
  for (const headers of cases) {
    engine.reset();
    const r = await chat(cluster.url, { headers });
    expect(r.status).toBe(200);
    const m = TRACEPARENT.exec(engineTrace().traceparent)!;
    expect(m).not.toBeNull();
    expect(m[1]).not.toBe('0'.repeat(32));
    ids.push(m[1]);
  }
  expect(new Set(ids).size).toBe(3);
});

test('trace - a worker ignores a malformed traceparent on the bus and starts its own trace', async () => {
  // A hand-made attempt straight to the worker, as a foreign controller might send it.
  const h = natsHeaders();
  h.set('Mlx-Request-Id', 'req-hand-made');
  h.set('Mlx-Deadline-Ms', '5000');
  h.set('traceparent', 'ff-not-a-trace');
  const reply = await cluster.nc.request(makeSubjects().infer('tr1'), new TextEncoder().encode(JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x' }], stream: false })), {
    headers: h,
    timeout: 5000,
  });
  expect(JSON.parse(new TextDecoder().decode(reply.data)).type).toBe('result');
  expect(engineTrace().traceparent).toMatch(TRACEPARENT);
});

test('trace - with tracing.otlpEndpoint the controller exports a request span and an attempt span under the client trace', async () => {
  const r = await chat(cluster.url, { headers: { traceparent: `00-${TRACE_ID}-${CLIENT_PARENT}-01` }, content: 'export me' });
  expect(r.status).toBe(200);
  const requestId = r.headers.get('x-request-id');
  const attr = (sp: any, key: string) => sp.attributes.find((a: any) => a.key === key)?.value;
  const mine = () => exported.filter((sp) => attr(sp, 'mlx.request_id')?.stringValue === requestId);
  await waitFor(() => mine().length === 2, 'two spans of the request at the collector', 15_000);
  const server = mine().find((sp) => sp.kind === 2);
  const client = mine().find((sp) => sp.kind === 3);
  expect(server).toMatchObject({ traceId: TRACE_ID, parentSpanId: CLIENT_PARENT, name: 'chat.completions', status: { code: 1 }, service: 'router-under-test' });
  expect(attr(server, 'http.response.status_code')).toEqual({ intValue: '200' });
  expect(client).toMatchObject({ traceId: TRACE_ID, parentSpanId: server.spanId, status: { code: 1 } });
  expect(attr(client, 'mlx.worker')).toEqual({ stringValue: 'tr1' });
  // The attempt span is the one the engine saw as its parent.
  expect(TRACEPARENT.exec(engineTrace().traceparent)![2]).toBe(client.spanId);
  expect(BigInt(client.startTimeUnixNano)).toBeGreaterThanOrEqual(BigInt(server.startTimeUnixNano));
  expect(BigInt(client.endTimeUnixNano)).toBeLessThanOrEqual(BigInt(server.endTimeUnixNano));
});
