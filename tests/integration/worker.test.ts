/**
 * A worker process on the wire (protocol v1 requests; a v2 worker still serves them), spoken to directly over a real nats-server: the
 * contract a worker in any language must keep (docs/protocol.md).
 */
import { connect, createInbox, type Msg, type NatsConnection } from '@nats-io/transport-node';
import { startNatsServer, type NatsServerHandle } from '../../src/nats-server';
import { decode, encode, HDR_INSTANCE, HDR_TOKEN, makeSubjects, requestHeaders, type Heartbeat, type WireReply, type WireResult } from '../../src/protocol';
import { MODEL, spawnWorker, STARTUP_MS, waitFor, type WorkerOptions, type WorkerProcess } from '../helpers/cluster';

const subjects = makeSubjects();
let nats: NatsServerHandle;
let nc: NatsConnection;
const heartbeats: Heartbeat[] = [];
const byes: string[] = [];
const workers: WorkerProcess[] = [];

beforeAll(async () => {
  nats = await startNatsServer();
  nc = await connect({ servers: nats.url });
  nc.subscribe(subjects.heartbeat, { callback: (_e, m) => void heartbeats.push(decode<Heartbeat>(m.data)!) });
  nc.subscribe(subjects.bye, { callback: (_e, m) => void byes.push(decode<{ id: string }>(m.data)!.id) });
  await nc.flush();
});

afterAll(async () => {
  for (const w of workers) if (w.process.exitCode === null && w.process.signalCode === null) w.kill('SIGKILL');
  await Promise.all(workers.map((w) => w.exited));
  await nc?.close();
  await nats?.stop();
});

async function worker(id: string, extra: Partial<WorkerOptions> = {}): Promise<WorkerProcess> {
  const w = spawnWorker(nats.url, { id, heartbeatMs: 100, ...extra });
  workers.push(w);
  await waitFor(() => heartbeats.some((h) => h.id === id), `heartbeat from ${id}`, STARTUP_MS);
  return w;
}

/** Sends one request and collects replies until `end`, `result` or `error` (or `ms` passes). */
async function ask(
  id: string,
  body: Record<string, unknown>,
  opts: { deadlineMs?: number; attempt?: number; ms?: number; requestId?: string; inbox?: string; token?: string; onHeaders?: (m: Msg) => void } = {},
) {
  const inbox = opts.inbox ?? createInbox();
  const replies: WireReply[] = [];
  const sub = nc.subscribe(inbox);
  const done = (async () => {
    for await (const m of sub as AsyncIterable<Msg>) {
      if (m.data.length === 0) {
        replies.push({ type: 'error', code: 'NO_RESPONDERS', outcome: 'not_delivered', message: String(m.headers?.code) });
        break;
      }
      opts.onHeaders?.(m);
      const r = decode<WireReply>(m.data)!;
      replies.push(r);
      if (r.type !== 'chunk') break;
    }
  })();
  const stream = body.stream === true;
  nc.publish(subjects.infer(id), encode({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], ...body }), {
    reply: inbox,
    headers: requestHeaders({ requestId: opts.requestId ?? 'r1', attempt: opts.attempt ?? 1, deadlineMs: opts.deadlineMs ?? 10_000, stream, token: opts.token ?? 'tok-default' }),
  });
  const timer = setTimeout(() => sub.unsubscribe(), opts.ms ?? 3000);
  await done;
  clearTimeout(timer);
  sub.unsubscribe();
  return replies;
}

test('worker - heartbeats carry models, capacity, in-flight count and state, and it answers discovery at once', async () => {
  // A 5 s heartbeat period: a heartbeat soon after discovery is the answer to it.
  await worker('hb', { maxConcurrent: 3, heartbeatMs: 5000 });
  const hb = heartbeats.find((h) => h.id === 'hb')!;
  expect(hb).toMatchObject({ type: 'heartbeat', version: 2, models: [MODEL], engine: 'synthetic', max_concurrent: 3, in_flight: 0, state: 'ready', continuation: true });
  expect(hb.capabilities).toEqual({ [MODEL]: ['chat', 'completions', 'embeddings', 'tools'] });
  // The prompt cache (worker.promptCacheSize, default 10) with this process's epoch.
  expect(hb.prompt_cache).toEqual({ size: 10, epoch: expect.any(String) });
  const before = heartbeats.filter((h) => h.id === 'hb').length;
  nc.publish(subjects.discover, encode({ type: 'discover' }));
  // Answered after a random delay of at most a quarter interval (250 ms here), then not again this interval.
  await waitFor(() => heartbeats.filter((h) => h.id === 'hb').length > before, 'a heartbeat after discover', 1500, 2);
});

test('worker - the synthetic prompt cache: a repeated prompt reports cached_tokens; --prompt-cache-size 0 turns it off', async () => {
  await worker('pc', { prefillUsPerToken: 10 });
  const body = { messages: [{ role: 'system', content: 'a long shared system prompt '.repeat(20) }, { role: 'user', content: 'hi' }] };
  const [first] = await ask('pc', body);
  const [second] = await ask('pc', body);
  expect(first).toMatchObject({ type: 'result', usage: { prompt_tokens_details: { cached_tokens: 0 } } });
  const prompt = (first as WireResult).usage.prompt_tokens;
  expect(second).toMatchObject({ type: 'result', usage: { prompt_tokens: prompt, prompt_tokens_details: { cached_tokens: prompt - 1 } } });
  expect((second as WireResult).text).toBe((first as WireResult).text);
  await worker('nopc', { promptCacheSize: 0 });
  expect(heartbeats.find((h) => h.id === 'nopc')?.prompt_cache).toBeUndefined();
  const [plain] = await ask('nopc', body);
  expect((plain as WireResult).usage.prompt_tokens_details).toBeUndefined();
});

test('worker - buffered and streamed answers carry the same text; chunks are numbered from 0 and end with usage', async () => {
  await worker('ans');
  const [result] = await ask('ans', { max_tokens: 6 });
  expect(result).toMatchObject({ type: 'result', finish_reason: 'length', usage: { completion_tokens: 6 } });
  const streamed = await ask('ans', { max_tokens: 6, stream: true });
  const chunks = streamed.filter((r) => r.type === 'chunk');
  expect(chunks.map((c) => (c as { seq: number }).seq)).toEqual(chunks.map((_, i) => i));
  const end = streamed.at(-1)!;
  expect(end).toMatchObject({ type: 'end', seq: chunks.length, finish_reason: 'length', usage: { completion_tokens: 6 } });
  expect(chunks.map((c) => (c as { text: string }).text).join('')).toBe((result as { text: string }).text);
});

test('worker - beyond max concurrency it rejects at once with WORKER_OVERLOADED, never queues', async () => {
  // The two in flight take 3 s: an answer in well under that did not wait for a slot.
  await worker('busy', { maxConcurrent: 2, ttftMs: 3000 });
  const slow = [ask('busy', { max_tokens: 2 }, { requestId: 'a', ms: 10_000 }), ask('busy', { max_tokens: 2 }, { requestId: 'b', ms: 10_000 })];
  await waitFor(() => heartbeats.some((h) => h.id === 'busy' && h.in_flight === 2), 'two in flight');
  const started = performance.now();
  const [rejected] = await ask('busy', { max_tokens: 2 }, { requestId: 'c' });
  expect(performance.now() - started).toBeLessThan(1500);
  expect(rejected).toMatchObject({ type: 'error', code: 'WORKER_OVERLOADED', outcome: 'rejected' });
  expect((rejected as { retry_after_ms?: number }).retry_after_ms).toBeGreaterThan(0);
  const done = await Promise.all(slow);
  expect(done.map((r) => r[0].type)).toEqual(['result', 'result']);
});

test('worker - a cancel stops generation and frees the slot; expired deadlines are dropped unanswered', async () => {
  await worker('cxl', { maxConcurrent: 1, tokenMs: 20 });
  const inbox = createInbox();
  const pending = ask('cxl', { max_tokens: 1000, stream: true }, { requestId: 'long', ms: 1500, inbox, token: 'secret-1' });
  await waitFor(() => heartbeats.some((h) => h.id === 'cxl' && h.in_flight === 1), 'busy');
  nc.publish(subjects.cancel('cxl'), encode({ request_id: 'long', attempt: 1, reply: inbox, token: 'secret-1' }));
  await waitFor(() => heartbeats.filter((h) => h.id === 'cxl').at(-1)?.in_flight === 0, 'slot freed', 5000);
  const replies = await pending;
  expect(replies.every((r) => r.type === 'chunk')).toBe(true); // no end: the worker stopped
  expect(replies.length).toBeLessThan(1000);
  // A request whose deadline already passed gets no answer and takes no slot.
  const dropped = await ask('cxl', { max_tokens: 2 }, { deadlineMs: 0, ms: 300 });
  expect(dropped).toEqual([]);
  const [ok] = await ask('cxl', { max_tokens: 2 });
  expect(ok.type).toBe('result');
});

test('worker - two attempts with the same client request id are told apart by reply subject: a cancel stops only its own', async () => {
  await worker('twins', { tokenMs: 20 });
  const [inboxA, inboxB] = [createInbox(), createInbox()];
  const a = ask('twins', { max_tokens: 30, stream: true }, { requestId: 'same', inbox: inboxA, ms: 3000, token: 'tok-a' });
  const b = ask('twins', { max_tokens: 30, stream: true }, { requestId: 'same', inbox: inboxB, ms: 3000, token: 'tok-b' });
  await waitFor(() => heartbeats.some((h) => h.id === 'twins' && h.in_flight === 2), 'both in flight');
  // Forged cancels (no token, another attempt's token, right token for the wrong subject) change nothing.
  nc.publish(subjects.cancel('twins'), encode({ request_id: 'same', attempt: 1, reply: inboxB }));
  nc.publish(subjects.cancel('twins'), encode({ request_id: 'same', attempt: 1, reply: inboxB, token: 'tok-a' }));
  nc.publish(subjects.cancel('twins'), encode({ request_id: 'same', attempt: 1 }));
  nc.publish(subjects.cancel('twins'), encode({ request_id: 'same', attempt: 1, reply: inboxA, token: 'tok-a' }));
  const [ra, rb] = await Promise.all([a, b]);
  expect(ra.at(-1)?.type).toBe('chunk'); // cut off: no end
  expect(rb.at(-1)).toMatchObject({ type: 'end', finish_reason: 'length' });
});

test('worker - every reply message echoes the attempt token and names the worker instance of its heartbeats', async () => {
  await worker('echo');
  const instance = heartbeats.find((h) => h.id === 'echo')!.instance;
  expect(instance).toMatch(/^[A-Za-z0-9_-]{8,64}$/);
  const seen: Array<[string, string]> = [];
  const onHeaders = (m: Msg): void => void seen.push([m.headers?.get(HDR_TOKEN) ?? '', m.headers?.get(HDR_INSTANCE) ?? '']);
  await ask('echo', { max_tokens: 5, stream: true }, { token: 'tok-stream', onHeaders });
  await ask('echo', { max_tokens: 5 }, { token: 'tok-buffered', onHeaders });
  await ask('echo', { model: 'other' }, { token: 'tok-error', onHeaders });
  const tokens = seen.map(([t]) => t);
  expect(tokens.filter((t) => t === 'tok-stream').length).toBeGreaterThanOrEqual(2); // chunks and the end
  expect(tokens.slice(-2)).toEqual(['tok-buffered', 'tok-error']);
  expect(new Set(seen.map(([, i]) => i))).toEqual(new Set([instance]));
});

test('worker - discovery floods are answered at most once per heartbeat interval', async () => {
  await worker('flood', { heartbeatMs: 3000 });
  await waitFor(() => heartbeats.some((h) => h.id === 'flood'), 'first heartbeat');
  const before = heartbeats.filter((h) => h.id === 'flood').length;
  for (let i = 0; i < 2000; i++) nc.publish(subjects.discover, encode({ type: 'discover' }));
  await nc.flush();
  await waitFor(() => heartbeats.filter((h) => h.id === 'flood').length > before, 'the one answer', 2000);
  // Settle well past the answer's jitter (<= 250 ms): still one, not 2000.
  await new Promise((r) => setTimeout(r, 600));
  expect(heartbeats.filter((h) => h.id === 'flood').length - before).toBeLessThanOrEqual(2); // the answer, maybe one periodic beat
});

test('worker - a bad request is a caller error, an unknown model MODEL_NOT_FOUND', async () => {
  await worker('strict');
  const [bad] = await ask('strict', { messages: 'nope' });
  expect(bad).toMatchObject({ type: 'error', code: 'REQUEST_VALIDATION_FAILED', outcome: 'caller' });
  const [unknown] = await ask('strict', { model: 'other' });
  expect(unknown).toMatchObject({ type: 'error', code: 'MODEL_NOT_FOUND', outcome: 'caller' });
});

test('worker - SIGTERM finishes in-flight requests, says bye and exits 0', async () => {
  const w = await worker('drain', { ttftMs: 400 });
  const inFlight = ask('drain', { max_tokens: 3 }, { requestId: 'last' });
  await waitFor(() => heartbeats.some((h) => h.id === 'drain' && h.in_flight === 1), 'in flight');
  w.kill('SIGTERM');
  const [answer] = await inFlight;
  expect(answer.type).toBe('result');
  expect(await w.exited).toEqual({ code: 0, signal: null });
  expect(byes).toContain('drain');
  expect(heartbeats.some((h) => h.id === 'drain' && h.state === 'draining')).toBe(true);
  // Gone: the server answers "no responders" for it now.
  const [none] = await ask('drain', { max_tokens: 1 });
  expect(none).toMatchObject({ code: 'NO_RESPONDERS' });
});

test('worker - bad flags exit 2 with a message naming the flag', async () => {
  const w = spawnWorker(nats.url, { id: 'x', maxConcurrent: 0 });
  workers.push(w);
  expect((await w.exited).code).toBe(2);
  expect(w.output()).toMatch(/--max-concurrent/);
});

test('worker - SIGTERM while NATS is down still exits, within its shutdown bound (no process left behind)', async () => {
  const own = await startNatsServer();
  const ownNc = await connect({ servers: own.url });
  try {
    let seen = false;
    ownNc.subscribe(subjects.heartbeat, { callback: (_e, m) => void (decode<Heartbeat>(m.data)?.id === 'lonely' && (seen = true)) });
    await ownNc.flush();
    const w = spawnWorker(own.url, { id: 'lonely', heartbeatMs: 100 });
    workers.push(w);
    await waitFor(() => seen, 'heartbeat from lonely', STARTUP_MS);
    await ownNc.close();
    // The server goes away for good: the worker keeps trying to reconnect.
    own.process.kill('SIGKILL');
    await own.stop(0);
    w.kill('SIGTERM');
    const started = Date.now();
    const exit = await Promise.race([w.exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 20_000).unref())]);
    expect(exit).toEqual({ code: 0, signal: null });
    // The bound is a few seconds (docs/deployment.md), well below the 20 s this test waits.
    expect(Date.now() - started).toBeLessThan(15_000);
  } finally {
    if (!ownNc.isClosed()) await ownNc.close();
    await own.stop();
  }
});
