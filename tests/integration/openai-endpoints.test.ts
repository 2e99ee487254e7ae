/**
 * The OpenAI endpoints beyond chat, with the official `openai` client: models.retrieve, legacy
 * text completions (buffered and streamed), embeddings routed by capability, image parts routed
 * to vision workers, and OpenAI-shaped 404s. A synthetic worker serves MODEL; a worker in front
 * of the fake OpenAI-compatible engine serves VISION.
 */
import OpenAI from 'openai';
import { addEngineWorker, MODEL, startCluster, startTogether, STEADY, type Cluster } from '../helpers/cluster';
import { FAKE_EMBEDDING, FAKE_PROMPT_TOKENS, fakeAnswer, startFakeEngine, type FakeEngine } from '../helpers/fake-engine';

const VISION = 'fake-vision';
let cluster: Cluster;
let fake: FakeEngine;
let client: OpenAI;

beforeAll(async () => {
  [cluster, fake] = await startTogether([startCluster({ workers: [{ id: 'w1' }], config: STEADY }), startFakeEngine({ models: [VISION] })]);
  await addEngineWorker(cluster, { id: 'oa1', engineUrl: fake.url });
  client = new OpenAI({ baseURL: `${cluster.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});

afterAll(async () => {
  await cluster?.stop();
  await fake?.close();
});

test('endpoints - models.retrieve returns a served model with its capabilities; an unknown one is a 404', async () => {
  const model = await client.models.retrieve(MODEL);
  expect(model).toMatchObject({ id: MODEL, object: 'model', owned_by: 'mlx-router' });
  expect((model as unknown as { capabilities: string[] }).capabilities).toEqual(['chat', 'completions', 'embeddings', 'tools']);
  const err = await client.models.retrieve('nope/none').catch((e: unknown) => e);
  expect(err).toBeInstanceOf(OpenAI.NotFoundError);
});

test('endpoints - a legacy text completion, buffered and streamed, from a synthetic worker', async () => {
  const res = await client.completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 6 });
  expect(res.object).toBe('text_completion');
  expect(res.choices[0].text.split(' ')).toHaveLength(6);
  expect(res.choices[0].finish_reason).toBe('length');
  expect(res.usage?.completion_tokens).toBe(6);
  const stream = await client.completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 6, stream: true });
  let text = '';
  let finish: string | null = null;
  for await (const chunk of stream) {
    expect(chunk.object).toBe('text_completion');
    text += chunk.choices[0]?.text ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  expect(text).toBe(res.choices[0].text);
  expect(finish).toBe('length');
});

test('endpoints - a legacy text completion through an OpenAI engine reaches its /completions', async () => {
  const res = await client.completions.create({ model: VISION, prompt: ['a', 'b'], max_tokens: 4, echo: false });
  expect(res.choices[0].text).toBe(fakeAnswer(4).text);
  const sent = fake.requests.find((r) => r.path === '/v1/completions');
  // Streamed from the engine (the worker sees its tokens); the client still got one text_completion.
  expect(sent?.body).toMatchObject({ prompt: ['a', 'b'], max_tokens: 4, echo: false, stream: true, stream_options: { include_usage: true } });
});

test('endpoints - embeddings from a synthetic worker are deterministic unit vectors; from an engine, its own', async () => {
  const a = await client.embeddings.create({ model: MODEL, input: ['hello', 'world'] });
  expect(a.object).toBe('list');
  expect(a.data.map((d) => d.index)).toEqual([0, 1]);
  const norm = Math.sqrt(a.data[0].embedding.reduce((s, v) => s + v * v, 0));
  expect(norm).toBeCloseTo(1, 5);
  const again = await client.embeddings.create({ model: MODEL, input: 'hello' });
  expect(again.data[0].embedding).toEqual(a.data[0].embedding);
  const b = await client.embeddings.create({ model: VISION, input: 'x', encoding_format: 'float' });
  expect(b.data[0].embedding).toEqual(FAKE_EMBEDDING);
  expect(b.usage).toEqual({ prompt_tokens: FAKE_PROMPT_TOKENS, total_tokens: FAKE_PROMPT_TOKENS });
});

test('endpoints - image parts go to a vision worker whole; a text-only model answers 400 naming vision', async () => {
  const image = { type: 'image_url' as const, image_url: { url: 'data:image/png;base64,iVBORw0KGgo=' } };
  const messages: OpenAI.Chat.Completions.ChatCompletionMessageParam[] = [{ role: 'user', content: [{ type: 'text', text: 'What is this?' }, image] }];
  const res = await client.chat.completions.create({ model: VISION, messages });
  expect(res.choices[0].message.content).toBe(fakeAnswer().text);
  expect(fake.chatRequests().at(-1)?.body.messages[0].content[1]).toEqual(image);
  const err = await client.chat.completions.create({ model: MODEL, messages }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(OpenAI.BadRequestError);
  expect((err as Error).message).toContain("'vision'");
});

test('endpoints - an unknown route is an OpenAI-shaped 404 with x-request-id', async () => {
  const res = await fetch(`${cluster.url}/v1/assistants`, { method: 'POST', body: '{}' });
  expect(res.status).toBe(404);
  expect(res.headers.get('x-request-id')).toBeTruthy();
  expect(((await res.json()) as { error: unknown }).error).toMatchObject({ type: 'invalid_request_error', code: 'unknown_url', router_code: 'NOT_FOUND' });
});
