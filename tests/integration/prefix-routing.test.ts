/**
 * Prefix-cache-aware routing end to end: controller with `prefix` in its pipeline, three synthetic
 * worker processes with a prompt cache and prefill cost. The turns of one conversation (no session
 * id) stay on the worker that caches it, its engine reports the reuse, and when that worker is
 * saturated the conversation moves, then stays where it moved.
 */
import { chat, metricsText, metricValue, startCluster, waitFor, type Cluster } from '../helpers/cluster';

const PIPELINE = ['metrics', 'session', 'retry', 'breaker', 'prefix', 'select', 'timeout', 'health'];
const SYSTEM = { role: 'system', content: 'You answer questions about routing on a small cluster of machines. '.repeat(30) };

let cluster: Cluster;

beforeAll(async () => {
  cluster = await startCluster({
    config: {
      'cluster.pipeline': PIPELINE,
      // Without `prefix`, round-robin would spread the turns over all three workers.
      'cluster.requestRouting.strategy': 'round-robin',
      'cluster.requestRouting.workerWaitTimeoutMs': 0,
      // The slow requests that saturate a worker take seconds on purpose.
      'cluster.requestRouting.attemptTimeoutMs': 30_000,
    },
  });
  for (const id of ['p1', 'p2', 'p3']) await cluster.addWorker({ id, maxConcurrent: 2, tokenMs: 5, prefillUsPerToken: 20 });
});

afterAll(async () => cluster?.stop());

type Message = { role: string; content: string };

/** One turn: sends the history plus `question`; returns the worker, the cached tokens reported, and the history with the answer. */
async function turn(history: Message[], question: string) {
  const messages = [...history, { role: 'user', content: question }];
  const res = await chat(cluster.url, { body: { messages }, maxTokens: 8 });
  expect(res.status).toBe(200);
  const answer: string = res.json.choices[0].message.content;
  return {
    worker: res.headers.get('x-mlx-worker'),
    cached: res.json.usage.prompt_tokens_details?.cached_tokens as number,
    prompt: res.json.usage.prompt_tokens as number,
    history: [...messages, { role: 'assistant', content: answer }],
  };
}

test('prefix routing - the turns of one conversation land on one worker without a session id, and move when it saturates', async () => {
  let history: Message[] = [SYSTEM];
  const first = await turn(history, 'How do I route a conversation?');
  const home = first.worker!;
  expect(first.cached).toBe(0);
  history = first.history;
  let previousPrompt = first.prompt;
  for (let i = 2; i <= 5; i++) {
    const t = await turn(history, `And what about question ${i}?`);
    expect(t.worker).toBe(home);
    // The engine reused everything up to the previous answer.
    expect(t.cached).toBeGreaterThan(previousPrompt);
    previousPrompt = t.prompt;
    history = t.history;
  }
  const metrics = await metricsText(cluster.url);
  expect(metricValue(metrics, 'mlx_router_prefix_requests_total', { worker: home, predicted: 'hit', reported: 'hit' })).toBe(4);

  // Saturate the home worker (maxConcurrent 2) with two slow requests of the same conversation:
  // they share its prefix, so they go there too.
  const registry = cluster.controller.deps.registry;
  const slow = [1, 2].map((i) => chat(cluster.url, { body: { messages: [...history, { role: 'user', content: `a long digression ${i}` }] }, maxTokens: 600 }));
  await waitFor(() => registry.get(home)?.outstanding === 2, `${home} saturated`);
  const moved = await turn(history, 'Still there?');
  expect(moved.worker).not.toBe(home);
  expect(moved.cached).toBeLessThan(100); // a cold worker: only the chat header could be shared
  // The conversation now lives where it moved: the next turn stays there (the longer prefix), busy home or not.
  const after = await turn(moved.history, 'Good, go on.');
  expect(after.worker).toBe(moved.worker);
  expect(after.cached).toBeGreaterThan(moved.prompt);
  const blocked = await Promise.all(slow);
  for (const b of blocked) {
    expect(b.status).toBe(200);
    expect(b.headers.get('x-mlx-worker')).toBe(home);
  }
});

test('prefix routing - users sharing a system prompt gather on the worker that caches it', async () => {
  const shared = { role: 'system', content: 'A different long system prompt for a group of users. '.repeat(30) };
  const a = await turn([shared], 'user a asks');
  for (const who of ['b', 'c', 'd']) {
    const t = await turn([shared], `user ${who} asks`);
    expect(t.worker).toBe(a.worker);
    expect(t.cached).toBeGreaterThanOrEqual(Math.ceil(shared.content.length / 4));
  }
});
