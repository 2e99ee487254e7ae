/**
 * End to end with the official `openai` client against a real cluster: nats-server, two worker
 * processes and the controller.
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

test('openai client - buffered completion has content, usage and finish_reason length at max_tokens', async () => {
  const res = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Say hi' }], max_tokens: 5 });
  expect(res.object).toBe('chat.completion');
  expect(res.choices).toHaveLength(1);
  expect(res.choices[0].message.role).toBe('assistant');
  expect(res.choices[0].message.content?.split(' ')).toHaveLength(5);
  expect(res.choices[0].finish_reason).toBe('length');
  expect(res.usage?.completion_tokens).toBe(5);
  expect(res.usage?.total_tokens).toBe((res.usage?.prompt_tokens ?? 0) + 5);
});

test('openai client - streamed completion equals the buffered one for the same request', async () => {
  const messages = [{ role: 'user' as const, content: 'Tell me about routers' }];
  const buffered = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 12 });
  const stream = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 12, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let finish: string | null = null;
  let usage: OpenAI.CompletionUsage | undefined;
  for await (const chunk of stream) {
    expect(chunk.object).toBe('chat.completion.chunk');
    text += chunk.choices[0]?.delta?.content ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
    if (chunk.usage) usage = chunk.usage;
  }
  expect(text).toBe(buffered.choices[0].message.content);
  expect(finish).toBe('length');
  expect(usage?.completion_tokens).toBe(12);
});

test('openai client - a wrongly typed field is a 400 naming the field', async () => {
  const err = await client.chat.completions
    .create({ model: MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: -3 })
    .catch((e: unknown) => e);
  expect(err).toBeInstanceOf(OpenAI.BadRequestError);
  const e = err as InstanceType<typeof OpenAI.BadRequestError>;
  expect(e.status).toBe(400);
  expect(e.code).toBe('request_validation_failed');
  expect(e.type).toBe('invalid_request_error');
  expect((e.error as { router_code?: string }).router_code).toBe('REQUEST_VALIDATION_FAILED');
  expect(e.param).toBe('max_tokens');
});

test('openai client - an unknown model is a 404 with code model_not_found (router_code MODEL_NOT_FOUND)', async () => {
  const err = await client.chat.completions
    .create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] })
    .catch((e: unknown) => e);
  expect(err).toBeInstanceOf(OpenAI.NotFoundError);
  const e = err as InstanceType<typeof OpenAI.NotFoundError>;
  expect([e.code, e.type, e.param]).toEqual(['model_not_found', 'invalid_request_error', 'model']);
  expect((e.error as { router_code?: string }).router_code).toBe('MODEL_NOT_FOUND');
  expect(e.headers.get('x-mlx-error-code')).toBe('MODEL_NOT_FOUND');
});

test('openai client - models lists what the workers advertise', async () => {
  const list = await client.models.list();
  expect(list.data.map((m) => m.id)).toEqual([MODEL]);
});
