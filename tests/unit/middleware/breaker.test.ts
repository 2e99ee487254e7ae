/** breaker middleware: filters out workers whose breaker refuses traffic, fails fast when none remain. */
import { BreakerBook } from '../../../src/controller/breakers';
import type { RouterError } from '../../../src/errors';
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
