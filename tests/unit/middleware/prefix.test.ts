/** prefix middleware: longest predicted prefix, load and prefill-work fallbacks, retries, correction, metrics. */
import type { RouteContext } from '../../../src/context';
import { RouterMetrics } from '../../../src/controller/metrics';
import { PrefixIndex } from '../../../src/prefix-index';
import type { WorkerInfo } from '../../../src/controller/registry';
import type { ChatMessage } from '../../../src/protocol';
import { prefix, type PrefixOptions } from '../../../middleware/prefix';
import { makeCtx, makeWorker } from '../../helpers/context';

const OPTIONS: PrefixOptions = { minPrefixTokens: 64, ttftMarginTokens: 2048, maxImbalance: 4, defaultCacheSize: 10 };
const SYSTEM: ChatMessage = { role: 'system', content: 'Shared instructions for every user. '.repeat(40) };
const user = (content: string): ChatMessage => ({ role: 'user', content });

function workers(...ids: string[]): WorkerInfo[] {
  return ids.map((id) => makeWorker(id, { promptCache: { size: 10, epoch: `${id}-1` } }));
}

interface Answer {
  cached?: number;
  text?: string;
  fail?: boolean;
}

/** One attempt through the middleware; the terminal plays select + dispatch: takes the first candidate and answers. */
async function route(mw: ReturnType<typeof prefix>, candidates: WorkerInfo[], messages: ChatMessage[], answer: Answer = {}, patch?: (ctx: RouteContext) => void) {
  const ctx = makeCtx({ candidates, request: { messages } });
  patch?.(ctx);
  let narrowed: string[] = [];
  await mw(ctx, async () => {
    narrowed = ctx.candidates.map((w) => w.id);
    ctx.worker = ctx.candidates[0];
    if (answer.fail) throw new Error('attempt failed');
    const details = answer.cached === undefined ? {} : { prompt_tokens_details: { cached_tokens: answer.cached } };
    ctx.result = { type: 'result', text: answer.text ?? 'ok', finish_reason: 'stop', usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2, ...details } };
  }).catch((e: Error) => {
    if (!answer.fail) throw e;
  });
  return { ctx, narrowed, worker: ctx.worker?.id };
}

test('prefix - the turns of one conversation stay on the worker holding its prefix, without a session id', async () => {
  const mw = prefix(OPTIONS);
  const pool = workers('w1', 'w2', 'w3');
  const first = [SYSTEM, user('my first question')];
  pool[0].outstanding = 1; // w1 busier: the first turn goes to the least loaded, w2
  const a = await route(mw, pool, first, { text: 'first answer', cached: 0 });
  expect(a.narrowed).toEqual(['w2']);
  pool[1].outstanding = 3; // w2 is now busier than the others, but within maxImbalance
  const second = [...first, { role: 'assistant', content: 'first answer' }, user('and then?')];
  const b = await route(mw, pool, second, { cached: 500 });
  expect(b.narrowed).toEqual(['w2']);
});

test('prefix - a shared system prompt draws other users to the worker that has it', async () => {
  const mw = prefix(OPTIONS);
  const pool = workers('w1', 'w2');
  await route(mw, pool, [SYSTEM, user('alice')], { cached: 0 }, (ctx) => (ctx.candidates = [pool[1]]));
  expect((await route(mw, pool, [SYSTEM, user('bob')], { cached: 400 })).narrowed).toEqual(['w2']);
  // A prompt sharing nothing goes by load (least loaded, first on a tie).
  expect((await route(mw, pool, [user('unrelated '.repeat(50))], { cached: 0 })).narrowed).toEqual(['w1']);
});

test('prefix - too busy (maxImbalance more in flight) falls back to the least loaded worker', async () => {
  const metrics = new RouterMetrics();
  const mw = prefix(OPTIONS, { metrics });
  const pool = workers('w1', 'w2');
  const msgs = [SYSTEM, user('q')];
  await route(mw, pool, msgs, { cached: 0 });
  pool[0].outstanding = 4;
  expect((await route(mw, pool, msgs, { cached: 0 })).narrowed).toEqual(['w2']);
  const decisions = await metrics.prefixDecisions.get();
  expect(decisions.values.find((v) => v.labels.decision === 'imbalance')?.value).toBe(1);
});

test('prefix - predicted prefill work beyond the margin falls back to the cheapest worker', async () => {
  const mw = prefix({ ...OPTIONS, ttftMarginTokens: 100, maxImbalance: 100 });
  const pool = workers('w1', 'w2');
  const shared = [SYSTEM, user('q')];
  await route(mw, pool, shared, { cached: 0 });
  // A long unrelated prompt in flight on w1 queues prefill work there.
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const ctx = makeCtx({ candidates: pool, request: { messages: [user('x'.repeat(20_000))] } });
  ctx.candidates = [pool[0]];
  const inflight = mw(ctx, async () => {
    ctx.worker = ctx.candidates[0];
    await held;
  });
  expect((await route(mw, pool, shared, { cached: 0 })).narrowed).toEqual(['w2']);
  release();
  await inflight;
  // Once that work is done, the prefix wins again.
  expect((await route(mw, pool, [SYSTEM, user('again')], { cached: 400 })).narrowed).toEqual(['w1']);
});

test('prefix - a retry goes to the worker with the next-longest predicted prefix', async () => {
  const mw = prefix(OPTIONS);
  const pool = workers('w1', 'w2', 'w3');
  const t1 = [SYSTEM, user('q1')];
  const t2 = [...t1, { role: 'assistant', content: 'a1' }, user('q2')];
  await route(mw, pool, t1, { text: 'a1', cached: 0 }, (ctx) => (ctx.candidates = [pool[0]])); // w1 has the system prompt + turn 1
  await route(mw, pool, [SYSTEM, user('other')], { cached: 0 }, (ctx) => (ctx.candidates = [pool[2]])); // w3 has the system prompt
  const retry = await route(mw, pool, t2, { cached: 400 }, (ctx) => {
    ctx.attempts.push({ attempt: 1, worker: 'w1', outcome: 'worker_failure', code: 'WORKER_ERROR', durationMs: 1 });
  });
  expect(retry.narrowed).toEqual(['w3']);
});

test('prefix - a predicted hit the engine missed drops the worker’s entries; metrics count both ratios', async () => {
  const metrics = new RouterMetrics();
  const index = new PrefixIndex(10);
  const mw = prefix(OPTIONS, { metrics, index });
  const pool = workers('w1');
  const msgs = [SYSTEM, user('q')];
  await route(mw, pool, msgs, { cached: 0 });
  await route(mw, pool, [SYSTEM, user('x')], { cached: 300 });
  expect(index.entries('w1')).toBe(2);
  await route(mw, pool, msgs, { cached: 3 }); // predicted a hit, the engine reused 3 tokens: a miss
  expect(index.entries('w1')).toBe(1); // only this request's own chain, recorded after the answer
  const requests = await metrics.prefixRequests.get();
  const count = (predicted: string, reported: string) =>
    requests.values.find((v) => v.labels.predicted === predicted && v.labels.reported === reported && v.labels.worker === 'w1')?.value ?? 0;
  expect(count('miss', 'miss')).toBe(1);
  expect(count('hit', 'hit')).toBe(1);
  expect(count('hit', 'miss')).toBe(1);
  expect((await metrics.prefixDrops.get()).values[0].value).toBe(1);
  expect((await metrics.prefixSavedTokens.get()).values[0].value).toBe(303);
});

test('prefix - an engine that reports nothing is never corrected', async () => {
  const index = new PrefixIndex(10);
  const mw = prefix(OPTIONS, { index });
  const pool = workers('w1');
  await route(mw, pool, [SYSTEM, user('q')]);
  await route(mw, pool, [SYSTEM, user('q2')]);
  expect(index.entries('w1')).toBe(2);
});

test('prefix - a free sticky session worker wins; saturated candidates are left to select', async () => {
  const mw = prefix(OPTIONS);
  const pool = workers('w1', 'w2');
  await route(mw, pool, [SYSTEM, user('q')], { cached: 0 }, (ctx) => (ctx.candidates = [pool[0]]));
  const sticky = await route(mw, pool, [SYSTEM, user('q')], { cached: 0 }, (ctx) => (ctx.stickyWorker = 'w2'));
  expect(sticky.narrowed).toEqual(['w2']);
  for (const w of pool) w.outstanding = w.maxConcurrent;
  expect((await route(mw, pool, [SYSTEM, user('q')], { cached: 0 })).narrowed).toEqual(['w1', 'w2']);
});

test('prefix - a worker that restarted (new epoch) or went offline loses its entries', async () => {
  const online = workers('w1', 'w2');
  const index = new PrefixIndex(10);
  const mw = prefix(OPTIONS, { index, registry: { online: () => online } });
  const msgs = [SYSTEM, user('q')];
  await route(mw, online, msgs, { cached: 0 }, (ctx) => (ctx.candidates = [online[1]]));
  await route(mw, online, msgs, { cached: 0 }, (ctx) => (ctx.candidates = [online[0]]));
  online[1].promptCache = { size: 10, epoch: 'w2-2' };
  expect((await route(mw, online, msgs, { cached: 0 }, (ctx) => (ctx.candidates = [online[1], online[0]]))).narrowed).toEqual(['w1']);
  online.splice(0, 1); // w1 disappears
  await route(mw, online, [user('other')], { cached: 0 });
  expect(index.entries('w1')).toBe(0);
});

test('prefix - a worker whose cache is full of live conversations takes no new one; its own conversations stay', async () => {
  const metrics = new RouterMetrics();
  const index = new PrefixIndex(10);
  const mw = prefix(OPTIONS, { metrics, index });
  const pool = [makeWorker('w1', { promptCache: { size: 2, epoch: 'w1-1' } }), makeWorker('w2', { promptCache: { size: 2, epoch: 'w2-1' } })];
  const first = (who: string) => [SYSTEM, user(`${who} 1`)];
  const second = (who: string) => [...first(who), { role: 'assistant', content: `${who} a1` }, user(`${who} 2`)];
  // alice and bob fill w1's two slots (the shared system prompt draws bob there) and come back.
  expect((await route(mw, pool, first('alice'), { text: 'alice a1', cached: 0 }, (ctx) => (ctx.candidates = [pool[0]]))).narrowed).toEqual(['w1']);
  expect((await route(mw, pool, first('bob'), { text: 'bob a1', cached: 400 })).narrowed).toEqual(['w1']);
  expect((await route(mw, pool, second('alice'), { text: 'alice a2', cached: 500 })).narrowed).toEqual(['w1']);
  expect((await route(mw, pool, second('bob'), { text: 'bob a2', cached: 500 })).narrowed).toEqual(['w1']);
  expect(index.pressured('w1')).toBe(true);
  // carol shares the system prompt with w1 only, but would evict alice or bob there: she goes to w2.
  expect((await route(mw, pool, first('carol'), { text: 'carol a1', cached: 0 })).narrowed).toEqual(['w2']);
  const decisions = await metrics.prefixDecisions.get();
  expect(decisions.values.find((v) => v.labels.decision === 'cache-full')?.value).toBe(1);
  // alice's next turn continues her entry on w1: it stays.
  const third = [...second('alice'), { role: 'assistant', content: 'alice a2' }, user('alice 3')];
  expect((await route(mw, pool, third, { cached: 600 })).narrowed).toEqual(['w1']);
});

test('prefix - when every candidate is full of live conversations, the longest prefix wins as before', async () => {
  const index = new PrefixIndex(10);
  const mw = prefix(OPTIONS, { index });
  const pool = [makeWorker('w1', { promptCache: { size: 1, epoch: 'w1-1' } }), makeWorker('w2', { promptCache: { size: 1, epoch: 'w2-1' } })];
  const t = (who: string, n: number): ChatMessage[] => {
    const m: ChatMessage[] = [SYSTEM];
    for (let i = 1; i < n; i++) m.push(user(`${who} ${i}`), { role: 'assistant', content: `${who} a${i}` });
    m.push(user(`${who} ${n}`));
    return m;
  };
  await route(mw, pool, t('alice', 1), { text: 'alice a1', cached: 0 }, (ctx) => (ctx.candidates = [pool[0]]));
  await route(mw, pool, t('bob', 1), { text: 'bob a1', cached: 0 }, (ctx) => (ctx.candidates = [pool[1]]));
  await route(mw, pool, t('alice', 2), { text: 'alice a2', cached: 500 });
  await route(mw, pool, t('bob', 2), { text: 'bob a2', cached: 500 });
  expect(index.pressured('w1') && index.pressured('w2')).toBe(true);
  // carol's system prompt is on both; both are full: no room anywhere, so the usual rules choose (w1, first on a tie).
  expect((await route(mw, pool, t('carol', 1), { cached: 400 })).narrowed).toEqual(['w1']);
});

test('prefix - a prefix still in flight is not predicted: a second request sharing it goes where it does not queue behind it', async () => {
  const mw = prefix(OPTIONS);
  const pool = workers('w1', 'w2');
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const ctx = makeCtx({ candidates: pool, request: { messages: [SYSTEM, user('alice')] } });
  const first = mw(ctx, async () => {
    ctx.worker = ctx.candidates[0];
    await held;
    ctx.result = { type: 'result', text: 'a', finish_reason: 'stop', usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2, prompt_tokens_details: { cached_tokens: 0 } } };
  });
  expect(ctx.candidates.map((w) => w.id)).toEqual(['w1']);
  // w1 has not stored the system prompt yet: bob would pay all of it there, behind alice.
  expect((await route(mw, pool, [SYSTEM, user('bob')], { cached: 0 })).narrowed).toEqual(['w2']);
  release();
  await first;
  // Once alice is answered, w1 holds it, as w2 holds bob's: carol follows the least prefill work, both cached.
  expect((await route(mw, pool, [SYSTEM, user('carol')], { cached: 400 })).narrowed).toEqual(['w1']);
});
