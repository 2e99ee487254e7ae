/**
 * W3C trace context end to end: HTTP request → controller → NATS headers → worker process
 * (`--engine openai`) → the engine's HTTP request (a fake OpenAI-compatible server records it).
 * The trace id survives every hop; each hop gets its own parent id; `tracestate` passes unchanged.
 */
import { headers as natsHeaders } from '@nats-io/transport-node';
import { makeSubjects } from '../../src/protocol';
import { addEngineWorker, chat, chatStream, MODEL, STEADY, startCluster, waitFor, type Cluster } from '../helpers/cluster';
import { startFakeEngine, type FakeEngine } from '../helpers/fake-engine';

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const CLIENT_PARENT = '00f067aa0ba902b7';
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

let cluster: Cluster;
let engine: FakeEngine;

beforeAll(async () => {
  [cluster, engine] = await Promise.all([startCluster({ config: { ...STEADY, 'cluster.streaming.resume': false } }), startFakeEngine({ models: [MODEL] })]);
  await addEngineWorker(cluster, { id: 'tr1', engineUrl: engine.url });
});

afterAll(async () => {
  await cluster?.stop();
  await engine?.close();
});

beforeEach(() => engine.reset());

function engineTrace(): { traceparent: string; tracestate?: string } {
  const reqs = engine.chatRequests();
  expect(reqs).toHaveLength(1);
  return { traceparent: String(reqs[0].headers.traceparent), tracestate: reqs[0].headers.tracestate as string | undefined };
}

test('trace - a client traceparent reaches the engine under the same trace id with a new parent id, tracestate unchanged', async () => {
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
    // Three different parent ids: the client's, the controller's attempt, the worker's engine call.
    expect(new Set([CLIENT_PARENT, hop[2], m[2]]).size).toBe(3);
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
