/**
 * Stream resume with real engine adapters, opted in (`worker.openai.continuation: vllm`): a
 * worker killed mid-stream is continued by another engine from the text already delivered.
 */
import { addEngineWorker, MODEL, startCluster, startTogether, type Cluster } from '../helpers/cluster';
import { fakeAnswer, startFakeEngine, type FakeEngine } from '../helpers/fake-engine';
import { openStream, summarize } from '../helpers/stream';

const ENV = { MLX_ROUTER_WORKER_OPENAI_CONTINUATION: 'vllm', MLX_ROUTER_WORKER_OPENAI_PROBE_INTERVAL_MS: '100' };

let cluster: Cluster;
let engines: FakeEngine[];

beforeAll(async () => {
  [cluster, ...engines] = await startTogether([
    startCluster(),
    startFakeEngine({ models: [MODEL], tokenDelayMs: 80 }),
    startFakeEngine({ models: [MODEL], tokenDelayMs: 80 }),
  ]);
  await addEngineWorker(cluster, { id: 'v1', engineUrl: engines[0].url, models: [MODEL], env: ENV });
  await addEngineWorker(cluster, { id: 'v2', engineUrl: engines[1].url, models: [MODEL], env: ENV });
});

afterAll(async () => {
  await cluster?.stop();
  await Promise.all(engines.map((e) => e.close()));
});

test('openai resume - workers that opt in advertise continuation', () => {
  expect(cluster.controller.deps.registry.get('v1')?.continuation).toBe(true);
  expect(cluster.controller.deps.registry.get('v2')?.continuation).toBe(true);
});

test('openai resume - a worker killed mid-stream is continued by the other engine from the delivered text', async () => {
  const stream = await openStream(cluster.url, { maxTokens: 16 });
  const first = stream.headers.get('x-mlx-worker')!;
  await stream.readUntil((t) => (t.match(/"content":"/g) ?? []).length >= 4);
  cluster.workers.get(first)!.kill('SIGKILL');
  const s = summarize(await stream.readAll());
  expect(s.errors).toEqual([]);
  expect(s.done).toBe(true);
  expect(s.content).toBe(fakeAnswer(16).text);
  expect(s.metadata.resumes).toBe(1);
  // The continuing engine was asked to extend the delivered text as the final assistant message.
  const other = engines[first === 'v1' ? 1 : 0];
  const body = other.chatRequests().at(-1)!.body;
  expect(body.continue_final_message).toBe(true);
  expect(body.add_generation_prompt).toBe(false);
  const last = body.messages.at(-1);
  expect(last.role).toBe('assistant');
  expect(s.content.startsWith(last.content)).toBe(true);
  expect(last.content.length).toBeGreaterThan(0);
});
