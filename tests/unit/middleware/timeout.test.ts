/**
 * timeout middleware: it arms real setTimeout timers, so these tests use Jest's fake timers; the
 * request deadline is read from the context's FakeClock.
 */
import type { RouteContext } from '../../../src/context';
import { isRouterError, type RouterError } from '../../../src/errors';
import { timeout, type TimeoutOptions } from '../../../middleware/timeout';
import { makeCtx, makeWorker } from '../../helpers/context';
import { FakeClock } from '../../helpers/fake-clock';

const OPTIONS: TimeoutOptions = { attemptTimeoutMs: 1000, firstChunkTimeoutMs: 500, idleTimeoutMs: 200 };

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

test('timeout - a buffered attempt is aborted with WORKER_TIMEOUT after attemptTimeoutMs, not before', async () => {
  const ctx = makeCtx({ candidates: [] });
  ctx.worker = makeWorker('w1');
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
  expect(reason(ctx).message).toContain('first chunk');
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
