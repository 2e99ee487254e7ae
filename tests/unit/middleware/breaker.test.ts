/** breaker middleware: filters out workers whose breaker refuses traffic, fails fast when none remain. */
import { BreakerBook } from '../../../src/controller/breakers';
import { RouterError, type ErrorCode } from '../../../src/errors';
import { breaker } from '../../../middleware/breaker';
import { makeCtx, makeWorker } from '../../helpers/context';
import { FakeClock } from '../../helpers/fake-clock';

/** A book that opens on the first failure for exactly 1000 ms (stub random 0.5 gives no jitter). */
function setup(halfOpenPermits = 1) {
  const clock = new FakeClock();
  const book = new BreakerBook({ failureThreshold: 1, successThreshold: 1, timeoutMs: 1000, maxTimeoutMs: 60_000, halfOpenPermits, clock, random: () => 0.5 });
  return { clock, book };
}

const workers = () => [makeWorker('w1'), makeWorker('w2'), makeWorker('w3')];

test('breaker - removes workers whose breaker is open and passes the rest on', async () => {
  const { clock, book } = setup();
  book.failure('w2');
  const ctx = makeCtx({ clock, candidates: workers() });
  const next = jest.fn(async () => {
    expect(ctx.candidates.map((w) => w.id)).toEqual(['w1', 'w3']);
  });
  await breaker({ enabled: true }, { breakers: book })(ctx, next);
  expect(next).toHaveBeenCalledTimes(1);
});

test('breaker - removes a half-open worker whose probe permits are all taken', async () => {
  const { clock, book } = setup(1);
  book.failure('w1');
  await clock.advance(1000);
  expect(book.acquire('w1')).toBe(true); // another request holds the only probe
  const ctx = makeCtx({ clock, candidates: workers() });
  await breaker({ enabled: true }, { breakers: book })(ctx, async () => {
    expect(ctx.candidates.map((w) => w.id)).toEqual(['w2', 'w3']);
  });
});

test('breaker - keeps a half-open worker with a free probe permit', async () => {
  const { clock, book } = setup(1);
  book.failure('w1');
  await clock.advance(1000);
  const ctx = makeCtx({ clock, candidates: workers() });
  await breaker({ enabled: true }, { breakers: book })(ctx, async () => {
    expect(ctx.candidates.map((w) => w.id)).toEqual(['w1', 'w2', 'w3']);
  });
});

test('breaker - all open fails fast with CIRCUIT_BREAKER_OPEN and Retry-After = time to the first half-open', async () => {
  const { clock, book } = setup();
  book.failure('w1'); // half-open at t0 + 1000
  await clock.advance(300);
  book.failure('w2'); // half-open at t0 + 1300
  book.failure('w3'); // half-open at t0 + 1300
  await clock.advance(100); // t0 + 400: w1 is the first, 600 ms away
  const ctx = makeCtx({ clock, candidates: workers() });
  const next = jest.fn(async () => undefined);
  const err = await breaker({ enabled: true }, { breakers: book })(ctx, next).then(
    () => undefined,
    (e: RouterError) => e,
  );
  expect(next).not.toHaveBeenCalled();
  expect(err).toMatchObject({ code: 'CIRCUIT_BREAKER_OPEN', status: 503, outcome: 'no_capacity', retryAfterMs: 600 });
  expect(err?.retryAfterSeconds()).toBe(1);
  expect(err?.message).toContain('w1');
});

test('breaker - disabled passes every candidate through, open or not', async () => {
  const { clock, book } = setup();
  for (const w of ['w1', 'w2', 'w3']) book.failure(w);
  const ctx = makeCtx({ clock, candidates: workers() });
  const next = jest.fn(async () => {
    expect(ctx.candidates.map((w) => w.id)).toEqual(['w1', 'w2', 'w3']);
  });
  await breaker({ enabled: false }, { breakers: book })(ctx, next);
  expect(next).toHaveBeenCalledTimes(1);
});

test('breaker - an empty candidate list is left for select to report', async () => {
  const { clock, book } = setup();
  const ctx = makeCtx({ clock, candidates: [] });
  const next = jest.fn(async () => undefined);
  await breaker({ enabled: true }, { breakers: book })(ctx, next);
  expect(next).toHaveBeenCalledTimes(1);
  expect(ctx.candidates).toEqual([]);
});

test('breaker - once the open time passes the worker is offered again without any call in between', async () => {
  const { clock, book } = setup();
  book.failure('w1');
  const mw = breaker({ enabled: true }, { breakers: book });
  await expect(mw(makeCtx({ clock, candidates: [makeWorker('w1')] }), async () => undefined)).rejects.toMatchObject({ code: 'CIRCUIT_BREAKER_OPEN' });
  await clock.advance(1000);
  const next = jest.fn(async () => undefined);
  await mw(makeCtx({ clock, candidates: [makeWorker('w1')] }), next);
  expect(next).toHaveBeenCalledTimes(1);
});

/** The breaker placed after select (ctx.worker already chosen): it admits w1 itself and records the outcome. */
function recording(opts: { failureThreshold?: number; successThreshold?: number; halfOpenPermits?: number } = {}) {
  const clock = new FakeClock();
  const transitions: string[] = [];
  const breakers = new BreakerBook({
    failureThreshold: opts.failureThreshold ?? 3,
    successThreshold: opts.successThreshold ?? 1,
    timeoutMs: 1000,
    maxTimeoutMs: 60_000,
    halfOpenPermits: opts.halfOpenPermits ?? 1,
    clock,
    random: () => 0.5,
    onTransition: (w, from, to) => transitions.push(`${w}:${from}->${to}`),
  });
  const w1 = makeWorker('w1');
  const mw = breaker({}, { breakers });
  /**
   * One attempt on w1 that ends as `code` says (null: success). `stalled` says what the timeout
   * middleware saw: the worker went quiet (the default for timeouts), or it was still producing.
   */
  const attempt = async (code: ErrorCode | null, stalled: 'first' | 'idle' | 'producing' = 'first') => {
    const ctx = makeCtx({ clock });
    ctx.worker = w1;
    const next = jest.fn(async () => {
      if (code && /TIMEOUT/.test(code) && stalled !== 'producing') ctx.attempt.stalled = stalled;
      if (code) throw new RouterError(code, `scripted ${code}`);
    });
    const outcome = await mw(ctx, next).then(
      () => null,
      (e: RouterError) => e,
    );
    return { ctx, next, outcome };
  };
  return { clock, breakers, transitions, mw, attempt, w1 };
}

const failures = (s: ReturnType<typeof recording>) => {
  const st = s.breakers.state('w1');
  return st.kind === 'closed' ? st.failures : -1;
};

test.each<[ErrorCode, string]>([
  ['WORKER_ERROR', 'worker_failure'],
  ['WORKER_TIMEOUT', 'ambiguous'],
  ['STREAM_INTERRUPTED', 'committed'],
])('breaker - records: %s (%s) counts against the worker breaker', async (code) => {
  const s = recording();
  const { outcome } = await s.attempt(code);
  expect(outcome?.code).toBe(code);
  expect(failures(s)).toBe(1);
});

test.each<[ErrorCode, string]>([
  ['REQUEST_VALIDATION_FAILED', 'caller'],
  ['CONTEXT_LENGTH_EXCEEDED', 'caller'],
  ['WORKER_OVERLOADED', 'rejected'],
  ['CLIENT_CLOSED_REQUEST', 'cancelled'],
  ['WORKER_UNAVAILABLE', 'not_delivered'],
])('breaker - records: %s (%s) does not count against the worker breaker', async (code) => {
  const s = recording();
  await s.attempt('WORKER_ERROR');
  const { outcome } = await s.attempt(code);
  expect(outcome?.code).toBe(code);
  // The earlier counted failure is neither reset nor increased.
  expect(failures(s)).toBe(1);
});

test.each<[ErrorCode]>([['WORKER_TIMEOUT'], ['STREAM_IDLE_TIMEOUT'], ['REQUEST_TIMEOUT']])(
  'breaker - records: %s on an attempt that was still producing (not stalled) never counts against the worker',
  async (code) => {
    const s = recording({ failureThreshold: 1 });
    for (let i = 0; i < 3; i++) {
      const { outcome } = await s.attempt(code, 'producing');
      expect(outcome?.code).toBe(code);
    }
    expect(failures(s)).toBe(0);
    expect(s.transitions).toEqual([]);
  },
);

test('breaker - records: a timeout of a worker that went quiet (idle mid-answer) counts', async () => {
  const s = recording({ failureThreshold: 1 });
  await s.attempt('STREAM_IDLE_TIMEOUT', 'idle');
  expect(s.transitions).toEqual(['w1:closed->open']);
});

test('breaker - records: a success is recorded and resets the consecutive failure count', async () => {
  const s = recording({ failureThreshold: 3 });
  await s.attempt('WORKER_ERROR');
  await s.attempt('WORKER_ERROR');
  const { outcome, next } = await s.attempt(null);
  expect(outcome).toBeNull();
  expect(next).toHaveBeenCalledTimes(1);
  expect(failures(s)).toBe(0);
  await s.attempt('WORKER_ERROR');
  await s.attempt('WORKER_ERROR');
  expect(s.breakers.state('w1').kind).toBe('closed');
});

test('breaker - records: overload rejections never open the breaker however many there are', async () => {
  const s = recording({ failureThreshold: 2 });
  for (let i = 0; i < 10; i++) await s.attempt('WORKER_OVERLOADED');
  expect(s.breakers.state('w1').kind).toBe('closed');
  expect(s.transitions).toEqual([]);
});

test('breaker - records: a trip increments ctx.metrics.circuitBreakerTrips only on the failure that opened it', async () => {
  const s = recording({ failureThreshold: 2 });
  const first = await s.attempt('WORKER_ERROR');
  expect(first.ctx.metrics.circuitBreakerTrips).toBe(0);
  const second = await s.attempt('WORKER_ERROR');
  expect(second.ctx.metrics.circuitBreakerTrips).toBe(1);
  expect(s.transitions).toEqual(['w1:closed->open']);
});

test('breaker - records: a failed half-open probe reopens the breaker and counts as a trip', async () => {
  const s = recording({ failureThreshold: 1 });
  await s.attempt('WORKER_ERROR');
  await s.clock.advance(1000);
  const probe = await s.attempt('WORKER_TIMEOUT');
  expect(probe.next).toHaveBeenCalledTimes(1);
  expect(probe.ctx.metrics.circuitBreakerTrips).toBe(1);
  expect(s.transitions).toEqual(['w1:closed->open', 'w1:open->half-open', 'w1:half-open->open']);
});

test.each([1, 2])('breaker - records: half-open admits exactly %i probe(s); the next is refused as not delivered', async (permits) => {
  const s = recording({ failureThreshold: 1, halfOpenPermits: permits });
  await s.attempt('WORKER_ERROR');
  await s.clock.advance(1000);
  expect(s.breakers.state('w1').kind).toBe('half-open');
  // Probes that are still running hold their permits.
  const releases: Array<() => void> = [];
  const probes = Array.from({ length: permits }, () => {
    const ctx = makeCtx({ clock: s.clock });
    ctx.worker = s.w1;
    const next = jest.fn(() => new Promise<void>((resolve) => releases.push(resolve)));
    return { next, done: s.mw(ctx, next) };
  });
  for (const p of probes) expect(p.next).toHaveBeenCalledTimes(1);
  const extra = await s.attempt(null);
  expect(extra.next).not.toHaveBeenCalled();
  expect(extra.outcome).toMatchObject({ code: 'CIRCUIT_BREAKER_OPEN', worker: 'w1' });
  for (const release of releases) release();
  await Promise.all(probes.map((p) => p.done));
  // successThreshold 1: the probes closed it.
  expect(s.breakers.state('w1').kind).toBe('closed');
});

test('breaker - records: a half-open probe ending in a caller error frees its permit without closing or reopening', async () => {
  const s = recording({ failureThreshold: 1, halfOpenPermits: 1 });
  await s.attempt('WORKER_ERROR');
  await s.clock.advance(1000);
  await s.attempt('REQUEST_VALIDATION_FAILED');
  expect(s.breakers.state('w1')).toMatchObject({ kind: 'half-open', inUse: 0 });
  const next = await s.attempt(null);
  expect(next.next).toHaveBeenCalledTimes(1);
  expect(s.breakers.state('w1').kind).toBe('closed');
});

