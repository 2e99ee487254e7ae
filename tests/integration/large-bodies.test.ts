/**
 * Large bodies: a 5 MB prompt and a 1.5 MB buffered answer cross NATS (1 MiB max_payload) in
 * numbered parts; a body over controller.bodyLimitBytes is a 413 that Node's fetch, the OpenAI SDK
 * and curl all read (not a broken pipe), and the SDK does not retry.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Msg } from '@nats-io/transport-node';
import OpenAI from 'openai';
import { HDR_PART } from '../../src/parts';
import { makeSubjects } from '../../src/protocol';
import { MODEL, startCluster, STEADY, type Cluster } from '../helpers/cluster';

let cluster: Cluster;
let client: OpenAI;
const LIMIT = 16 * 1024 * 1024;

beforeAll(async () => {
  // Generous attempt limits: a 5 MB JSON body is parsed and sent on a loaded machine.
  cluster = await startCluster({
    workers: [{ id: 'big1' }],
    config: {
      ...STEADY,
      'cluster.requestRouting.attemptTimeoutMs': 20_000,
      'cluster.requestRouting.timeoutMs': 30_000,
      // The 300,000-token answer below is above the default max_tokens cap (32768).
      'cluster.maxTokens.cap': 1_000_000,
    },
  });
  client = new OpenAI({ baseURL: `${cluster.url}/v1`, apiKey: 'unused', maxRetries: 2 });
});

afterAll(async () => {
  await cluster?.stop();
});

test('large - the default body limit is at least 16 MB', () => {
  expect(cluster.config.controller.bodyLimitBytes).toBeGreaterThanOrEqual(LIMIT);
});

test('large - a 5 MB prompt reaches the worker in numbered parts and is answered', async () => {
  const parts: string[] = [];
  const spy = cluster.nc.subscribe(makeSubjects().infer('big1'), { callback: (_e, m: Msg) => void parts.push(m.headers?.get(HDR_PART) ?? 'whole') });
  await cluster.nc.flush();
  const prompt = 'word '.repeat(1024 * 1024); // 5 MiB
  const res = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: prompt }], max_tokens: 4 });
  spy.unsubscribe();
  expect(res.choices[0].message.content?.split(' ')).toHaveLength(4);
  expect(res.usage?.prompt_tokens).toBeGreaterThan(1_000_000);
  expect(parts.length).toBeGreaterThanOrEqual(5);
  expect(parts).toEqual(parts.map((_, i) => `${i + 1}/${parts.length}`));
});

test('large - a 1.5 MB buffered answer comes back whole', async () => {
  const res = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Write at length' }], max_tokens: 300_000 });
  const text = res.choices[0].message.content ?? '';
  expect(text.length).toBeGreaterThan(1_500_000);
  expect(text.split(' ')).toHaveLength(300_000);
  expect(res.usage?.completion_tokens).toBe(300_000);
});

test('large - a body over the limit is a 413 for fetch, the OpenAI SDK (no retry) and curl', async () => {
  const huge = JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x'.repeat(LIMIT + 1024 * 1024) }] });
  const res = await fetch(`${cluster.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: huge });
  expect(res.status).toBe(413);
  expect(((await res.json()) as { error: { router_code: string } }).error.router_code).toBe('REQUEST_TOO_LARGE');

  let attempts = 0;
  const counting = new OpenAI({
    baseURL: `${cluster.url}/v1`,
    apiKey: 'unused',
    maxRetries: 2,
    fetch: (url, init) => {
      attempts++;
      return fetch(url, init);
    },
  });
  const err = await counting.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x'.repeat(LIMIT + 1024 * 1024) }] }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(OpenAI.APIError);
  expect(err).not.toBeInstanceOf(OpenAI.APIConnectionError);
  expect((err as InstanceType<typeof OpenAI.APIError>).status).toBe(413);
  expect(attempts).toBe(1);

  const dir = mkdtempSync(join(tmpdir(), 'mlx-413-'));
  try {
    const file = join(dir, 'body.json');
    writeFileSync(file, huge);
    const { stdout } = await promisify(execFile)('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '-H', 'content-type: application/json', '--data-binary', `@${file}`, `${cluster.url}/v1/chat/completions`]);
    expect(stdout).toBe('413');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
