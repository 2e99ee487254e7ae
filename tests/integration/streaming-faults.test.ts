/**
 * Streaming deadlines, cancellation and wire faults, against real nats-server and real
 * worker processes (and one scripted fake worker for exact wire faults).
 */
import net from 'node:net';
import type { Msg, Subscription } from '@nats-io/transport-node';
import { decode, makeSubjects, type CancelMessage } from '../../src/protocol';
import { chat, startCluster, waitFor, type Cluster } from '../helpers/cluster';
import { startFakeWorker, type FakeWorker } from '../helpers/fake-worker';
import { openStream, summarize } from '../helpers/stream';

const subjects = makeSubjects();
// Long enough that a starved but healthy worker (two loaded cores) is never mistaken for a hung one.
const IDLE_MS = 1000;
const FIRST_CHUNK_MS = 1000;
/** Slack for upper time bounds: the deadline fired, plus scheduling on two cores shared with other runs. */
const MARGIN_MS = 1000;

let cluster: Cluster;
beforeAll(async () => {
  cluster = await startCluster({
    workers: [
      { id: 'slow', ttftMs: 5000 },
      { id: 'fast', tokenMs: 5 },
      { id: 'flood', models: ['flood-model'] },
    ],
    config: {
      'cluster.requestRouting.firstChunkTimeoutMs': FIRST_CHUNK_MS,
      'cluster.requestRouting.idleTimeoutMs': IDLE_MS,
      // attemptTimeoutMs caps a producing stream as a last resort: far above how long the flood
      // takes to fill a stopped client's buffer on a loaded machine, so only the cap can end it.
      'cluster.requestRouting.attemptTimeoutMs': 30_000,
      // Heartbeat silence must not end stopped streams before the idle limit does.
      'discovery.offlineAfterMs': 5000,
      'cluster.streaming.maxBufferedBytes': 64 * 1024,
      // Wire faults must show as they are, not be resumed away.
      'cluster.streaming.resume': false,
      // The flood model streams far beyond the default max_tokens cap on purpose.
      'cluster.maxTokens.byModel': { 'flood-model': 3_000_000 },
    },
  });
});
afterAll(async () => cluster?.stop());

/** Records cancel messages on a worker's cancel subject with their arrival time. */
function recordCancels(worker: string): { cancels: Array<CancelMessage & { at: number }>; sub: Subscription } {
  const cancels: Array<CancelMessage & { at: number }> = [];
  const sub = cluster.nc.subscribe(subjects.cancel(worker), {
    callback: (_e, msg: Msg) => {
      const c = decode<CancelMessage>(msg.data);
      // Liveness probes share the control subject; only real cancels name a request.
      if (c && typeof c.request_id === 'string') cancels.push({ ...c, at: performance.now() });
    },
  });
  return { cancels, sub };
}

async function metricsText(): Promise<string> {
  return (await fetch(`${cluster.url}/metrics`)).text();
}

/** The value of one sample line (`name{labels}`) in Prometheus text, 0 when absent. */
function metricValue(text: string, sample: string): number {
  const line = text.split('\n').find((l) => l.startsWith(sample + ' '));
  return line ? Number(line.slice(sample.length + 1)) : 0;
}

test('streaming - a slow first token fails over before commit and the slow worker gets a cancel', async () => {
  const { cancels, sub } = recordCancels('slow');
  await cluster.nc.flush();
  // Concurrent requests spread over both workers; those that land on `slow` must fail over.
  const results = await Promise.all(
    Array.from({ length: 6 }, (_, i) => openStream(cluster.url, { content: `ttft ${i}`, maxTokens: 8 }).then(async (s) => ({ s, text: await s.readAll() }))),
  );
  let failedOver = 0;
  for (const { s, text } of results) {
    expect(s.status).toBe(200);
    const sum = summarize(text);
    expect(sum.done).toBe(true);
    expect(sum.errors).toEqual([]);
    expect(sum.metadata.selectedWorker).toBe('fast');
    if (sum.metadata.retryCount === 1) {
      failedOver++;
      expect(sum.metadata.failedWorkers).toEqual(['slow']);
      expect(sum.metadata.attempts[0]).toMatchObject({ worker: 'slow', code: 'WORKER_TIMEOUT', outcome: 'ambiguous' });
      expect(sum.metadata.attempts[0].durationMs).toBeGreaterThanOrEqual(FIRST_CHUNK_MS - 5);
      expect(sum.metadata.attempts[0].durationMs).toBeLessThan(FIRST_CHUNK_MS + MARGIN_MS);
    }
  }
  expect(failedOver).toBeGreaterThan(0);
  await waitFor(() => cancels.length === failedOver, `${failedOver} cancels on slow`, 2000);
  sub.unsubscribe();
});

test('streaming - SIGSTOP mid-stream: the idle deadline fires within its limit (plus scheduling slack)', async () => {
  const stream = await openStream(cluster.url, { content: 'idle', maxTokens: 2000, headers: { 'x-session-id': 'idle-test' } });
  expect(stream.headers.get('x-mlx-worker')).toBe('fast');
  await stream.readUntil((t) => (t.match(/"content":"/g) ?? []).length >= 3);
  const fast = cluster.workers.get('fast')!;
  fast.kill('SIGSTOP');
  try {
    const before = performance.now();
    await stream.readUntil((t) => t.includes('event: error'));
    const s = summarize(stream.received());
    const sinceLastChunk = stream.lastDataAt() - before;
    expect(s.done).toBe(false);
    expect(s.errors.map((e) => e.router_code)).toEqual(['STREAM_IDLE_TIMEOUT']);
    // The error arrives at most IDLE_MS after the SIGSTOP (the last chunk came no later than that),
    // plus slack; nothing else could end this stream so soon (2,000 tokens, offline after 5 s).
    expect(sinceLastChunk).toBeLessThan(IDLE_MS + MARGIN_MS);
  } finally {
    fast.kill('SIGCONT');
  }
  await waitFor(() => cluster.controller.deps.mux.size === 0, 'no pending replies');
});

test('streaming - a client disconnect reaches the worker as a cancel at once and frees its slot', async () => {
  const { cancels, sub } = recordCancels('fast');
  await cluster.nc.flush();
  const abort = new AbortController();
  const stream = await openStream(cluster.url, { content: 'leave early', maxTokens: 5000, signal: abort.signal });
  await stream.readUntil((t) => (t.match(/"content":"/g) ?? []).length >= 3);
  const abortedAt = performance.now();
  abort.abort();
  await waitFor(() => cancels.length === 1, 'a cancel', 2000, 2);
  // Promptly: the stream had 25 s to run and no deadline was near, so only the disconnect can
  // have sent it. (How fast, in ms, is a benchmark figure, not a test bound on two loaded cores.)
  expect(cancels[0].at - abortedAt).toBeLessThan(MARGIN_MS);
  // The worker stopped generating: its heartbeat reports no request in flight.
  await waitFor(() => cluster.controller.deps.registry.get('fast')?.reportedInFlight === 0, 'fast idle', 2000);
  await waitFor(() => cluster.controller.deps.mux.size === 0, 'no pending replies');
  sub.unsubscribe();
});

test('streaming - a client that stops reading hits the buffer cap and the worker is cancelled', async () => {
  const before = await metricsText();
  const { cancels, sub } = recordCancels('flood');
  await cluster.nc.flush();
  const { port } = new URL(cluster.url);
  const body = JSON.stringify({ model: 'flood-model', messages: [{ role: 'user', content: 'flood' }], max_tokens: 3_000_000, stream: true });
  const socket = net.connect(Number(port), '127.0.0.1');
  await new Promise((r) => socket.once('connect', r));
  socket.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  // Read nothing more: the controller's socket buffer fills until the cap trips.
  socket.pause();
  try {
    await waitFor(() => cancels.length >= 1, 'a cancel for the slow client', 20_000);
    await waitFor(() => cluster.controller.deps.mux.size === 0, 'no pending replies', 5000);
    const after = await metricsText();
    expect(after).toMatch(/mlx_router_in_flight_requests 0/);
    // The stream ended as "client too slow" (outcome cancelled), not by any timeout.
    expect(metricValue(after, 'mlx_router_attempts_total{outcome="cancelled"}') - metricValue(before, 'mlx_router_attempts_total{outcome="cancelled"}')).toBe(1);
    expect(metricValue(after, 'mlx_router_timeouts_total{kind="idle"}')).toBe(metricValue(before, 'mlx_router_timeouts_total{kind="idle"}'));
  } finally {
    socket.destroy();
    sub.unsubscribe();
  }
});

describe('wire faults from a scripted worker', () => {
  let fake: FakeWorker | undefined;
  afterEach(() => fake?.stop());

  async function streamFrom(model: string): Promise<ReturnType<typeof summarize>> {
    await waitFor(() => cluster.controller.deps.registry.forModel(model).length === 1, `fake worker for ${model}`);
    const stream = await openStream(cluster.url, { body: { model } });
    return summarize(await stream.readAll());
  }

  test('streaming - a sequence gap ends the stream with an error event, never [DONE]', async () => {
    fake = startFakeWorker(cluster.nc, 'gap', ['gap-model'], (reply) => {
      reply({ type: 'chunk', seq: 0, text: 'one' }, 0);
      reply({ type: 'chunk', seq: 2, text: ' three' }, 2);
      reply({ type: 'end', seq: 3, finish_reason: 'stop', usage: { prompt_tokens: 1, completion_tokens: 3, total_tokens: 4 } }, 3);
    });
    const s = await streamFrom('gap-model');
    expect(s.content).toBe('one');
    expect(s.done).toBe(false);
    expect(s.errors).toHaveLength(1);
    expect(s.errors[0].router_code).toBe('STREAM_INTERRUPTED');
    expect(s.errors[0].message).toMatch(/sequence gap \(expected 1, got 2\)/);
  });

  test('streaming - chunks numbered only in the body (no Mlx-Seq header) are read in order', async () => {
    fake = startFakeWorker(cluster.nc, 'bodyseq', ['bodyseq-model'], (reply) => {
      reply({ type: 'chunk', seq: 0, text: 'one' });
      reply({ type: 'chunk', seq: 1, text: ' two' });
      reply({ type: 'end', seq: 2, finish_reason: 'stop', usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 } });
    });
    const s = await streamFrom('bodyseq-model');
    expect(s.errors).toEqual([]);
    expect(s.done).toBe(true);
    expect(s.content).toBe('one two');
  });

  test('streaming - a duplicate chunk ends the stream with an error event', async () => {
    fake = startFakeWorker(cluster.nc, 'dup', ['dup-model'], (reply) => {
      reply({ type: 'chunk', seq: 0, text: 'one' }, 0);
      reply({ type: 'chunk', seq: 0, text: 'one' }, 0);
    });
    const s = await streamFrom('dup-model');
    expect(s.done).toBe(false);
    expect(s.errors[0]?.message).toMatch(/sequence duplicate/);
  });

  test('streaming - a missing final message ends in STREAM_IDLE_TIMEOUT, not a clean finish', async () => {
    fake = startFakeWorker(cluster.nc, 'mute', ['mute-model'], (reply) => {
      reply({ type: 'chunk', seq: 0, text: 'only this' }, 0);
    });
    const started = performance.now();
    const s = await streamFrom('mute-model');
    expect(s.content).toBe('only this');
    expect(s.done).toBe(false);
    expect(s.errors.map((e) => e.router_code)).toEqual(['STREAM_IDLE_TIMEOUT']);
    expect(performance.now() - started).toBeLessThan(IDLE_MS + MARGIN_MS);
  });

  test('streaming - a worker error before the first chunk is an HTTP error, not a stream', async () => {
    fake = startFakeWorker(cluster.nc, 'bad', ['bad-model'], (reply) => {
      reply({ type: 'error', code: 'CONTEXT_LENGTH_EXCEEDED', outcome: 'caller', message: 'prompt too long', seq: 0 }, 0);
    });
    await waitFor(() => cluster.controller.deps.registry.forModel('bad-model').length === 1, 'fake worker');
    const res = await chat(cluster.url, { stream: true, body: { model: 'bad-model' } });
    expect(res.status).toBe(400);
    expect(res.json.error.router_code).toBe('CONTEXT_LENGTH_EXCEEDED');
  });
});
