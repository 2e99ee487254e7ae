/**
 * The openai engine against a fake OpenAI-compatible server on a free port: generation (buffered,
 * streamed), usage (reported or estimated), every engine fault mapped to its EngineError code,
 * cancellation closing the HTTP request, model listing and the health probe.
 */
import { StreamAssembler } from '../../src/worker/openai-v2';
import { EngineError } from '../../src/worker/engine';
import { engineBody, openaiEngine, readUsage, type OpenAIEngine, type OpenAIEngineOptions } from '../../src/worker/openai-engine';
import { parseRetryAfter } from '../../src/worker/openai-errors';
import { promptTokens } from '../../src/worker/synthetic';
import { estimateTokens, type WireRequest } from '../../src/protocol';
import { FAKE_CACHED_TOKENS, FAKE_PROMPT_TOKENS, fakeAnswer, startFakeEngine, type FakeEngine } from '../helpers/fake-engine';

/** Polls until `check` holds (cluster.ts has one too, but importing it loads the whole controller). */
async function waitFor(check: () => boolean, what: string, timeoutMs: number, everyMs = 10): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

let fake: FakeEngine;
const engines: OpenAIEngine[] = [];

beforeAll(async () => {
  fake = await startFakeEngine();
});

afterAll(async () => {
  await fake.close();
});

beforeEach(async () => {
  await fake.reopen();
  fake.reset();
});

afterEach(async () => {
  await Promise.all(engines.splice(0).map((e) => e.close()));
});

function engine(options: Partial<OpenAIEngineOptions> = {}): OpenAIEngine {
  const e = openaiEngine({ url: fake.url, models: ['fake-model'], ...options });
  engines.push(e);
  return e;
}

function request(overrides: Partial<WireRequest> = {}): WireRequest {
  return { model: 'fake-model', messages: [{ role: 'user', content: 'Hello there, engine' }], max_tokens: 5, stream: false, ...overrides };
}

async function run(e: OpenAIEngine, req: WireRequest, signal: AbortSignal = new AbortController().signal) {
  const pieces: string[] = [];
  const outcome = await e.generate(req, (t) => pieces.push(t), signal).then(
    (result) => ({ result, error: undefined }),
    (error: unknown) => ({ result: undefined, error }),
  );
  return { pieces, ...outcome };
}

function engineError(error: unknown): EngineError {
  expect(error).toBeInstanceOf(EngineError);
  return error as EngineError;
}

describe('generation', () => {
  test('openai engine - buffered answer keeps the engine text, finish_reason and usage', async () => {
    const { pieces, result, error } = await run(engine(), request({ max_tokens: 5 }));
    expect(error).toBeUndefined();
    expect(pieces.join('')).toBe(fakeAnswer(5).text);
    // The fake reports usage details; the engine passes cached_tokens through (prefix routing reads it).
    expect(result).toEqual({
      finishReason: 'length',
      usage: { prompt_tokens: FAKE_PROMPT_TOKENS, completion_tokens: 5, total_tokens: FAKE_PROMPT_TOKENS + 5, prompt_tokens_details: { cached_tokens: FAKE_CACHED_TOKENS } },
    });
    const sent = fake.chatRequests()[0].body;
    // Streamed from the engine even for a buffered answer: the worker sees every token (progress).
    expect(sent).toEqual({
      model: 'fake-model',
      messages: [{ role: 'user', content: 'Hello there, engine' }],
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: 5,
    });
    expect(pieces).toEqual(fakeAnswer(5).pieces);
  });

  test('openai engine - streamed answer relays each piece in order and asks for usage', async () => {
    const { pieces, result, error } = await run(engine(), request({ stream: true, max_tokens: 50, temperature: 0.2, stop: ['zz'] }));
    expect(error).toBeUndefined();
    expect(pieces).toEqual(fakeAnswer(50).pieces);
    expect(result?.finishReason).toBe('stop');
    expect(result?.usage.completion_tokens).toBe(12);
    expect(result?.usageEstimated).toBeUndefined();
    const sent = fake.chatRequests()[0];
    expect(sent.body.stream_options).toEqual({ include_usage: true });
    expect(sent.body.temperature).toBe(0.2);
    expect(sent.body.stop).toEqual(['zz']);
    expect(sent.headers.accept).toBe('text/event-stream');
  });

  test('openai engine - the api key goes to the engine as a bearer token, and none without one', async () => {
    await run(engine({ apiKey: 'sekret' }), request());
    await run(engine(), request());
    const [withKey, without] = fake.chatRequests();
    expect(withKey.headers.authorization).toBe('Bearer sekret');
    expect(without.headers.authorization).toBeUndefined();
  });

  test('openai engine - usage the engine omits is counted and marked estimated (buffered and streamed)', async () => {
    fake.behave({ mode: 'no-usage' });
    for (const stream of [false, true]) {
      const req = request({ stream, max_tokens: 4 });
      const { result, error } = await run(engine(), req);
      expect(error).toBeUndefined();
      const text = fakeAnswer(4).text;
      const prompt = promptTokens(req);
      expect(result).toEqual({
        finishReason: 'length',
        usage: { prompt_tokens: prompt, completion_tokens: estimateTokens(text), total_tokens: prompt + estimateTokens(text) },
        usageEstimated: true,
      });
      expect(prompt).not.toBe(FAKE_PROMPT_TOKENS);
    }
  });

  test('openai engine - with continuation off a resume request is refused, and resume is not advertised', async () => {
    const e = engine();
    expect(e.supportsContinuation).toBe(false);
    const { error } = await run(e, request({ stream: true, continuation: 'The fake' }));
    expect(engineError(error).code).toBe('WORKER_ERROR');
    expect(fake.chatRequests()).toHaveLength(0);
  });
});

describe('engine faults', () => {
  test('openai engine - 429 is WORKER_OVERLOADED carrying Retry-After seconds as ms', async () => {
    fake.behave({ mode: 'rate-limited', retryAfter: '3' });
    const e = engineError((await run(engine(), request())).error);
    expect(e.code).toBe('WORKER_OVERLOADED');
    expect(e.retryAfterMs).toBe(3000);
  });

  test('openai engine - 503 with an HTTP-date Retry-After is WORKER_OVERLOADED with the time left', async () => {
    fake.behave({ mode: 'overloaded', retryAfter: new Date(Date.now() + 10_000).toUTCString() });
    const e = engineError((await run(engine(), request({ stream: true }))).error);
    expect(e.code).toBe('WORKER_OVERLOADED');
    // An HTTP date has whole seconds: 9 to 10 s left.
    expect(e.retryAfterMs).toBeGreaterThan(8000);
    expect(e.retryAfterMs).toBeLessThanOrEqual(10_000);
  });

  test('openai engine - 500 is WORKER_ERROR (retryable worker failure)', async () => {
    fake.behave({ mode: 'server-error' });
    const e = engineError((await run(engine(), request())).error);
    expect(e.code).toBe('WORKER_ERROR');
    expect(e.message).toContain('500');
  });

  test('openai engine - 400 is REQUEST_VALIDATION_FAILED, with the engine message', async () => {
    fake.behave({ mode: 'status', status: 400, errorMessage: "'temperature' must be at most 2" });
    const e = engineError((await run(engine(), request())).error);
    expect(e.code).toBe('REQUEST_VALIDATION_FAILED');
    expect(e.message).toContain("'temperature' must be at most 2");
  });

  test.each([
    "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.",
    'the request exceeds the available context size, try increasing it',
  ])('openai engine - 400 saying %j is CONTEXT_LENGTH_EXCEEDED', async (message) => {
    fake.behave({ mode: 'status', status: 400, errorMessage: message });
    expect(engineError((await run(engine(), request())).error).code).toBe('CONTEXT_LENGTH_EXCEEDED');
  });

  test('openai engine - a 500 about the prompt length (mlx_lm.server) is CONTEXT_LENGTH_EXCEEDED, not retryable', async () => {
    fake.behave({ mode: 'status', status: 500, errorMessage: 'Prompt exceeds max prompt token limit: prompt_tokens=9000, max_prompt_tokens=8192' });
    expect(engineError((await run(engine(), request())).error).code).toBe('CONTEXT_LENGTH_EXCEEDED');
  });

  test('openai engine - 404 is MODEL_NOT_FOUND', async () => {
    fake.behave({ mode: 'status', status: 404, errorMessage: 'model "fake-model" not found, try pulling it first' });
    expect(engineError((await run(engine(), request())).error).code).toBe('MODEL_NOT_FOUND');
  });

  test('openai engine - 400 naming an unknown model is MODEL_NOT_FOUND', async () => {
    fake.behave({ mode: 'status', status: 400, errorMessage: 'The model `other` does not exist.' });
    expect(engineError((await run(engine(), request())).error).code).toBe('MODEL_NOT_FOUND');
  });

  test('openai engine - connection refused is WORKER_ERROR and marks the engine unhealthy at once', async () => {
    // A port that was never connected to: no pooled keep-alive socket can answer first.
    const gone = await startFakeEngine();
    await gone.close();
    const e = engine({ url: gone.url });
    expect(e.healthy()).toBe(true);
    const err = engineError((await run(e, request())).error);
    expect(err.code).toBe('WORKER_ERROR');
    expect(err.message).toContain('ECONNREFUSED');
    expect(e.healthy()).toBe(false);
  });

  test.each([
    ['dropped', 'cut-stream' as const],
    ['closed cleanly without finish_reason or [DONE]', 'end-early' as const],
  ])('openai engine - a stream %s mid-answer emits the chunks so far, then rejects (never a clean end)', async (_how, mode) => {
    fake.behave({ mode, cutAfterChunks: 3 });
    const { pieces, result, error } = await run(engine(), request({ stream: true, max_tokens: 10 }));
    expect(result).toBeUndefined();
    expect(pieces).toEqual(fakeAnswer(10).pieces.slice(0, 3));
    expect(engineError(error).code).toBe('WORKER_ERROR');
  });

  test('openai engine - a buffered answer cut before its end is WORKER_ERROR', async () => {
    fake.behave({ mode: 'cut-stream' });
    const { pieces, result, error } = await run(engine(), request({ max_tokens: 10 }));
    // The pieces before the cut were seen (the worker reports progress), but no answer is made of them.
    expect(pieces).toEqual(fakeAnswer(10).pieces.slice(0, 3));
    expect(result).toBeUndefined();
    expect(engineError(error).code).toBe('WORKER_ERROR');
  });

  test('openai engine - an error event inside the stream rejects after the chunks before it', async () => {
    fake.behave({ mode: 'in-band-error' });
    const { pieces, error } = await run(engine(), request({ stream: true, max_tokens: 10 }));
    expect(pieces).toEqual(fakeAnswer(10).pieces.slice(0, 2));
    const e = engineError(error);
    expect(e.code).toBe('WORKER_ERROR');
    expect(e.message).toContain('ran out of memory');
  });
});

describe('cancellation', () => {
  test.each([
    ['a hung engine', { mode: 'hang' as const }, false],
    ['a slow first token, streamed', { mode: 'slow-first-token' as const, firstTokenDelayMs: 5000 }, true],
  ])('openai engine - a cancel closes the HTTP request to %s at once', async (_what, behaviour, stream) => {
    fake.behave(behaviour);
    const controller = new AbortController();
    const reason = new Error('cancelled by the controller');
    const pending = run(engine(), request({ stream }), controller.signal);
    await waitFor(() => fake.open() === 1, 'the request to reach the fake engine', 2000, 5);
    const started = Date.now();
    controller.abort(reason);
    const { error } = await pending;
    expect(error).toBe(reason);
    // At once: a hung engine would otherwise hold the request for Node's 300 s header limit; the
    // bound leaves room for two loaded cores.
    expect(Date.now() - started).toBeLessThan(3000);
    // The engine sees its client go away: generation there can stop too.
    await waitFor(() => fake.aborted() === 1, 'the fake engine to see the connection close', 2000, 5);
    expect(fake.open()).toBe(0);
  });

  test('openai engine - a cancel mid-stream stops relaying and closes the connection', async () => {
    fake.behave({ tokenDelayMs: 100 });
    const controller = new AbortController();
    const pieces: string[] = [];
    const pending = engine()
      .generate(request({ stream: true, max_tokens: 12 }), (t) => {
        pieces.push(t);
        if (pieces.length === 2) controller.abort(new Error('client left'));
      }, controller.signal)
      .catch((e: unknown) => e);
    expect(await pending).toEqual(new Error('client left'));
    expect(pieces).toHaveLength(2);
    await waitFor(() => fake.aborted() === 1, 'the fake engine to see the connection close', 2000, 5);
  });
});

describe('models and health', () => {
  test('openai engine - without configured models it advertises what GET /models lists, and re-reads it', async () => {
    fake.behave({ models: ['alpha', 'beta'] });
    const e = engine({ models: undefined, probeIntervalMs: 30, modelsRefreshMs: 30 });
    expect(e.models()).toEqual([]);
    await e.start();
    expect(e.models()).toEqual(['alpha', 'beta']);
    fake.behave({ models: ['gamma'] });
    await waitFor(() => e.models().join() === 'gamma', 'the refreshed model list', 3000);
  });

  test('openai engine - configured models are advertised as they are, whatever the engine lists', async () => {
    fake.behave({ models: ['alpha'] });
    const e = engine({ models: ['mine'], probeIntervalMs: 20, modelsRefreshMs: 20 });
    await e.start();
    await waitFor(() => fake.requests.filter((r) => r.path === '/v1/models').length >= 3, 'three probes', 3000);
    expect(e.models()).toEqual(['mine']);
    expect(e.healthy()).toBe(true);
  });

  test('openai engine - the probe reports a down engine unhealthy and a returning one healthy', async () => {
    const e = engine({ probeIntervalMs: 30 });
    await e.start();
    expect(e.healthy()).toBe(true);
    await fake.close();
    await waitFor(() => !e.healthy(), 'unhealthy after the engine went away', 3000);
    await fake.reopen();
    await waitFor(() => e.healthy(), 'healthy after the engine came back', 3000);
  });

  test('openai engine - a probe unanswered within connectTimeoutMs counts as down', async () => {
    fake.behave({ modelsMode: 'hang' });
    const e = engine({ probeIntervalMs: 10_000, connectTimeoutMs: 150 });
    const started = Date.now();
    expect(await e.probe()).toBe(false);
    expect(Date.now() - started).toBeLessThan(1500);
    expect(e.healthy()).toBe(false);
    fake.behave({ modelsMode: 'error' });
    expect(await e.probe()).toBe(false);
    fake.behave({ modelsMode: 'normal' });
    expect(await e.probe()).toBe(true);
  });

  test('openai engine - a 404 for a listed model re-reads the model list at once', async () => {
    fake.behave({ models: ['fake-model'] });
    const e = engine({ models: undefined, probeIntervalMs: 10_000, modelsRefreshMs: 600_000 });
    await e.start();
    expect(e.models()).toEqual(['fake-model']);
    fake.behave({ models: ['other'], mode: 'status', status: 404, errorMessage: 'model not found' });
    expect(engineError((await run(e, request())).error).code).toBe('MODEL_NOT_FOUND');
    await waitFor(() => e.models().join() === 'other', 'the model list re-read after the 404', 2000);
  });
});

describe('parseRetryAfter', () => {
  test('parseRetryAfter - reads delta-seconds, HTTP dates, and nothing else', () => {
    const now = Date.parse('Wed, 21 Oct 2015 07:28:00 GMT');
    expect(parseRetryAfter('120', now)).toBe(120_000);
    expect(parseRetryAfter('0.5', now)).toBe(500);
    expect(parseRetryAfter('Wed, 21 Oct 2015 07:28:30 GMT', now)).toBe(30_000);
    expect(parseRetryAfter('Wed, 21 Oct 2015 07:27:00 GMT', now)).toBe(0);
    expect(parseRetryAfter('soon', now)).toBeUndefined();
    expect(parseRetryAfter('-5', now)).toBeUndefined();
    expect(parseRetryAfter(null, now)).toBeUndefined();
  });
});

describe('engineBody and stream resume', () => {
  const request: WireRequest = { model: 'm', messages: [{ role: 'user', content: 'hi' }], stream: true, max_tokens: 20, continuation: 'The fake engine' };

  test('openai engine - continuation off sends no partial answer', () => {
    const body = engineBody({ ...request, continuation: undefined });
    expect(body.messages).toEqual([{ role: 'user', content: 'hi' }]);
    expect(body.continue_final_message).toBeUndefined();
    expect(body.max_tokens).toBe(20);
  });

  test("openai engine - 'vllm' sends the delivered text as the final assistant message with continue_final_message", () => {
    const body = engineBody(request, 'vllm');
    expect(body.messages).toEqual([{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'The fake engine' }]);
    expect(body).toMatchObject({ continue_final_message: true, add_generation_prompt: false });
    // max_tokens bounds the whole answer: what is left of it goes to the engine.
    expect(body.max_tokens).toBe(20 - estimateTokens('The fake engine'));
  });

  test("openai engine - 'prefill' sends the final assistant message alone", () => {
    const body = engineBody(request, 'prefill');
    expect((body.messages as unknown[]).at(-1)).toEqual({ role: 'assistant', content: 'The fake engine' });
    expect(body.continue_final_message).toBeUndefined();
  });
});

test('openai engine - usage passes the engine\'s cached_tokens through; a malformed one is left out', () => {
  const base = { prompt_tokens: 100, completion_tokens: 5, total_tokens: 105 };
  expect(readUsage({ ...base, prompt_tokens_details: { cached_tokens: 96 } })).toEqual({ ...base, prompt_tokens_details: { cached_tokens: 96 } });
  expect(readUsage({ ...base, prompt_tokens_details: { cached_tokens: -1 } })).toEqual(base);
  expect(readUsage({ ...base, prompt_tokens_details: { cached_tokens: 101 } })).toEqual(base);
  expect(readUsage({ ...base, prompt_tokens_details: null })).toEqual(base);
  expect(readUsage({ ...base, prompt_tokens_details: { cached_tokens: '9' } })).toEqual(base);
});

describe('StreamAssembler: a buffered v2 answer rebuilt from the engine stream', () => {
  const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) => ({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'm', choices, ...extra });

  test('openai v2 assembler - content, refusal, tool calls with joined arguments, logprobs, finish reasons of two choices, engine fields kept', () => {
    const a = new StreamAssembler('chat.completions');
    a.chunk(chunk([{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }], { system_fingerprint: 'fp_1', service_tier: null }));
    a.chunk(chunk([{ index: 0, delta: { content: 'Hel' }, logprobs: { content: [{ token: 'Hel', logprob: -0.1 }], refusal: null }, finish_reason: null }]));
    a.chunk(chunk([{ index: 0, delta: { content: 'lo' }, logprobs: { content: [{ token: 'lo', logprob: -0.2 }], refusal: null }, finish_reason: null }]));
    a.chunk(chunk([{ index: 1, delta: { role: 'assistant', refusal: 'I can' }, finish_reason: null }]));
    a.chunk(chunk([{ index: 1, delta: { refusal: 'not.' }, finish_reason: null }]));
    a.chunk(chunk([{ index: 2, delta: { tool_calls: [{ index: 0, id: 'call_1', type: 'function', function: { name: 'f', arguments: '' } }] }, finish_reason: null }]));
    a.chunk(chunk([{ index: 2, delta: { tool_calls: [{ index: 0, function: { arguments: '{"a"' } }] }, finish_reason: null }]));
    a.chunk(chunk([{ index: 2, delta: { tool_calls: [{ index: 0, function: { arguments: ': 1}' } }] }, finish_reason: null }]));
    a.chunk(chunk([{ index: 0, delta: {}, finish_reason: 'stop', stop_reason: 42 }]));
    a.chunk(chunk([{ index: 1, delta: {}, finish_reason: 'stop' }]));
    a.chunk(chunk([{ index: 2, delta: {}, finish_reason: 'tool_calls' }], { service_tier: 'default' }));
    a.chunk(chunk([], { usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } }));
    expect(a.result('stop')).toEqual([
      { index: 0, message: { role: 'assistant', content: 'Hello' }, logprobs: { content: [{ token: 'Hel', logprob: -0.1 }, { token: 'lo', logprob: -0.2 }], refusal: null }, finish_reason: 'stop', stop_reason: 42 },
      { index: 1, message: { role: 'assistant', refusal: 'I cannot.', content: null }, logprobs: null, finish_reason: 'stop' },
      { index: 2, message: { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'f', arguments: '{"a": 1}' } }] }, logprobs: null, finish_reason: 'tool_calls' },
    ]);
    expect(a.fields()).toEqual({ system_fingerprint: 'fp_1', service_tier: 'default' });
  });

  test('openai v2 assembler - a legacy completion comes back as text choices; a choice without finish_reason gets the fallback', () => {
    const a = new StreamAssembler('completions');
    a.chunk({ id: 'x', object: 'text_completion', choices: [{ index: 0, text: 'Once', logprobs: null, finish_reason: null }] });
    a.chunk({ id: 'x', object: 'text_completion', choices: [{ index: 0, text: ' upon', logprobs: null, finish_reason: null }] });
    expect(a.result('length')).toEqual([{ index: 0, text: 'Once upon', logprobs: null, finish_reason: 'length' }]);
    expect(a.fields()).toBeUndefined();
  });
});
