/**
 * Protocol v2 through a real engine adapter, with the official `openai` client: controller → NATS
 * → worker process (`--engine openai`) → the fake OpenAI-compatible server. Every field the client
 * sends reaches the engine; tool calls, logprobs, usage details and unknown answer fields come back.
 */
import OpenAI from 'openai';
import { decode } from '../../src/protocol';
import { addEngineWorker, MODEL, startCluster, startTogether, STEADY, type Cluster } from '../helpers/cluster';
import { FAKE_CACHED_TOKENS, FAKE_TOOL_ARGS, fakeAnswer, startFakeEngine, type FakeEngine } from '../helpers/fake-engine';

const TTFT_LIMIT_MS = 1500;

let cluster: Cluster;
let fake: FakeEngine;
let client: OpenAI;

beforeAll(async () => {
  [cluster, fake] = await startTogether([
    // A time to first token limit well below the slow engine's delay in the hang test.
    startCluster({ config: { ...STEADY, 'cluster.requestRouting.firstChunkTimeoutMs': TTFT_LIMIT_MS, 'cluster.requestRouting.attemptTimeoutMs': 20_000 } }),
    startFakeEngine({ models: [MODEL] }),
  ]);
  await addEngineWorker(cluster, { id: 'oa1', engineUrl: fake.url });
  client = new OpenAI({ baseURL: `${cluster.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});

afterAll(async () => {
  await cluster?.stop();
  await fake?.close();
});

beforeEach(() => fake.reset());

const tools: OpenAI.Chat.Completions.ChatCompletionTool[] = [
  { type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } } } } },
];
const ask: OpenAI.Chat.Completions.ChatCompletionMessageParam[] = [{ role: 'user', content: 'Weather in Paris?' }];

test('openai engine v2 - every field the client sends reaches the engine as sent', async () => {
  const body = {
    model: MODEL,
    messages: [{ role: 'user' as const, content: [{ type: 'text' as const, text: 'Hi' }] }],
    max_tokens: 5,
    top_p: 0.5,
    seed: 42,
    user: 'user-7',
    presence_penalty: 0.1,
    response_format: { type: 'json_object' as const },
    vendor_option: { beam: 2 },
    session_id: 's-1',
  };
  await client.chat.completions.create(body as OpenAI.Chat.Completions.ChatCompletionCreateParamsNonStreaming);
  const sent = fake.chatRequests()[0].body;
  const { session_id: _router, ...rest } = body;
  // A buffered answer is streamed from the engine (the worker sees its tokens) and rebuilt whole.
  expect(sent).toEqual({ ...rest, stream: true, stream_options: { include_usage: true } });
});

test('openai engine v2 - a tool call round trip, buffered', async () => {
  const first = await client.chat.completions.create({ model: MODEL, messages: ask, tools, tool_choice: 'auto' });
  expect(first.choices[0].finish_reason).toBe('tool_calls');
  const call = first.choices[0].message.tool_calls![0] as OpenAI.Chat.Completions.ChatCompletionMessageFunctionToolCall;
  expect(call).toEqual({ id: 'call_fake_1', type: 'function', function: { name: 'get_weather', arguments: FAKE_TOOL_ARGS.join('') } });
  expect(fake.chatRequests()[0].body.tools).toEqual(tools);
  // Streamed from the engine in fragments; the worker joined the arguments.
  expect(fake.chatRequests()[0].body.stream).toBe(true);
  expect(first.usage).toMatchObject({ prompt_tokens: expect.any(Number), completion_tokens: expect.any(Number) });
  const second = await client.chat.completions.create({
    model: MODEL,
    messages: [...ask, first.choices[0].message, { role: 'tool', tool_call_id: call.id, content: '{"temp": 21}' }],
    tools,
  });
  expect(second.choices[0].message.content).toBe(fakeAnswer().text);
  // The history reached the engine whole: the assistant's tool_calls and the tool's tool_call_id.
  const history = fake.chatRequests()[1].body.messages;
  expect(history[1]).toMatchObject({ role: 'assistant', content: null, tool_calls: [call] });
  expect(history[2]).toEqual({ role: 'tool', tool_call_id: 'call_fake_1', content: '{"temp": 21}' });
});

test('openai engine v2 - a streamed tool call keeps its argument fragments; the SDK assembles them', async () => {
  const stream = client.chat.completions.stream({ model: MODEL, messages: ask, tools, stream_options: { include_usage: true } });
  const fragments: string[] = [];
  stream.on('chunk', (chunk) => {
    for (const c of chunk.choices[0]?.delta?.tool_calls ?? []) if (c.function?.arguments) fragments.push(c.function.arguments);
  });
  const final = await stream.finalChatCompletion();
  expect(fragments).toEqual(FAKE_TOOL_ARGS);
  const call = final.choices[0].message.tool_calls![0] as OpenAI.Chat.Completions.ChatCompletionMessageFunctionToolCall;
  expect(call.function).toMatchObject({ name: 'get_weather', arguments: FAKE_TOOL_ARGS.join('') });
  expect(final.choices[0].finish_reason).toBe('tool_calls');
  expect(final.usage?.prompt_tokens_details?.cached_tokens).toBe(FAKE_CACHED_TOKENS);
});

test('openai engine v2 - logprobs and top_p pass through, buffered and streamed; usage details and unknown fields come back', async () => {
  const res = await client.chat.completions.create({ model: MODEL, messages: ask, max_tokens: 3, top_p: 0.9, logprobs: true, top_logprobs: 2 });
  expect(fake.chatRequests()[0].body).toMatchObject({ top_p: 0.9, logprobs: true, top_logprobs: 2 });
  expect(res.choices[0].logprobs?.content?.map((t) => t.token)).toEqual(fakeAnswer(3).pieces);
  expect(res.choices[0].logprobs?.content?.[0].top_logprobs).toHaveLength(2);
  expect(res.usage?.prompt_tokens_details?.cached_tokens).toBe(FAKE_CACHED_TOKENS);
  expect(res.usage?.completion_tokens_details?.reasoning_tokens).toBe(0);
  expect(res.system_fingerprint).toBe('fp_fake');
  const stream = await client.chat.completions.create({ model: MODEL, messages: ask, max_tokens: 3, top_p: 0.9, logprobs: true, stream: true });
  const tokens: string[] = [];
  for await (const chunk of stream) for (const t of chunk.choices[0]?.logprobs?.content ?? []) tokens.push(t.token);
  expect(tokens).toEqual(fakeAnswer(3).pieces);
});

test("openai engine v2 - the engine's own 400 reaches the client as a 400 with its message, never against the worker", async () => {
  // The router range-checks top_logprobs; that it needs logprobs is the engine's rule (vLLM's).
  const err = await client.chat.completions.create({ model: MODEL, messages: ask, top_logprobs: 2 }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(OpenAI.BadRequestError);
  expect((err as Error).message).toContain('`logprobs` must be set to true');
  expect(cluster.controller.deps.breakers.state('oa1')).toEqual({ kind: 'closed', failures: 0 });
  expect(fake.chatRequests()).toHaveLength(1);
});

test('openai engine v2 - a buffered answer is streamed from the engine: progress carries real token counts, and a slow but steady answer longer than the TTFT limit is not cut', async () => {
  // 12 tokens at 250 ms: about 2.75 s, beyond the 1.5 s TTFT limit, which its first token meets.
  fake.behave({ tokenDelayMs: 250 });
  const progress: number[] = [];
  const sub = cluster.nc.subscribe('_INBOX.>', {
    callback: (_e, msg) => {
      const body = decode<{ type?: string; tokens?: number }>(msg.data);
      if (body?.type === 'progress' && typeof body.tokens === 'number') progress.push(body.tokens);
    },
  });
  await cluster.nc.flush();
  try {
    const started = Date.now();
    const answer = await client.chat.completions.create({ model: MODEL, messages: ask, max_tokens: 12, logprobs: true });
    expect(Date.now() - started).toBeGreaterThan(TTFT_LIMIT_MS);
    expect(answer.choices[0].message.content).toBe(fakeAnswer(12).text);
    expect(answer.choices[0].finish_reason).toBe('stop');
    expect(answer.choices[0].logprobs?.content?.map((t) => t.token)).toEqual(fakeAnswer(12).pieces);
    expect(answer.usage).toMatchObject({ completion_tokens: 12, prompt_tokens_details: { cached_tokens: FAKE_CACHED_TOKENS }, completion_tokens_details: { reasoning_tokens: 0 } });
    expect(answer.system_fingerprint).toBe('fp_fake');
    expect(fake.chatRequests()).toHaveLength(1);
    // Real counts, not keep-alives: the first at the first token, then rising.
    expect(progress.length).toBeGreaterThanOrEqual(3);
    expect(progress[0]).toBe(1);
    expect(progress.every((t) => t > 0)).toBe(true);
    expect([...progress].sort((a, b) => a - b)).toEqual(progress);
  } finally {
    sub.unsubscribe();
  }
});

test('openai engine v2 - a buffered answer whose engine shows no first token is cut at the TTFT limit (no keep-alive hides a hang)', async () => {
  fake.behave({ mode: 'slow-first-token', firstTokenDelayMs: 4 * TTFT_LIMIT_MS });
  const started = Date.now();
  const err = await client.chat.completions.create({ model: MODEL, messages: ask }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(OpenAI.APIError);
  expect((err as InstanceType<typeof OpenAI.APIError>).status).toBe(504);
  // Cut at the limit (retries included), long before the engine's first token.
  expect(Date.now() - started).toBeLessThan(4 * TTFT_LIMIT_MS);
  expect(fake.chatRequests()[0].body.stream).toBe(true);
});
