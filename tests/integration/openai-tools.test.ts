/**
 * The whole chat surface through protocol v2, with the official `openai` client against a real
 * cluster of synthetic workers: tool calls (buffered, streamed and assembled by the SDK's stream
 * helper), a tool-result round trip, JSON mode, `n` and `seed`.
 */
import OpenAI from 'openai';
import { MODEL, startCluster, type Cluster } from '../helpers/cluster';

let cluster: Cluster;
let client: OpenAI;

beforeAll(async () => {
  cluster = await startCluster({ workers: [{ id: 'w1' }, { id: 'w2' }] });
  client = new OpenAI({ baseURL: `${cluster.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});

afterAll(async () => {
  await cluster?.stop();
});

const weather: OpenAI.Chat.Completions.ChatCompletionTool = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather in a city',
    parameters: {
      type: 'object',
      properties: { city: { type: 'string' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] }, days: { type: 'integer', minimum: 1, maximum: 7 } },
      required: ['city', 'unit', 'days'],
      additionalProperties: false,
    },
  },
};
const other: OpenAI.Chat.Completions.ChatCompletionTool = {
  type: 'function',
  function: { name: 'get_time', parameters: { type: 'object', properties: { zone: { type: 'string' } }, required: ['zone'] } },
};
const ask: OpenAI.Chat.Completions.ChatCompletionMessageParam[] = [{ role: 'user', content: 'What is the weather in Oslo?' }];

function checkWeatherArgs(args: string): void {
  const parsed = JSON.parse(args) as Record<string, unknown>;
  expect(Object.keys(parsed).sort()).toEqual(['city', 'days', 'unit']);
  expect(typeof parsed.city).toBe('string');
  expect(['celsius', 'fahrenheit']).toContain(parsed.unit);
  expect(Number.isInteger(parsed.days) && (parsed.days as number) >= 1 && (parsed.days as number) <= 7).toBe(true);
}

test('openai tools - a named tool_choice gives a buffered tool call with schema-valid arguments and finish_reason tool_calls', async () => {
  const res = await client.chat.completions.create({
    model: MODEL,
    messages: ask,
    tools: [other, weather],
    tool_choice: { type: 'function', function: { name: 'get_weather' } },
  });
  const choice = res.choices[0];
  expect(choice.finish_reason).toBe('tool_calls');
  expect(choice.message.content).toBeNull();
  expect(choice.message.tool_calls).toHaveLength(1);
  const call = choice.message.tool_calls![0] as OpenAI.Chat.Completions.ChatCompletionMessageFunctionToolCall;
  expect(call.type).toBe('function');
  expect(call.id).toMatch(/^call_/);
  expect(call.function.name).toBe('get_weather');
  checkWeatherArgs(call.function.arguments);
  expect(res.usage?.completion_tokens).toBeGreaterThan(0);
});

test('openai tools - a streamed tool call arrives in several argument fragments that the SDK stream helper assembles', async () => {
  const stream = client.chat.completions.stream({ model: MODEL, messages: ask, tools: [weather], tool_choice: 'required', stream_options: { include_usage: true } });
  const fragments: string[] = [];
  stream.on('chunk', (chunk) => {
    for (const c of chunk.choices[0]?.delta?.tool_calls ?? []) if (c.function?.arguments) fragments.push(c.function.arguments);
  });
  const final = await stream.finalChatCompletion();
  expect(fragments.length).toBeGreaterThanOrEqual(3);
  const call = final.choices[0].message.tool_calls![0] as OpenAI.Chat.Completions.ChatCompletionMessageFunctionToolCall;
  expect(call.function.arguments).toBe(fragments.join(''));
  checkWeatherArgs(call.function.arguments);
  expect(final.choices[0].finish_reason).toBe('tool_calls');
  // The same request buffered gives the same call: deterministic on any worker.
  const buffered = await client.chat.completions.create({ model: MODEL, messages: ask, tools: [weather], tool_choice: 'required' });
  expect((buffered.choices[0].message.tool_calls![0] as OpenAI.Chat.Completions.ChatCompletionMessageFunctionToolCall).function).toEqual(call.function);
});

test('openai tools - a tool result round trip: the call, then the tool answer, then a text answer', async () => {
  const first = await client.chat.completions.create({ model: MODEL, messages: ask, tools: [weather], tool_choice: 'required' });
  const call = first.choices[0].message.tool_calls![0];
  const messages: OpenAI.Chat.Completions.ChatCompletionMessageParam[] = [
    ...ask,
    first.choices[0].message,
    { role: 'tool', tool_call_id: call.id, content: JSON.stringify({ temperature: 4, sky: 'clear' }) },
  ];
  const second = await client.chat.completions.create({ model: MODEL, messages, tools: [weather] });
  expect(second.choices[0].finish_reason).toBe('stop');
  expect(second.choices[0].message.tool_calls ?? []).toHaveLength(0);
  expect(second.choices[0].message.content?.length).toBeGreaterThan(0);
  // The tool result is part of the prompt: a different answer from the same history without it.
  const without = await client.chat.completions.create({ model: MODEL, messages: messages.slice(0, 2), tools: [weather] });
  expect(without.choices[0].message.content).not.toBe(second.choices[0].message.content);
});

test('openai tools - JSON mode gives a JSON object, buffered and streamed alike', async () => {
  const res = await client.chat.completions.create({ model: MODEL, messages: ask, response_format: { type: 'json_object' } });
  const value = JSON.parse(res.choices[0].message.content ?? '') as unknown;
  expect(typeof value === 'object' && value !== null && !Array.isArray(value)).toBe(true);
  const stream = await client.chat.completions.create({ model: MODEL, messages: ask, response_format: { type: 'json_object' }, stream: true });
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  expect(text).toBe(res.choices[0].message.content);
});

test('openai tools - n gives n different choices, buffered and streamed', async () => {
  const res = await client.chat.completions.create({ model: MODEL, messages: ask, n: 3, max_tokens: 8 });
  expect(res.choices.map((c) => c.index)).toEqual([0, 1, 2]);
  const texts = res.choices.map((c) => c.message.content);
  expect(new Set(texts).size).toBe(3);
  expect(res.choices.every((c) => c.finish_reason === 'length')).toBe(true);
  expect(res.usage?.completion_tokens).toBe(24);
  const stream = await client.chat.completions.create({ model: MODEL, messages: ask, n: 3, max_tokens: 8, stream: true });
  const streamed = ['', '', ''];
  const finishes: Array<string | null> = [null, null, null];
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      streamed[c.index] += c.delta?.content ?? '';
      if (c.finish_reason) finishes[c.index] = c.finish_reason;
    }
  }
  expect(streamed).toEqual(texts);
  expect(finishes).toEqual(['length', 'length', 'length']);
});

test('openai tools - seed changes the text deterministically', async () => {
  const a1 = await client.chat.completions.create({ model: MODEL, messages: ask, seed: 1, max_tokens: 10 });
  const a2 = await client.chat.completions.create({ model: MODEL, messages: ask, seed: 1, max_tokens: 10 });
  const b = await client.chat.completions.create({ model: MODEL, messages: ask, seed: 2, max_tokens: 10 });
  expect(a1.choices[0].message.content).toBe(a2.choices[0].message.content);
  expect(b.choices[0].message.content).not.toBe(a1.choices[0].message.content);
});

test('openai tools - a tool_choice naming a function not in tools is the engine\'s 400, not a worker failure', async () => {
  const err = await client.chat.completions
    .create({ model: MODEL, messages: ask, tools: [weather], tool_choice: { type: 'function', function: { name: 'nope' } } })
    .catch((e: unknown) => e);
  expect(err).toBeInstanceOf(OpenAI.BadRequestError);
  expect((err as InstanceType<typeof OpenAI.BadRequestError>).message).toContain("'nope'");
  const breakers = cluster.controller.deps.breakers;
  for (const id of ['w1', 'w2']) expect(breakers.state(id)).toEqual({ kind: 'closed', failures: 0 });
  expect((err as InstanceType<typeof OpenAI.BadRequestError>).headers.get('x-mlx-retries')).toBe('0');
});
