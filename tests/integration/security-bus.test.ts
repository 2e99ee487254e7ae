/**
 * Defence in depth on an open bus (docs/security.md): a rogue NATS client on the same server as a
 * real controller and real worker processes replays the attacks of issue 13 — forged cancels and
 * byes, fake heartbeats for real ids (draining, saturated, no models), garbage and forged replies,
 * a flood of new ids, malformed messages on every subject — and none of them costs a request, moves
 * a breaker or changes what the registry believes. Every drop is counted.
 */
import { headers, type Msg, type Subscription } from '@nats-io/transport-node';
import { encode, HDR_SEQ, makeSubjects, PROTOCOL_VERSION, type Heartbeat, type WireReply } from '../../src/protocol';
import { chat, chatStream, MODEL, metricsText, metricValue, spawnWorker, STEADY, startCluster, streamedText, waitFor, type Cluster } from '../helpers/cluster';

const subjects = makeSubjects();
let cluster: Cluster;
const MAX_WORKERS = 20;

beforeAll(async () => {
  cluster = await startCluster({
    workers: [{ id: 'real-a', tokenMs: 2 }, { id: 'real-b', tokenMs: 2 }],
    config: { ...STEADY, 'discovery.maxWorkers': MAX_WORKERS, 'discovery.maxModels': 8 },
  });
});

afterAll(async () => {
  await cluster?.stop();
});

async function dropped(subject: string, reason: string): Promise<number> {
  return metricValue(await metricsText(cluster.url), 'mlx_router_bus_dropped_total', { subject, reason }) ?? 0;
}

function breakersAllClosed(): boolean {
  return cluster.controller.deps.breakers.snapshot().every(([, kind]) => kind === 'closed');
}

function fakeHeartbeat(id: string, extra: Partial<Heartbeat> = {}): Heartbeat {
  return {
    type: 'heartbeat', version: PROTOCOL_VERSION, id, models: [MODEL], engine: 'rogue', max_concurrent: 64, in_flight: 0,
    state: 'ready', interval_ms: 100, instance: `rogue-instance-${id}`, ...extra,
  };
}

/** The answers a clean run gives, to compare the attacked runs with. */
async function expectedAnswers(n: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push((await chat(cluster.url, { content: `q${i}`, maxTokens: 12 })).json.choices[0].message.content);
  return out;
}

test('bus - injected replies, garbage and forged cancels on every attempt: every answer is the real one, no breaker moves', async () => {
  const expected = await expectedAnswers(8);
  const rogue = cluster.nc;
  let injected = 0;
  // The rogue learns every attempt's reply subject, request id and attempt (here by reading the
  // inference subjects, as it can on an open server), but not the attempt's token.
  const spy: Subscription = rogue.subscribe(subjects.infer('*'), {
    callback: (_err, msg: Msg) => {
      if (!msg.reply) return;
      const requestId = msg.headers?.get('Mlx-Request-Id');
      const seqd = (seq: number) => {
        const h = headers();
        h.set(HDR_SEQ, String(seq));
        h.set('Mlx-Token', 'guessed');
        return { headers: h };
      };
      const forged: WireReply[] = [
        { type: 'result', text: 'FORGED', finish_reason: 'stop', usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } },
        { type: 'error', code: 'WORKER_ERROR', outcome: 'worker_failure', message: 'FORGED failure' },
      ];
      rogue.publish(msg.reply, new TextEncoder().encode('\u0000garbage{'));
      rogue.publish(msg.reply, encode({ type: 'chunk', seq: 0, text: 'FORGED' }), seqd(0));
      for (const f of forged) rogue.publish(msg.reply, encode(f));
      rogue.publish(msg.reply, encode({ type: 'end', seq: 0, finish_reason: 'stop', usage: {} }), seqd(0));
      const worker = msg.subject.split('.')[3];
      rogue.publish(subjects.cancel(worker), encode({ request_id: requestId, attempt: 1, reply: msg.reply }));
      rogue.publish(subjects.cancel(worker), encode({ request_id: requestId, attempt: 1, reply: msg.reply, token: 'guessed' }));
      injected++;
    },
  });
  await rogue.flush();
  try {
    for (let i = 0; i < 8; i++) {
      const buffered = await chat(cluster.url, { content: `q${i}`, maxTokens: 12 });
      expect(buffered.status).toBe(200);
      expect(buffered.json.choices[0].message.content).toBe(expected[i]);
      expect(buffered.json.metadata.retryCount).toBe(0);
      const streamed = await chatStream(cluster.url, { content: `q${i}`, maxTokens: 12 });
      expect(streamed.status).toBe(200);
      expect(streamed.text.trimEnd().endsWith('data: [DONE]')).toBe(true);
      expect(streamedText(streamed.text)).toBe(expected[i]);
    }
  } finally {
    spy.unsubscribe();
  }
  expect(injected).toBeGreaterThanOrEqual(16);
  expect(breakersAllClosed()).toBe(true);
  // Messages that arrive after the real answer ended the attempt find no listener at all.
  expect(await dropped('reply', 'bad-token')).toBeGreaterThan(0);
});

test('bus - forged byes and fake heartbeats for real ids (draining, saturated, no models, other engine) change nothing', async () => {
  const rogue = cluster.nc;
  const before = await dropped('heartbeat', 'duplicate-id');
  for (let round = 0; round < 30; round++) {
    for (const id of ['real-a', 'real-b']) {
      rogue.publish(subjects.bye, encode({ type: 'bye', id }));
      rogue.publish(subjects.bye, encode({ type: 'bye', id, instance: 'not-the-live-instance' }));
      rogue.publish(subjects.heartbeat, encode(fakeHeartbeat(id, { state: 'draining' })));
      rogue.publish(subjects.heartbeat, encode(fakeHeartbeat(id, { in_flight: 1000, max_concurrent: 1 })));
      rogue.publish(subjects.heartbeat, encode(fakeHeartbeat(id, { models: [] })));
    }
  }
  await rogue.flush();
  await waitFor(async () => (await dropped('heartbeat', 'duplicate-id')) >= before + 120, 'the fake heartbeats dropped');
  const registry = cluster.controller.deps.registry;
  for (const id of ['real-a', 'real-b']) {
    const w = registry.get(id)!;
    expect(w).toMatchObject({ state: 'ready', models: [MODEL], engine: 'synthetic', gone: false });
    expect(w.maxConcurrent).toBeGreaterThan(1);
  }
  expect(await dropped('bye', 'malformed')).toBeGreaterThanOrEqual(60);
  expect(await dropped('bye', 'wrong-instance')).toBeGreaterThanOrEqual(60);
  const replies = await Promise.all(Array.from({ length: 10 }, (_, i) => chat(cluster.url, { content: `after ${i}` })));
  expect(replies.map((r) => r.status)).toEqual(Array(10).fill(200));
  expect(new Set(replies.map((r) => r.json.metadata.selectedWorker))).toEqual(new Set(['real-a', 'real-b']));
  expect(breakersAllClosed()).toBe(true);
});

test('bus - a second worker process with a live id is refused: it exits naming the id, and streams to the first never break', async () => {
  const model = 'dup-model';
  const first = await cluster.addWorker({ id: 'dup', models: [model], tokenMs: 2 });
  const liveInstance = cluster.controller.deps.registry.get('dup')!.instance;
  let streaming = true;
  const results: Array<{ status: number; text: string }> = [];
  const load = (async () => {
    while (streaming) results.push(await chatStream(cluster.url, { body: { model }, maxTokens: 20 }));
  })();
  const second = spawnWorker(cluster.natsUrl, { id: 'dup', models: [model], tokenMs: 2 });
  try {
    const exit = await second.exited;
    expect(exit.code).toBe(3);
    expect(second.output()).toMatch(/worker id 'dup' is already served by another live worker process/);
  } finally {
    if (second.process.exitCode === null) second.kill('SIGKILL');
    await second.exited;
    streaming = false;
    await load;
  }
  expect(results.length).toBeGreaterThan(0);
  for (const r of results) {
    expect(r.status).toBe(200);
    expect(r.text).not.toContain('event: error');
    expect(r.text.trimEnd().endsWith('data: [DONE]')).toBe(true);
  }
  // The first instance is still the live one, never taken offline by the refused one's bye.
  const w = cluster.controller.deps.registry.get('dup')!;
  expect(w.instance).toBe(liveInstance);
  expect(cluster.controller.deps.registry.isOnline(w)).toBe(true);
  expect(first.process.exitCode).toBeNull();
  expect(breakersAllClosed()).toBe(true);
  const after = await chat(cluster.url, { body: { model } });
  expect(after.status).toBe(200);
});

test('bus - a worker restarted under the same id after a crash takes the id over once the old instance is offline, unrefused', async () => {
  const model = 'restart-model';
  await cluster.addWorker({ id: 'phoenix', models: [model] });
  const old = cluster.controller.deps.registry.get('phoenix')!.instance;
  await cluster.stopWorker('phoenix', 'SIGKILL');
  // Restarted before the controller noticed the silence: the new instance waits for the old one
  // to go offline (one offline period at most), then serves; it is not refused.
  const reborn = spawnWorker(cluster.natsUrl, { id: 'phoenix', models: [model] });
  cluster.workers.set('phoenix', reborn);
  await waitFor(() => {
    const w = cluster.controller.deps.registry.get('phoenix');
    return w && w.instance !== old && cluster.controller.deps.registry.isOnline(w);
  }, 'the new instance online', 15_000);
  const r = await chat(cluster.url, { body: { model } });
  expect(r.status).toBe(200);
  expect(reborn.process.exitCode).toBeNull();
});

// Last: it leaves the registry full of fake ids (forgotten only after ten offline periods).
test('bus - a flood of new worker ids stops at discovery.maxWorkers; too many models and malformed messages are dropped', async () => {
  const rogue = cluster.nc;
  for (let i = 0; i < 2000; i++) rogue.publish(subjects.heartbeat, encode(fakeHeartbeat(`fake-${i}`, { models: ['rogue-model'] })));
  rogue.publish(subjects.heartbeat, encode(fakeHeartbeat('many-models', { models: Array.from({ length: 9 }, (_, i) => `m${i}`) })));
  const garbage: unknown[] = [
    'not json', 42, null, [], { type: 'heartbeat' }, { type: 'heartbeat', id: '../../etc', instance: 'abcdefgh', models: [] },
    { type: 'heartbeat', id: 'x', instance: 'abcdefgh', models: 'all' }, { type: 'heartbeat', id: 'x', instance: 'abcdefgh', models: [MODEL], in_flight: -1 },
    { type: 'heartbeat', id: 'x', instance: 'abcdefgh', models: [{ toString: 1 }] }, JSON.parse('{"__proto__":{"polluted":1},"type":"heartbeat"}'),
    { type: 'heartbeat', id: 'x', instance: 'abcdefgh', models: ['m'.repeat(10_000)] },
  ];
  for (const g of garbage) {
    rogue.publish(subjects.heartbeat, typeof g === 'string' ? new TextEncoder().encode(g) : encode(g));
    rogue.publish(subjects.bye, typeof g === 'string' ? new TextEncoder().encode(g) : encode(g));
  }
  rogue.publish(subjects.heartbeat, new Uint8Array([0xff, 0xfe, 0x00, 0xc3]));
  await rogue.flush();
  await waitFor(async () => (await dropped('heartbeat', 'registry-full')) >= 2000 - MAX_WORKERS, 'the flood dropped', 15_000);
  const registry = cluster.controller.deps.registry;
  expect(registry.size).toBeLessThanOrEqual(MAX_WORKERS);
  expect(registry.get('many-models')).toBeUndefined();
  expect(await dropped('heartbeat', 'too-many-models')).toBe(1);
  expect(await dropped('heartbeat', 'malformed')).toBeGreaterThanOrEqual(garbage.length);
  expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  // The real workers still serve; no breaker moved.
  const r = await chat(cluster.url, { content: 'after the flood' });
  expect(r.status).toBe(200);
  expect(['real-a', 'real-b']).toContain(r.json.metadata.selectedWorker);
  expect(breakersAllClosed()).toBe(true);
});
