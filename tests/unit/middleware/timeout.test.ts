/**
 * timeout middleware: it arms real setTimeout timers, so these tests use Jest's fake timers; the
 * request deadline is read from the context's FakeClock.
 */
import type { RouteContext } from '../../../src/context';
import { isRouterError, type RouterError } from '../../../src/errors';
import { timeout, type TimeoutOptions } from '../../../middleware/timeout';
import { makeCtx, makeWorker } from '../../helpers/context';
import { FakeClock } from '../../helpers/fake-clock';

/** The configured limits alone: no prompt allowance and no learned limits unless a test asks. */
const OPTIONS: TimeoutOptions = {
  attemptTimeoutMs: 1000,
  firstChunkTimeoutMs: 500,
  idleTimeoutMs: 200,
  firstChunkMsPer1kPromptTokens: 0,
  adaptive: { enabled: false, factor: 4, floorMs: 1000, minSamples: 20 },
};

beforeEach(() => {
  // Only timers are faked: FakeClock.advance yields through a real setImmediate, and getTimerCount
  // would otherwise also count nextTick and microtask jobs queued by anything else in the process.
  jest.useFakeTimers({ doNotFake: ['setImmediate', 'nextTick', 'queueMicrotask'] });
});

afterEach(() => {
  jest.useRealTimers();
});

/** A dispatch that never answers: it ends only when the attempt's signal aborts, with its reason. */
function hang(ctx: RouteContext): Promise<void> {
  return new Promise<void>((_, reject) => {
    ctx.attempt.signal.addEventListener('abort', () => reject(ctx.attempt.signal.reason), { once: true });
  });
}

/** Starts the middleware over `next` and returns a probe of how it ended. */
function start(ctx: RouteContext, next: () => Promise<void>, options: TimeoutOptions = OPTIONS) {
  let settled: { error?: unknown } | undefined;
  const done = timeout(options)(ctx, next).then(
    () => (settled = {}),
    (error: unknown) => (settled = { error }),
  );
  return { done, settled: () => settled };
}

function reason(ctx: RouteContext): RouterError {
  const r: unknown = ctx.attempt.signal.reason;
  if (!isRouterError(r)) throw new Error(`attempt aborted with ${String(r)}`);
  return r;
}

test('timeout - a buffered attempt to a 1.0 worker (no progress) is aborted with WORKER_TIMEOUT after attemptTimeoutMs, not before', async () => {
  const ctx = makeCtx({ candidates: [] });
  ctx.worker = makeWorker('w1', { progressMs: 0 });
  const run = start(ctx, () => hang(ctx));
  jest.advanceTimersByTime(999);
  expect(ctx.attempt.signal.aborted).toBe(false);
  jest.advanceTimersByTime(1);
  expect(ctx.attempt.signal.aborted).toBe(true);
  await run.done;
  expect(reason(ctx)).toMatchObject({ code: 'WORKER_TIMEOUT', status: 504, outcome: 'ambiguous', worker: 'w1' });
  expect(reason(ctx).message).toContain('1000 ms');
  expect(run.settled()?.error).toBe(reason(ctx));
  expect(jest.getTimerCount()).toBe(0);
});

test('timeout - the limit is cut to what the request deadline has left', async () => {
  const clock = new FakeClock();
  const ctx = makeCtx({ clock, deadlineMs: 500 });
  await clock.advance(200); // earlier attempts used 200 ms of the request's 500
  const run = start(ctx, () => hang(ctx));
  jest.advanceTimersByTime(299);
  expect(ctx.attempt.signal.aborted).toBe(false);
  jest.advanceTimersByTime(1);
  expect(ctx.attempt.signal.aborted).toBe(true);
  await run.done;
  // The request's deadline was the shorter limit, so that is the deadline that passed.
  expect(reason(ctx)).toMatchObject({ code: 'REQUEST_TIMEOUT', status: 504 });
  expect(jest.getTimerCount()).toBe(0);
});

test('timeout - a stream gets firstChunkTimeoutMs for its first chunk', async () => {
  const ctx = makeCtx({ request: { stream: true } });
  const run = start(ctx, () => hang(ctx));
  jest.advanceTimersByTime(499);
  expect(ctx.attempt.signal.aborted).toBe(false);
  jest.advanceTimersByTime(1);
  await run.done;
  expect(reason(ctx)).toMatchObject({ code: 'WORKER_TIMEOUT', outcome: 'ambiguous' });
  expect(reason(ctx).message).toContain('first token');
  expect(ctx.attempt.stalled).toBe('first');
  expect(jest.getTimerCount()).toBe(0);
});

test('timeout - after the first chunk the idle limit applies and every chunk resets it', async () => {
  const ctx = makeCtx({ request: { stream: true } });
  const run = start(ctx, () => hang(ctx));
  jest.advanceTimersByTime(400);
  ctx.attempt.progress(); // first chunk at 400: from now on 200 ms of silence at most
  jest.advanceTimersByTime(150);
  ctx.attempt.progress(); // 550
  jest.advanceTimersByTime(150);
  ctx.attempt.progress(); // 700: past the first-chunk limit of 500, still alive
  jest.advanceTimersByTime(199);
  expect(ctx.attempt.signal.aborted).toBe(false);
  jest.advanceTimersByTime(1); // 900: 200 ms after the last chunk
  expect(ctx.attempt.signal.aborted).toBe(true);
  await run.done;
  expect(reason(ctx).message).toContain('next chunk');
  expect(reason(ctx).code).toBe('STREAM_IDLE_TIMEOUT');
  expect(jest.getTimerCount()).toBe(0);
});

test('timeout - the idle limit is cut to what the request deadline has left at the first chunk', async () => {
  const clock = new FakeClock();
  const ctx = makeCtx({ clock, deadlineMs: 450, request: { stream: true } });
  const run = start(ctx, () => hang(ctx));
  jest.advanceTimersByTime(300);
  await clock.advance(300);
  ctx.attempt.progress(); // 150 ms of the request left, less than idleTimeoutMs
  jest.advanceTimersByTime(149);
  expect(ctx.attempt.signal.aborted).toBe(false);
  jest.advanceTimersByTime(1);
  expect(ctx.attempt.signal.aborted).toBe(true);
  await run.done;
  expect(jest.getTimerCount()).toBe(0);
});

test('timeout - the timer is cleared in finally when the attempt succeeds', async () => {
  const ctx = makeCtx();
  const next = jest.fn(async () => {
    expect(jest.getTimerCount()).toBe(1);
  });
  const run = start(ctx, next);
  await run.done;
  expect(next).toHaveBeenCalledTimes(1);
  expect(run.settled()).toEqual({});
  expect(jest.getTimerCount()).toBe(0);
  jest.advanceTimersByTime(10_000);
  expect(ctx.attempt.signal.aborted).toBe(false);
});

test('timeout - the timer is cleared in finally when the attempt fails, and the error passes through', async () => {
  const ctx = makeCtx({ request: { stream: true } });
  const boom = new Error('dispatch failed');
  const run = start(ctx, async () => {
    ctx.attempt.progress();
    throw boom;
  });
  await run.done;
  expect(run.settled()?.error).toBe(boom);
  expect(jest.getTimerCount()).toBe(0);
  expect(ctx.attempt.signal.aborted).toBe(false);
});

test('timeout - a buffered attempt to a 1.1 worker gets the TTFT limit, then the idle limit between progress messages', async () => {
  const ctx = makeCtx();
  ctx.worker = makeWorker('w1', { progressMs: 50 });
  const run = start(ctx, () => hang(ctx), { ...OPTIONS, attemptTimeoutMs: 60_000 });
  jest.advanceTimersByTime(400);
  ctx.attempt.progress(); // first token at 400 (TTFT limit 500)
  for (let i = 0; i < 20; i++) {
    jest.advanceTimersByTime(150); // slow but steady: 150 ms apart, idle limit 200
    ctx.attempt.progress();
  }
  expect(ctx.attempt.signal.aborted).toBe(false); // 3400 ms: never cut while it produces
  jest.advanceTimersByTime(200);
  expect(ctx.attempt.signal.aborted).toBe(true);
  await run.done;
  expect(ctx.attempt.stalled).toBe('idle');
  expect(jest.getTimerCount()).toBe(0);
});

test('timeout - a producing attempt is cut by the last-resort cap without being marked stalled', async () => {
  const ctx = makeCtx();
  ctx.worker = makeWorker('w1', { progressMs: 50 });
  const clock = ctx.clock as FakeClock;
  // The cap is a point on the clock: timers and the clock's time move together here.
  const tick = (ms: number): void => {
    void clock.advance(ms);
    jest.advanceTimersByTime(ms);
  };
  const run = start(ctx, () => hang(ctx));
  tick(100);
  ctx.attempt.progress();
  for (let t = 100; t < 900; t += 100) {
    tick(100);
    ctx.attempt.progress();
  }
  expect(ctx.attempt.signal.aborted).toBe(false);
  tick(99);
  expect(ctx.attempt.signal.aborted).toBe(false);
  tick(1); // 1000: attemptTimeoutMs
  expect(ctx.attempt.signal.aborted).toBe(true);
  await run.done;
  expect(reason(ctx).code).toBe('WORKER_TIMEOUT');
  expect(reason(ctx).message).toContain('last-resort');
  expect(ctx.attempt.stalled).toBeUndefined();
  expect(jest.getTimerCount()).toBe(0);
});

test('timeout - a buffered 1.1 attempt that goes silent after its first token fails as stalled (idle)', async () => {
  const ctx = makeCtx();
  ctx.worker = makeWorker('w1', { progressMs: 50 });
  const run = start(ctx, () => hang(ctx));
  jest.advanceTimersByTime(100);
  ctx.attempt.progress();
  jest.advanceTimersByTime(199);
  expect(ctx.attempt.signal.aborted).toBe(false);
  jest.advanceTimersByTime(1);
  await run.done;
  expect(reason(ctx)).toMatchObject({ code: 'WORKER_TIMEOUT', outcome: 'ambiguous' });
  expect(reason(ctx).message).toContain('report progress');
  expect(ctx.attempt.stalled).toBe('idle');
});

test("timeout - the idle limit is never shorter than twice the worker's progress interval", async () => {
  const ctx = makeCtx();
  ctx.worker = makeWorker('w1', { progressMs: 150 });
  const run = start(ctx, () => hang(ctx));
  ctx.attempt.progress();
  jest.advanceTimersByTime(299);
  expect(ctx.attempt.signal.aborted).toBe(false);
  jest.advanceTimersByTime(1);
  expect(ctx.attempt.signal.aborted).toBe(true);
  await run.done;
});

test('timeout - while retries remain, the TTFT limit uses at most deadlineShare of what the request has left', async () => {
  const ctx = makeCtx({ deadlineMs: 600, request: { stream: true } });
  ctx.retriesLeft = 1;
  const run = start(ctx, () => hang(ctx), { ...OPTIONS, deadlineShare: 0.5 });
  jest.advanceTimersByTime(299);
  expect(ctx.attempt.signal.aborted).toBe(false);
  jest.advanceTimersByTime(1); // 300 = half of 600, not the 500 ms TTFT limit
  expect(ctx.attempt.signal.aborted).toBe(true);
  await run.done;
  // A reserve for the retry is not the deadline: the worker was quiet, so it is its timeout.
  expect(reason(ctx).code).toBe('WORKER_TIMEOUT');
  expect(ctx.attempt.stalled).toBe('first');
});

test('timeout - on the last attempt the whole rest of the deadline is usable (no reserve)', async () => {
  const ctx = makeCtx({ deadlineMs: 600, request: { stream: true } });
  ctx.retriesLeft = 0;
  const run = start(ctx, () => hang(ctx), { ...OPTIONS, deadlineShare: 0.5 });
  jest.advanceTimersByTime(499);
  expect(ctx.attempt.signal.aborted).toBe(false);
  jest.advanceTimersByTime(1);
  await run.done;
  expect(reason(ctx).code).toBe('WORKER_TIMEOUT');
});

test('timeout - the TTFT limit grows with the prompt (firstChunkMsPer1kPromptTokens)', async () => {
  // ~4000 characters: about 1000 prompt tokens, so 500 + 1000 ms.
  const ctx = makeCtx({ request: { stream: true, messages: [{ role: 'user', content: 'x'.repeat(3976) }] } });
  const run = start(ctx, () => hang(ctx), { ...OPTIONS, attemptTimeoutMs: 5000, firstChunkMsPer1kPromptTokens: 1000 });
  jest.advanceTimersByTime(1499);
  expect(ctx.attempt.signal.aborted).toBe(false);
  jest.advanceTimersByTime(1);
  expect(ctx.attempt.signal.aborted).toBe(true);
  await run.done;
});

test('timeout - a limit cut by the request deadline does not mark the attempt stalled', async () => {
  const ctx = makeCtx({ deadlineMs: 300, request: { stream: true } });
  const run = start(ctx, () => hang(ctx));
  jest.advanceTimersByTime(300);
  await run.done;
  expect(reason(ctx).code).toBe('REQUEST_TIMEOUT');
  expect(ctx.attempt.stalled).toBeUndefined();
});

test('timeout - an idle limit shortened only to keep time for a retry fails over without marking the worker stalled', async () => {
  const clock = new FakeClock();
  const ctx = makeCtx({ clock, deadlineMs: 300, request: { stream: true } });
  ctx.retriesLeft = 1;
  const run = start(ctx, () => hang(ctx), { ...OPTIONS, idleTimeoutMs: 10_000, deadlineShare: 0.5 });
  ctx.attempt.progress(); // first token at once: idle limit min(10000, 0.5 × 300) = 150
  jest.advanceTimersByTime(149);
  expect(ctx.attempt.signal.aborted).toBe(false);
  jest.advanceTimersByTime(1);
  await run.done;
  expect(reason(ctx).code).toBe('STREAM_IDLE_TIMEOUT');
  expect(ctx.attempt.stalled).toBeUndefined();
});

test("timeout - a buffered 1.1 attempt's idle limit never drops below twice its progress interval, even for the retry reserve", async () => {
  const ctx = makeCtx({ deadlineMs: 400 });
  ctx.worker = makeWorker('w1', { progressMs: 100 });
  ctx.retriesLeft = 2;
  const run = start(ctx, () => hang(ctx), { ...OPTIONS, idleTimeoutMs: 10_000, deadlineShare: 0.25 });
  ctx.attempt.progress(); // reserve would say 100; the floor says 200
  jest.advanceTimersByTime(199);
  expect(ctx.attempt.signal.aborted).toBe(false);
  jest.advanceTimersByTime(1);
  await run.done;
});

test('timeout - adaptive: after enough fast attempts a worker gets a learned TTFT limit (floor .. configured)', async () => {
  const clock = new FakeClock();
  const mw = timeout({ ...OPTIONS, firstChunkTimeoutMs: 5000, attemptTimeoutMs: 60_000, adaptive: { enabled: true, factor: 4, floorMs: 50, minSamples: 3 } });
  for (let i = 0; i < 3; i++) {
    const ctx = makeCtx({ clock, request: { stream: true } });
    ctx.worker = makeWorker('w1');
    await mw(ctx, async () => {
      await clock.advance(10);
      ctx.attempt.firstTokenAt = clock.now();
      ctx.attempt.progress();
    });
  }
  const ctx = makeCtx({ clock, request: { stream: true } });
  ctx.worker = makeWorker('w1');
  let settled = false;
  const run = mw(ctx, () => hang(ctx)).catch(() => (settled = true));
  jest.advanceTimersByTime(49);
  expect(ctx.attempt.signal.aborted).toBe(false);
  jest.advanceTimersByTime(1); // max(floor 50, 4 × 10), not the configured 5000
  expect(ctx.attempt.signal.aborted).toBe(true);
  await run;
  expect(settled).toBe(true);
  expect(ctx.attempt.stalled).toBe('first');
  // Another worker has learned nothing: the configured limit applies to it.
  const other = makeCtx({ clock, request: { stream: true } });
  other.worker = makeWorker('w2');
  const run2 = mw(other, () => hang(other)).catch(() => undefined);
  jest.advanceTimersByTime(4999);
  expect(other.attempt.signal.aborted).toBe(false);
  jest.advanceTimersByTime(1);
  await run2;
});
