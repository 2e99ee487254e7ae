/**
 * hedge middleware: a boundary inside retry. It gets the real attempt runner (src/attempt.ts), here
 * over the real `breaker` and `select` middleware and then scripted workers whose first token,
 * answer and failure the test releases, on a clock whose time and timers move only when told.
 */
import compose from 'koa-compose';
import { Counter, Registry } from 'prom-client';
import { attemptRunner } from '../../../src/attempt';
import type { ClockTimer } from '../../../src/clock';
import type { Middleware, RouteContext, StreamSink } from '../../../src/context';
import { BreakerBook } from '../../../src/controller/breakers';
import { RouterError, toRouterError } from '../../../src/errors';
import type { WireResult } from '../../../src/protocol';
import type { WorkerInfo } from '../../../src/types';
import { breaker } from '../../../middleware/breaker';
import { hedge, HedgeBudget, type HedgeOptions } from '../../../middleware/hedge';
import { select } from '../../../middleware/select';
import { makeCtx, makeWorker, MODEL } from '../../helpers/context';
import { FakeClock } from '../../helpers/fake-clock';

/** A fake clock whose timers fire only as `advance` passes them. */
class ManualClock extends FakeClock {
  private timers: Array<{ at: number; fn: () => void; live: boolean; ms: number }> = [];

  override timer(ms: number, fn: () => void): ClockTimer {
    const t = { at: this.now() + ms, fn, live: true, ms };
    this.timers.push(t);
    return {
      cancel: () => {
        t.live = false;
      },
      restart: (next = t.ms) => {
        t.live = true;
        t.ms = next;
        t.at = this.now() + next;
      },
    } as ClockTimer;
  }

  get armed(): number {
    return this.timers.filter((t) => t.live).length;
  }

  override async advance(ms: number): Promise<void> {
    const until = this.now() + ms;
    for (;;) {
      const due = this.timers.filter((t) => t.live && t.at <= until).sort((a, b) => a.at - b.at)[0];
      if (!due) break;
      await super.advance(due.at - this.now());
      due.live = false;
      due.fn();
      await flush();
    }
    await super.advance(until - this.now());
    await flush();
  }
}

async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

/** One attempt a scripted worker is running: the test makes it show a token, answer or fail. */
interface Run {
  worker: string;
  ctx: RouteContext;
  token(text?: string): void;
  answer(text?: string): void;
  fail(err: RouterError): void;
  /** Why the attempt was aborted, once it was. */
  aborted(): unknown;
}

function resultOf(text: string): WireResult {
  return { type: 'result', text, finish_reason: 'stop', usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } } as WireResult;
}

interface Harness {
  clock: ManualClock;
  book: BreakerBook;
  runs: Run[];
  hedges: Counter<'outcome'>;
  register: Registry;
  workers: WorkerInfo[];
  mw: Middleware;
  /** Starts one request through the middleware; resolves with its context and error, if any. */
  request(options?: { sink?: StreamSink; stream?: boolean }): { ctx: RouteContext; done: Promise<RouterError | undefined> };
  /** Teaches worker `id` `n` quick first tokens (each `ms` after the worker was chosen). */
  warm(id: string, n: number, ms: number): Promise<void>;
  count(outcome: string): Promise<number>;
}

function harness(options: Partial<HedgeOptions> = {}, workerPatch: Partial<WorkerInfo> = {}): Harness {
  const clock = new ManualClock();
  const book = new BreakerBook({ failureThreshold: 1, successThreshold: 1, timeoutMs: 10_000, maxTimeoutMs: 60_000, halfOpenPermits: 1, clock, random: () => 0.5 });
  const workers = [makeWorker('a', workerPatch), makeWorker('b', workerPatch)];
  const runs: Run[] = [];
  const scripted: Middleware = (c) =>
    new Promise<void>((resolve, reject) => {
      const attempt = c.attempt;
      let abortReason: unknown;
      attempt.signal.addEventListener('abort', () => {
        abortReason = attempt.signal.reason;
        reject(attempt.signal.reason);
      });
      runs.push({
        worker: c.worker!.id,
        ctx: c,
        token: (text = 'tok') => {
          attempt.firstTokenAt ??= clock.now();
          attempt.progress();
          if (c.stream) c.sink!.write(text);
        },
        answer: (text = 'done') => {
          if (!c.stream) c.result = resultOf(text);
          resolve();
        },
        fail: (err) => reject(err),
        aborted: () => abortReason,
      });
    });
  // The same order as the default pipeline after the boundary: breaker, select, (timeout,) the worker.
  const runAttempt = attemptRunner(compose<RouteContext>([breaker({ enabled: true }, { breakers: book }), select({ strategy: 'round-robin', workerWaitTimeoutMs: 0 }), scripted]), {
    candidates: () => workers.filter((w) => w.state === 'ready'),
  });
  const register = new Registry();
  const hedges = new Counter({ name: 'hedges_total', help: 'h', labelNames: ['outcome'], registers: [register] });
  const registry = {
    forModel: () => workers.filter((w) => w.state === 'ready'),
  } as unknown as Parameters<typeof hedge>[1]['registry'];
  const mw = hedge(
    { minSamples: 5, percentile: 0.95, minDelayMs: 20, firstChunkMsPer1kPromptTokens: 0, budget: { ratio: 0.05, maxTokens: 10, minPerSecond: 0 }, ...options },
    { clock, registry, breakers: book, metrics: { hedges } as never },
    runAttempt,
  );
  const h: Harness = {
    clock,
    book,
    runs,
    hedges,
    register,
    workers,
    mw,
    request(o = {}) {
      const ctx = makeCtx({ clock, sink: o.sink, request: { stream: o.stream ?? o.sink !== undefined } });
      const done = mw(ctx, () => Promise.resolve()).then(
        () => undefined,
        (e: unknown) => toRouterError(e),
      );
      return { ctx, done };
    },
    async warm(id, n, ms) {
      for (let i = 0; i < n; i++) {
        const other = workers.find((w) => w.id !== id)!;
        other.state = 'draining';
        const { done } = h.request();
        await flush();
        await clock.advance(ms);
        const run = runs[runs.length - 1];
        run.token();
        run.answer();
        expect(await done).toBeUndefined();
        other.state = 'ready';
      }
    },
    async count(outcome) {
      const v = await hedges.get();
      return v.values.find((x) => x.labels.outcome === outcome)?.value ?? 0;
    },
  };
  return h;
}

/** A harness whose worker a has learned times to first token (five of 10 ms): its attempts can be hedged. */
async function learnedOnA(options: Partial<HedgeOptions> = {}): Promise<Harness> {
  const h = harness(options);
  await h.warm('a', 5, 10);
  h.runs.length = 0;
  return h;
}

test('hedge - before a worker has minSamples times to first token, nothing is hedged', async () => {
  const h = harness();
  const { ctx, done } = h.request();
  await flush();
  expect(h.clock.armed).toBe(0);
  await h.clock.advance(5000);
  expect(h.runs).toHaveLength(1);
  h.runs[0].token();
  h.runs[0].answer();
  expect(await done).toBeUndefined();
  expect(ctx.attempts).toHaveLength(1);
  expect(ctx.metrics.hedge).toBeUndefined();
});

test('hedge - won: no first token by the learned hedge point, the hedge on another worker answers first; the first attempt gets HEDGE_LOST and its breaker stays closed', async () => {
  const h = await learnedOnA();
  const { ctx, done } = h.request();
  await flush();
  expect(h.runs.map((r) => r.worker)).toEqual(['a']);
  // The hedge point is the 95th percentile of a's times (10 ms), never before minDelayMs (20).
  await h.clock.advance(19);
  expect(h.runs).toHaveLength(1);
  await h.clock.advance(1);
  expect(h.runs.map((r) => r.worker)).toEqual(['a', 'b']);
  h.runs[1].token();
  await flush();
  expect(h.runs[0].aborted()).toMatchObject({ code: 'HEDGE_LOST', outcome: 'cancelled' });
  h.runs[1].answer('from b');
  expect(await done).toBeUndefined();
  expect(ctx.result?.text).toBe('from b');
  expect(ctx.worker?.id).toBe('b');
  expect(ctx.metrics.selectedWorker).toBe('b');
  expect(ctx.metrics.hedge).toEqual({ outcome: 'won', worker: 'b', afterMs: 20 });
  expect(ctx.metrics.hedges).toBe(1);
  // A hedge is not a retry.
  expect(ctx.metrics.retryCount).toBe(0);
  expect(ctx.metrics.failedWorkers).toEqual([]);
  const byNumber = [...ctx.attempts].sort((x, y) => x.attempt - y.attempt);
  expect(byNumber.map((r) => [r.attempt, r.worker, r.outcome, r.code, r.hedge])).toEqual([
    [1, 'a', 'cancelled', 'HEDGE_LOST', undefined],
    [2, 'b', 'success', null, true],
  ]);
  expect(h.book.snapshot()).toEqual(expect.not.arrayContaining([['a', 'open']]));
  expect(h.book.allows('a')).toBe(true);
  expect(await h.count('won')).toBe(1);
});

test('hedge - lost: the first attempt shows its token after the hedge started; the hedge is cancelled and its worker not blamed', async () => {
  const h = await learnedOnA();
  const { ctx, done } = h.request();
  await flush();
  await h.clock.advance(30);
  expect(h.runs.map((r) => r.worker)).toEqual(['a', 'b']);
  h.runs[0].token();
  await flush();
  expect(h.runs[1].aborted()).toMatchObject({ code: 'HEDGE_LOST' });
  h.runs[0].answer('from a');
  expect(await done).toBeUndefined();
  expect(ctx.result?.text).toBe('from a');
  expect(ctx.metrics.hedge).toMatchObject({ outcome: 'lost', worker: 'b' });
  expect(ctx.metrics.selectedWorker).toBe('a');
  expect(h.book.allows('b')).toBe(true);
  expect(await h.count('lost')).toBe(1);
  expect(await h.count('won')).toBe(0);
});

/** A client stream that records what reaches it (each write prefixed with `prefix`). */
function recordingSink(out: string[], prefix = ''): StreamSink {
  return {
    get committed() {
      return out.length > 0;
    },
    get streamed() {
      return out.join('');
    },
    write: (t) => {
      out.push(`${prefix}${t}`);
      return true;
    },
  };
}

test('hedge - streamed: nothing reaches the client before the race is decided, then only the winner writes', async () => {
  const h = await learnedOnA();
  const written: string[] = [];
  const sink = recordingSink(written);
  const { ctx, done } = h.request({ sink });
  await flush();
  await h.clock.advance(25);
  expect(h.runs).toHaveLength(2);
  expect(written).toEqual([]);
  h.runs[1].token('B1');
  // The loser was cancelled before it could write; a late write of it would be dropped.
  expect(h.runs[0].aborted()).toMatchObject({ code: 'HEDGE_LOST' });
  h.runs[0].ctx.sink!.write('A1');
  h.runs[1].ctx.sink!.write('B2');
  h.runs[1].answer();
  expect(await done).toBeUndefined();
  expect(written).toEqual(['B1', 'B2']);
  expect(ctx.worker?.id).toBe('b');
  expect(ctx.metrics.hedge?.outcome).toBe('won');
});

test('hedge - streamed through whole engine deltas (writeChoices): only the winner\'s reach the client, and a sink without them gets none', async () => {
  const h = await learnedOnA();
  const deltas: string[] = [];
  const sink = recordingSink(deltas, 'text:');
  sink.writeChoices = (choices) => {
    deltas.push(`choices:${choices.map((c) => String(c.delta.content ?? '')).join('')}`);
    return true;
  };
  const { ctx, done } = h.request({ sink });
  await flush();
  await h.clock.advance(25);
  expect(h.runs).toHaveLength(2);
  const branch = (i: number): StreamSink => h.runs[i].ctx.sink!;
  expect(typeof branch(0).writeChoices).toBe('function');
  h.runs[1].token('B1');
  expect(h.runs[0].aborted()).toMatchObject({ code: 'HEDGE_LOST' });
  // The loser's late deltas are dropped (reported as written, so it does not fail on them).
  expect(branch(0).writeChoices!([{ index: 0, delta: { content: 'A2' } }])).toBe(true);
  expect(branch(1).writeChoices!([{ index: 0, delta: { content: 'B2' } }])).toBe(true);
  h.runs[1].answer();
  expect(await done).toBeUndefined();
  expect(deltas).toEqual(['text:B1', 'choices:B2']);
  expect(ctx.worker?.id).toBe('b');
  // A plain sink: its branches offer no writeChoices either (dispatch then writes text).
  const plain = h.request({ sink: { committed: false, streamed: '', write: () => true } });
  await flush();
  expect(h.runs.at(-1)!.ctx.sink!.writeChoices).toBeUndefined();
  h.runs.at(-1)!.token('C1');
  h.runs.at(-1)!.answer();
  expect(await plain.done).toBeUndefined();
});

test('hedge - the budget: a spent bucket skips the hedge (skipped_budget) and the attempt runs alone', async () => {
  const h = await learnedOnA({ budget: { ratio: 0, maxTokens: 1, minPerSecond: 0 } });
  const first = h.request();
  await flush();
  await h.clock.advance(25);
  expect(h.runs).toHaveLength(2);
  h.runs[1].token();
  h.runs[1].answer();
  expect(await first.done).toBeUndefined();
  h.runs.length = 0;
  // Round-robin: make sure a gets the next request again.
  h.workers[1].state = 'draining';
  const second = h.request();
  await flush();
  h.workers[1].state = 'ready';
  await h.clock.advance(25);
  expect(h.runs.map((r) => r.worker)).toEqual(['a']);
  h.runs[0].token();
  h.runs[0].answer();
  expect(await second.done).toBeUndefined();
  expect(second.ctx.metrics.hedge).toEqual({ outcome: 'skipped_budget', afterMs: 20 });
  expect(second.ctx.attempts).toHaveLength(1);
  expect(await h.count('skipped_budget')).toBe(1);
});

test('hedge - no other worker can take it (busy or breaker open): skipped_no_worker, no budget spent', async () => {
  const h = await learnedOnA({ budget: { ratio: 0, maxTokens: 1, minPerSecond: 0 } });
  h.book.failure('b');
  const { ctx, done } = h.request();
  await flush();
  await h.clock.advance(25);
  expect(h.runs).toHaveLength(1);
  h.runs[0].token();
  h.runs[0].answer();
  expect(await done).toBeUndefined();
  expect(ctx.metrics.hedge).toEqual({ outcome: 'skipped_no_worker', afterMs: 20 });
  expect(await h.count('skipped_no_worker')).toBe(1);
});

test('hedge - the first attempt fails after the hedge started: the hedge still answers (won); the failure counts against its worker as usual', async () => {
  const h = await learnedOnA();
  const { ctx, done } = h.request();
  await flush();
  await h.clock.advance(25);
  h.runs[0].fail(new RouterError('WORKER_ERROR', 'engine broke', { worker: 'a' }));
  await flush();
  h.runs[1].token();
  h.runs[1].answer('b answers');
  expect(await done).toBeUndefined();
  expect(ctx.result?.text).toBe('b answers');
  expect(ctx.metrics.hedge?.outcome).toBe('won');
  // A failure of its own (not a lost race) is judged like any attempt's.
  expect(h.book.allows('a')).toBe(false);
  expect(ctx.metrics.failedWorkers).toEqual(['a']);
});

test('hedge - both attempts fail: the first attempt\'s error goes to retry, the hedge outcome is failed', async () => {
  const h = await learnedOnA();
  const { ctx, done } = h.request();
  await flush();
  await h.clock.advance(25);
  h.runs[1].fail(new RouterError('WORKER_ERROR', 'b broke', { worker: 'b' }));
  await flush();
  h.runs[0].fail(new RouterError('WORKER_TIMEOUT', 'a hung', { worker: 'a' }));
  const err = await done;
  expect(err).toMatchObject({ code: 'WORKER_TIMEOUT' });
  expect(ctx.metrics.hedge?.outcome).toBe('failed');
  expect(ctx.attempts).toHaveLength(2);
  expect(await h.count('failed')).toBe(1);
});

test('hedge - a buffered attempt to a worker that sends no progress is never hedged (no first token can show)', async () => {
  const h = harness({ initialDelayMs: 20 }, { progressMs: 0 });
  const { done } = h.request();
  await flush();
  expect(h.clock.armed).toBe(0);
  await h.clock.advance(100);
  expect(h.runs).toHaveLength(1);
  h.runs[0].answer();
  expect(await done).toBeUndefined();
});

test('hedge - initialDelayMs hedges a worker whose times are not learned yet; the client leaving ends both attempts', async () => {
  const h = harness({ initialDelayMs: 40 });
  const client = new AbortController();
  const ctx = makeCtx({ clock: h.clock, signal: client.signal });
  const done = h.mw(ctx, () => Promise.resolve()).then(
    () => undefined,
    (e: unknown) => toRouterError(e),
  );
  await flush();
  await h.clock.advance(39);
  expect(h.runs).toHaveLength(1);
  await h.clock.advance(1);
  expect(h.runs).toHaveLength(2);
  client.abort(new RouterError('CLIENT_CLOSED_REQUEST', 'client left'));
  expect(await done).toMatchObject({ code: 'CLIENT_CLOSED_REQUEST' });
  expect(h.runs.map((r) => (r.aborted() as RouterError).code)).toEqual(['CLIENT_CLOSED_REQUEST', 'CLIENT_CLOSED_REQUEST']);
  expect(h.clock.armed).toBe(0);
});

test('hedge - disabled: attempts run one at a time', async () => {
  const h = harness({ enabled: false, initialDelayMs: 20 });
  const { done } = h.request();
  await flush();
  await h.clock.advance(100);
  expect(h.runs).toHaveLength(1);
  h.runs[0].answer();
  expect(await done).toBeUndefined();
});

test('hedge budget - at most ratio × attempts + the burst over a long run; the minimum refills with time', () => {
  const clock = new FakeClock();
  const budget = new HedgeBudget({ ratio: 0.05, maxTokens: 10, minPerSecond: 0 }, clock);
  let hedges = 0;
  for (let i = 0; i < 10_000; i++) {
    budget.onAttempt();
    if (budget.take()) hedges++;
  }
  expect(hedges).toBeLessThanOrEqual(0.05 * 10_000 + 10);
  expect(hedges).toBeGreaterThanOrEqual(0.05 * 10_000);
  const quiet = new HedgeBudget({ ratio: 0.05, maxTokens: 2, minPerSecond: 0.5 }, clock);
  expect(quiet.take()).toBe(true);
  expect(quiet.take()).toBe(true);
  expect(quiet.take()).toBe(false);
  void clock.advance(2000);
  expect(quiet.take()).toBe(true);
  expect(quiet.take()).toBe(false);
});

test('hedge - the model decides the learned point: times of another model do not arm it', async () => {
  const h = await learnedOnA();
  const ctx = makeCtx({ clock: h.clock, request: { model: `${MODEL}-other` } });
  const done = h.mw(ctx, () => Promise.resolve());
  await flush();
  expect(h.clock.armed).toBe(0);
  h.runs[0].token();
  h.runs[0].answer();
  await done;
});

test('hedge - the attempt sees every field of the request context, also ones other middleware set (the client key)', async () => {
  const h = harness();
  const ctx = makeCtx({ clock: h.clock, sessionId: 's-9' });
  (ctx as { client?: unknown }).client = { id: 'gold', priority: 'high' };
  ctx.stickyWorker = 'b';
  const done = h.mw(ctx, () => Promise.resolve());
  await flush();
  const seen = h.runs[0].ctx as RouteContext & { client?: unknown };
  expect(seen.client).toEqual({ id: 'gold', priority: 'high' });
  expect([seen.requestId, seen.sessionId, seen.stickyWorker, seen.deadline]).toEqual([ctx.requestId, 's-9', 'b', ctx.deadline]);
  // Shared, not copied: what the attempt records is the request's.
  expect(seen.attempts).toBe(ctx.attempts);
  expect(seen.metrics).toBe(ctx.metrics);
  expect(seen.state).toBe(ctx.state);
  h.runs[0].answer('x');
  await done;
  expect(ctx.result?.text).toBe('x');
  expect(ctx.worker?.id).toBe('b');
});
