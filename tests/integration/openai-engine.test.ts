/**
 * The whole path with a real engine adapter: controller → NATS → worker process
 * (`--engine openai`) → a fake OpenAI-compatible server. The same checks a synthetic cluster
 * passes (buffered, streamed, usage, models, errors), then each engine fault and its answer.
 * The tests run in order: worker oa2 joins half-way, for the retry-elsewhere and engine-down cases.
 */
import OpenAI from 'openai';
import { addEngineWorker, chat, MODEL, parseSse, startCluster, startTogether, STARTUP_MS, streamedText, waitFor, type Cluster } from '../helpers/cluster';
import { FAKE_PROMPT_TOKENS, FAKE_USAGE_DETAILS, fakeAnswer, startFakeEngine, type FakeEngine } from '../helpers/fake-engine';

/** A model only oa1's engine lists: oa1 is its only worker. */
const EXTRA = 'fake-extra';
const PROBE_ENV = { MLX_ROUTER_WORKER_OPENAI_PROBE_INTERVAL_MS: '100', MLX_ROUTER_WORKER_OPENAI_CONNECT_TIMEOUT_MS: '500' };

let cluster: Cluster;
let fake1: FakeEngine;
let fake2: FakeEngine;

beforeAll(async () => {
  [cluster, fake1, fake2] = await startTogether([
    startCluster({
      config: {
        // Round robin makes "which worker first" deterministic for the retry-elsewhere case.
        'cluster.requestRouting.strategy': 'round-robin',
        // These openai workers cannot continue a partial answer (continuation off): no resume.
        'cluster.streaming.resume': false,
      },
    }),
    startFakeEngine({ models: [MODEL, EXTRA] }),
    startFakeEngine({ models: ['unrelated'] }),
  ]);
  // No --model: oa1 advertises what fake1 lists.
  await addEngineWorker(cluster, { id: 'oa1', engineUrl: fake1.url, env: PROBE_ENV });
  // Online comes first; the models follow from the engine's GET /models (a loaded machine may
  // need a second probe for it).
  await waitFor(() => cluster.controller.deps.registry.get('oa1')?.models.length === 2, 'oa1 advertising its engine models', STARTUP_MS);
});

afterAll(async () => {
  await cluster?.stop();
  await Promise.all([fake1?.close(), fake2?.close()]);
});

beforeEach(async () => {
  await Promise.all([fake1.reopen(), fake2.reopen()]);
  fake1.reset();
  fake2.reset();
});

test('openai worker - buffered completion carries the engine text, finish_reason and usage', async () => {
  const res = await chat(cluster.url, { maxTokens: 5, content: 'Say hi' });
  expect(res.status).toBe(200);
  expect(res.json.choices[0].message.content).toBe(fakeAnswer(5).text);
  expect(res.json.choices[0].finish_reason).toBe('length');
  // The engine's usage whole, its details included (protocol v2).
  expect(res.json.usage).toEqual({ prompt_tokens: FAKE_PROMPT_TOKENS, completion_tokens: 5, total_tokens: FAKE_PROMPT_TOKENS + 5, ...FAKE_USAGE_DETAILS });
  const sent = fake1.chatRequests();
  expect(sent).toHaveLength(1);
  // A v2 body goes to the engine as the client sent it, streamed (the worker sees every token and
  // reports progress) and rebuilt whole for the client; usage always asked for.
  expect(sent[0].body).toMatchObject({ model: MODEL, messages: [{ role: 'user', content: 'Say hi' }], max_tokens: 5, stream: true, stream_options: { include_usage: true } });
});

test('openai worker - streamed completion relays the engine text, its usage and [DONE]', async () => {
  const res = await chat(cluster.url, { stream: true, maxTokens: 50, body: { stream_options: { include_usage: true } } });
  expect(res.status).toBe(200);
  expect(streamedText(res.text)).toBe(fakeAnswer(50).text);
  const events = parseSse(res.text);
  expect(events[events.length - 1].data).toBe('[DONE]');
  const chunks = events.filter((e) => e.event === 'message' && e.data !== '[DONE]').map((e) => JSON.parse(e.data));
  expect(chunks.map((c) => c.choices?.[0]?.finish_reason).filter(Boolean)).toEqual(['stop']);
  expect(chunks.find((c) => c.usage)?.usage).toEqual({ prompt_tokens: FAKE_PROMPT_TOKENS, completion_tokens: 12, total_tokens: FAKE_PROMPT_TOKENS + 12, ...FAKE_USAGE_DETAILS });
  // The worker always asks the engine for usage on streams.
  expect(fake1.chatRequests()[0].body.stream_options).toEqual({ include_usage: true });
});

test('openai worker - /v1/models lists the models the engine lists', async () => {
  const res = await fetch(`${cluster.url}/v1/models`);
  const body = (await res.json()) as { data: Array<{ id: string }> };
  expect(body.data.map((m) => m.id)).toEqual([EXTRA, MODEL].sort());
  expect(cluster.controller.deps.registry.get('oa1')?.engine).toBe('openai');
});

test('openai worker - engine 429 on the only worker ends in 503 WORKER_OVERLOADED with its Retry-After', async () => {
  fake1.behave({ mode: 'rate-limited', retryAfter: '1' });
  const res = await chat(cluster.url);
  expect(res.status).toBe(503);
  expect(res.json.error.router_code).toBe('WORKER_OVERLOADED');
  expect(res.headers.get('retry-after')).toBe('1');
  // Overload is retryable: the first attempt and both retries reached the engine.
  expect(fake1.chatRequests()).toHaveLength(1 + cluster.config.cluster.requestRouting.retry.maxRetries);
});

test('openai worker - engine 400 is a 400 REQUEST_VALIDATION_FAILED, never retried', async () => {
  fake1.behave({ mode: 'status', status: 400, errorMessage: 'unsupported value for logit_bias' });
  const res = await chat(cluster.url);
  expect(res.status).toBe(400);
  expect(res.json.error.router_code).toBe('REQUEST_VALIDATION_FAILED');
  expect(res.json.error.message).toContain('unsupported value for logit_bias');
  expect(fake1.chatRequests()).toHaveLength(1);
});

test('openai worker - engine 400 about context length is a 400 CONTEXT_LENGTH_EXCEEDED, never retried', async () => {
  fake1.behave({ mode: 'status', status: 400, errorMessage: "This model's maximum context length is 4096 tokens." });
  const res = await chat(cluster.url);
  expect(res.status).toBe(400);
  expect(res.json.error.router_code).toBe('CONTEXT_LENGTH_EXCEEDED');
  expect(fake1.chatRequests()).toHaveLength(1);
});

test('openai worker - the official openai client sees OpenAI\'s codes: context_length_exceeded on messages, worker_overloaded with our code beside', async () => {
  const client = new OpenAI({ baseURL: `${cluster.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const ask = () => client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: 5 }).catch((e: unknown) => e);
  fake1.behave({ mode: 'status', status: 400, errorMessage: "This model's maximum context length is 4096 tokens." });
  const tooLong = await ask();
  expect(tooLong).toBeInstanceOf(OpenAI.BadRequestError);
  const e = tooLong as InstanceType<typeof OpenAI.BadRequestError>;
  expect([e.status, e.type, e.code, e.param]).toEqual([400, 'invalid_request_error', 'context_length_exceeded', 'messages']);
  expect((e.error as { router_code?: string }).router_code).toBe('CONTEXT_LENGTH_EXCEEDED');
  expect(e.headers.get('x-mlx-error-code')).toBe('CONTEXT_LENGTH_EXCEEDED');

  // The engine's 429: the cluster was busy, not the client wrong (docs/errors.md: 503, not 429).
  fake1.behave({ mode: 'rate-limited', retryAfter: '1' });
  const busy = await ask();
  expect(busy).toBeInstanceOf(OpenAI.InternalServerError);
  const b = busy as InstanceType<typeof OpenAI.InternalServerError>;
  expect([b.status, b.type, b.code]).toEqual([503, 'server_error', 'worker_overloaded']);
  expect((b.error as { router_code?: string }).router_code).toBe('WORKER_OVERLOADED');
  expect(b.headers.get('retry-after')).toBe('1');
});

test.each([
  ['drops', 'cut-stream' as const],
  ['closes cleanly, without finish_reason or [DONE],', 'end-early' as const],
])('openai worker - a stream the engine %s mid-answer ends in an SSE error event, never [DONE]', async (_how, mode) => {
  fake1.behave({ mode, cutAfterChunks: 3 });
  const res = await chat(cluster.url, { stream: true, maxTokens: 50 });
  expect(res.status).toBe(200);
  const events = parseSse(res.text);
  expect(streamedText(res.text)).toBe(fakeAnswer(50).pieces.slice(0, 3).join(''));
  expect(events.some((e) => e.event === 'error')).toBe(true);
  expect(events.some((e) => e.data === '[DONE]')).toBe(false);
  // Committed: the engine is not asked again for an answer the client has half-seen.
  expect(fake1.chatRequests()).toHaveLength(1);
});

test('openai worker - a client that goes away closes the HTTP request to the engine', async () => {
  fake1.behave({ mode: 'hang' });
  const client = new AbortController();
  const pending = chat(cluster.url, { signal: client.signal }).catch((e: unknown) => e);
  await waitFor(() => fake1.open() === 1, 'the request to reach the engine', 5000);
  client.abort();
  await pending;
  await waitFor(() => fake1.aborted() === 1, 'the engine to see its request closed', 3000);
  expect(fake1.open()).toBe(0);
});

test('openai worker - engine 429 with another worker is retried there and succeeds', async () => {
  await addEngineWorker(cluster, { id: 'oa2', engineUrl: fake2.url, models: [MODEL], env: PROBE_ENV });
  fake1.behave({ mode: 'rate-limited', retryAfter: '1' });
  const answers = [await chat(cluster.url, { maxTokens: 3 }), await chat(cluster.url, { maxTokens: 3 })];
  expect(answers.map((a) => a.status)).toEqual([200, 200]);
  expect(answers.map((a) => a.json.choices[0].message.content)).toEqual([fakeAnswer(3).text, fakeAnswer(3).text]);
  // Round robin sends one or both first attempts to oa1 (a retry takes a turn too, so which depends
  // on the turns earlier tests took); each 429 there moved its request to oa2, which answered both.
  expect(fake1.chatRequests().length).toBeGreaterThanOrEqual(1);
  expect(answers.map((a) => a.json.metadata.selectedWorker)).toEqual(['oa2', 'oa2']);
  expect(fake2.chatRequests()).toHaveLength(2);
  const movedFromOa1 = answers.filter((a) => a.json.metadata.failedWorkers.includes('oa1'));
  expect(movedFromOa1.length).toBeGreaterThanOrEqual(1);
  for (const a of movedFromOa1) {
    expect(a.json.metadata.attempts[0]).toMatchObject({ worker: 'oa1', outcome: 'rejected', code: 'WORKER_OVERLOADED' });
  }
});

test('openai worker - an engine that goes down makes its worker unhealthy and unselected, until it is back', async () => {
  const registry = cluster.controller.deps.registry;
  // worker.promptCacheSize (default 10) is advertised with the cache's epoch.
  const epoch = registry.get('oa1')?.promptCache?.epoch;
  expect(registry.get('oa1')?.promptCache?.size).toBe(10);
  expect(typeof epoch).toBe('string');
  await fake1.close();
  await waitFor(() => registry.get('oa1')?.state === 'unhealthy', 'oa1 reported unhealthy', 5000);
  // Still online (heartbeating), still listing its models, but never selected.
  expect(registry.online().map((w) => w.id)).toContain('oa1');
  // The controller first waits (workerWaitTimeoutMs) for a worker of the model to come back.
  const only = await chat(cluster.url, { body: { model: EXTRA } });
  expect(only.status).toBe(503);
  expect(only.json.error.router_code).toBe('NO_WORKERS_AVAILABLE');
  const shared = await chat(cluster.url, { maxTokens: 2 });
  expect(shared.status).toBe(200);
  expect(shared.json.choices[0].message.content).toBe(fakeAnswer(2).text);
  expect(fake2.chatRequests()).toHaveLength(1);

  await fake1.reopen();
  await waitFor(() => registry.get('oa1')?.state === 'ready', 'oa1 ready again', 5000);
  // An engine back from being down may have restarted: its cache starts a new epoch.
  expect(registry.get('oa1')?.promptCache?.epoch).not.toBe(epoch);
  const back = await chat(cluster.url, { body: { model: EXTRA }, maxTokens: 2 });
  expect(back.status).toBe(200);
  expect(fake1.chatRequests()).toHaveLength(1);
});

test('openai worker - with every engine down, /ready is 503 saying the workers are there but their engines are not, and the worker log names the engine URL', async () => {
  const registry = cluster.controller.deps.registry;
  // Nothing listens on port 1: this worker's engine is down from the start.
  const down = 'http://127.0.0.1:1/v1';
  const oa3 = await addEngineWorker(cluster, { id: 'oa3', engineUrl: down, models: [MODEL], env: PROBE_ENV });
  // Its start-up line names the engine URL and says it is down (not "worker ready").
  const line = await waitFor(() => oa3.output().split('\n').find((l) => l.includes('does not answer')), 'the worker start-up line', 10_000);
  expect(JSON.parse(line)).toMatchObject({ worker: 'oa3', engine: 'openai', engineUrl: down });
  expect(JSON.parse(line).msg).toContain(`its engine at ${down} does not answer`);
  expect(oa3.output()).not.toMatch(/worker ready/);

  await Promise.all([fake1.close(), fake2.close()]);
  await waitFor(() => ['oa1', 'oa2', 'oa3'].every((id) => registry.get(id)?.state === 'unhealthy'), 'every engine reported unhealthy', 5000);
  const ready = await fetch(`${cluster.url}/ready`);
  expect(ready.status).toBe(503);
  const body = (await ready.json()) as { reason: string };
  expect(body).toMatchObject({ status: 'not ready', nats: 'connected', workersOnline: 3, workersReady: 0, enginesUnhealthy: 3 });
  expect(body.reason).toMatch(/3 worker\(s\) online, but every one reports its engine unhealthy/);
  // A request for their model says the same, instead of "no worker".
  const r = await chat(cluster.url, { maxTokens: 2 });
  expect(r.status).toBe(503);
  expect(r.json.error.router_code).toBe('NO_WORKERS_AVAILABLE');
  expect(r.json.error.message).toMatch(/3 worker\(s\) serve model .* but their engines are unhealthy/);

  // One engine back: ready again.
  await fake2.reopen();
  await waitFor(() => registry.get('oa2')?.state === 'ready', 'oa2 ready again', 5000);
  const again = await fetch(`${cluster.url}/ready`);
  expect(again.status).toBe(200);
  expect(await again.json()).toMatchObject({ status: 'ready', workersReady: 1, enginesUnhealthy: 2 });
});
