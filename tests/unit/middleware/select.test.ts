/** select middleware: strategies, untried-first, sticky sessions, empty pool. */
import type { RouteContext } from '../../../src/context';
import type { WorkerInfo } from '../../../src/controller/registry';
import type { RouterError } from '../../../src/errors';
import { p2cScore, saturated, select } from '../../../middleware/select';
import { rendezvousPick } from '../../../src/rendezvous';
import { makeCtx, makeWorker } from '../../helpers/context';

/** Runs one selection on a fresh context and returns the chosen worker's id. */
async function pick(mw: ReturnType<typeof select>, candidates: WorkerInfo[], patch: (ctx: RouteContext) => void = () => undefined): Promise<string> {
  const ctx = makeCtx({ candidates });
  patch(ctx);
  const next = jest.fn(async () => undefined);
  await mw(ctx, next);
  expect(next).toHaveBeenCalledTimes(1);
  expect(ctx.metrics.selectedWorker).toBe(ctx.worker?.id);
  return ctx.worker!.id;
}

/** A random source that returns the given values in turn. */
function sequence(...values: number[]): () => number {
  let i = 0;
  return () => {
    if (i >= values.length) throw new Error('random called more often than expected');
    return values[i++];
  };
}

function failedOn(ctx: RouteContext, ...ids: string[]): void {
  for (const id of ids) ctx.attempts.push({ attempt: ctx.attempts.length + 1, worker: id, outcome: 'worker_failure', code: 'WORKER_ERROR', durationMs: 1 });
}

describe('round-robin', () => {
  test('select - round-robin rotates over the workers in id order', async () => {
    const mw = select({ strategy: 'round-robin' });
    const pool = () => [makeWorker('w3'), makeWorker('w1'), makeWorker('w2')];
    const picks: string[] = [];
    for (let i = 0; i < 6; i++) picks.push(await pick(mw, pool()));
    expect(picks).toEqual(['w1', 'w2', 'w3', 'w1', 'w2', 'w3']);
  });

  test('select - round-robin ignores load', async () => {
    const mw = select({ strategy: 'round-robin' });
    const pool = () => [makeWorker('w1', { outstanding: 5 }), makeWorker('w2')];
    expect([await pick(mw, pool()), await pick(mw, pool())]).toEqual(['w1', 'w2']);
  });
});

describe('least-outstanding', () => {
  test('select - least-outstanding picks the worker with the fewest outstanding requests', async () => {
    const mw = select({ strategy: 'least-outstanding' });
    const pool = [makeWorker('w1', { outstanding: 3 }), makeWorker('w2', { outstanding: 1 }), makeWorker('w3', { outstanding: 2 })];
    expect(await pick(mw, pool)).toBe('w2');
  });

  test("select - least-outstanding counts other controllers' requests as of the last heartbeat", async () => {
    const mw = select({ strategy: 'least-outstanding' });
    // Own counts alone would pick w1 (1 < 2); with the others' 3 requests w1 carries 4.
    const pool = [makeWorker('w1', { outstanding: 1, foreignInFlight: 3 }), makeWorker('w2', { outstanding: 2, foreignInFlight: 0 })];
    expect(await pick(mw, pool)).toBe('w2');
  });
});

describe('p2c', () => {
  // Scores (outstanding + 1) × latency: w1 100, w2 10, w3 50.
  const pool = () => [makeWorker('w1', { latencyMs: 100 }), makeWorker('w2', { latencyMs: 10 }), makeWorker('w3', { latencyMs: 50 })];

  test('select - p2c compares two distinct random workers and takes the lower score', async () => {
    // i = floor(0 × 3) = 0 (w1); j = floor(0 × 2) = 0, bumped past i to 1 (w2).
    expect(await pick(select({ strategy: 'p2c' }, { random: sequence(0, 0) }), pool())).toBe('w2');
    // i = 2 (w3); j = floor(0.1 × 2) = 0 (w1): w3 scores 50 < 100.
    expect(await pick(select({ strategy: 'p2c' }, { random: sequence(0.9, 0.1) }), pool())).toBe('w3');
    // i = 0 (w1); j = floor(0.9 × 2) = 1, bumped to 2 (w3).
    expect(await pick(select({ strategy: 'p2c' }, { random: sequence(0.1, 0.9) }), pool())).toBe('w3');
  });

  test('select - p2c counts the controller in-flight requests in the score', async () => {
    const busy = () => [makeWorker('w1', { latencyMs: 10, outstanding: 9 }), makeWorker('w2', { latencyMs: 50 })];
    expect(p2cScore(busy()[0])).toBe(100);
    expect(p2cScore(busy()[1])).toBe(50);
    expect(await pick(select({ strategy: 'p2c' }, { random: sequence(0, 0) }), busy())).toBe('w2');
  });

  test('select - p2c never compares a worker with itself', async () => {
    const two = () => [makeWorker('w1', { latencyMs: 99 }), makeWorker('w2', { latencyMs: 10 })];
    // Both draws land on index 0 (the slow w1); the second is bumped to w2, so the fast one wins.
    expect(await pick(select({ strategy: 'p2c' }, { random: sequence(0, 0) }), two())).toBe('w2');
  });
});

describe('untried, sticky, saturation', () => {
  test('select - prefers a worker this request has not tried yet, even when it is busier', async () => {
    const mw = select({ strategy: 'least-outstanding' });
    const pool = [makeWorker('w1'), makeWorker('w2', { outstanding: 5 })];
    expect(await pick(mw, pool, (ctx) => failedOn(ctx, 'w1'))).toBe('w2');
  });

  test('select - returns to tried workers when every candidate was tried', async () => {
    const mw = select({ strategy: 'least-outstanding' });
    const pool = [makeWorker('w1', { outstanding: 2 }), makeWorker('w2', { outstanding: 1 })];
    expect(await pick(mw, pool, (ctx) => failedOn(ctx, 'w1', 'w2'))).toBe('w2');
  });

  test('select - honours the sticky worker over the strategy when it is a candidate and not saturated', async () => {
    const mw = select({ strategy: 'least-outstanding' });
    const pool = [makeWorker('w1'), makeWorker('w2', { outstanding: 3 })];
    expect(await pick(mw, pool, (ctx) => (ctx.stickyWorker = 'w2'))).toBe('w2');
  });

  test('select - ignores a sticky worker that is not in the pool', async () => {
    const mw = select({ strategy: 'least-outstanding' });
    const pool = [makeWorker('w1', { outstanding: 1 }), makeWorker('w2')];
    expect(await pick(mw, pool, (ctx) => (ctx.stickyWorker = 'w9'))).toBe('w2');
  });

  test('select - skips a saturated sticky worker', async () => {
    const mw = select({ strategy: 'least-outstanding' });
    const pool = [makeWorker('w1', { outstanding: 8, maxConcurrent: 8 }), makeWorker('w2', { outstanding: 3 })];
    expect(await pick(mw, pool, (ctx) => (ctx.stickyWorker = 'w1'))).toBe('w2');
  });

  test('select - skips a sticky worker this request already failed on', async () => {
    const mw = select({ strategy: 'least-outstanding' });
    const pool = [makeWorker('w1'), makeWorker('w2', { outstanding: 3 })];
    expect(
      await pick(mw, pool, (ctx) => {
        ctx.stickyWorker = 'w1';
        failedOn(ctx, 'w1');
      }),
    ).toBe('w2');
  });

  test('select - requests of other controllers count towards saturation, and a free worker wins', async () => {
    const full = makeWorker('w1', { outstanding: 5, foreignInFlight: 3, maxConcurrent: 8 });
    expect(saturated(full)).toBe(true);
    expect(saturated(makeWorker('w2', { outstanding: 7, maxConcurrent: 8 }))).toBe(false);
    const mw = select({ strategy: 'round-robin' });
    expect(await pick(mw, [full, makeWorker('w2')])).toBe('w2');
    expect(await pick(mw, [full, makeWorker('w2')])).toBe('w2');
  });

  test('select - when every worker is saturated it still picks one (the worker answers overloaded)', async () => {
    const mw = select({ strategy: 'least-outstanding' });
    const pool = [makeWorker('w1', { outstanding: 9, maxConcurrent: 8 }), makeWorker('w2', { outstanding: 8, maxConcurrent: 8 })];
    expect(await pick(mw, pool)).toBe('w2');
  });
});

test('select - an empty pool fails with 503 NO_WORKERS_AVAILABLE and a Retry-After, without calling next', async () => {
  const ctx = makeCtx({ candidates: [] });
  const next = jest.fn(async () => undefined);
  const err = await select({ strategy: 'least-outstanding' })(ctx, next).then(
    () => undefined,
    (e: RouterError) => e,
  );
  expect(next).not.toHaveBeenCalled();
  expect(err).toMatchObject({ code: 'NO_WORKERS_AVAILABLE', status: 503, outcome: 'no_capacity' });
  expect(err?.retryAfterMs).toBeGreaterThan(0);
  expect(ctx.worker).toBeUndefined();
});

test('select - a session whose worker cannot take the attempt falls back by rendezvous hash over the pool, the same on every controller', async () => {
  const mw = select({ strategy: 'round-robin' });
  const pool = ['a', 'b', 'c', 'd'].map((id) => makeWorker(id));
  for (let i = 0; i < 20; i++) {
    const ctx = makeCtx({ candidates: pool, sessionId: `s${i}` });
    ctx.stickyWorker = 'gone';
    await mw(ctx, async () => undefined);
    expect(ctx.worker?.id).toBe(rendezvousPick(`s${i}`, pool, (w) => w.id)?.id);
  }
});

describe('waiting for a free worker', () => {
  /** A directory whose waiters all wake at once when `notify` is called, as the registry's do. */
  function directory(workers: WorkerInfo[]) {
    let waiters: Array<() => void> = [];
    return {
      notify(): void {
        const woken = waiters;
        waiters = [];
        for (const w of woken) w();
      },
      get waiting(): number {
        return waiters.length;
      },
      dir: {
        forModel: () => workers,
        online: () => workers,
        unhealthyFor: () => [],
        knowsModel: () => true,
        knowsContinuation: () => true,
        markOffline: () => undefined,
        waitForChange: (signal: AbortSignal) =>
          new Promise<void>((resolve) => {
            waiters.push(resolve);
            signal.addEventListener('abort', () => resolve(), { once: true });
          }),
      },
    };
  }

  test('select - one freed slot lets exactly one waiter through, however many woke (no check-then-act across an await)', async () => {
    const w = makeWorker('w1', { outstanding: 1, maxConcurrent: 1 });
    const d = directory([w]);
    const mw = select({ strategy: 'least-outstanding', workerWaitTimeoutMs: 60_000 }, { registry: d.dir });
    const passed: number[] = [];
    const ctxs = [0, 1, 2].map(() => makeCtx({ candidates: [w], deadlineMs: 120_000 }));
    // Dispatch takes the slot synchronously when next() is called, as the terminal middleware does.
    const runs = ctxs.map((ctx, i) =>
      mw(ctx, async () => {
        w.outstanding++;
        passed.push(i);
      }).catch(() => undefined),
    );
    await until(() => d.waiting === 3);
    w.outstanding = 0;
    d.notify();
    // Every waiter has re-checked and gone back to waiting, except the one that took the slot.
    await until(() => d.waiting === 2);
    expect(passed).toHaveLength(1);
    expect(w.outstanding).toBe(1);
    // The other two get through one at a time as slots free up.
    w.outstanding = 0;
    d.notify();
    await until(() => passed.length === 2 && d.waiting === 1);
    w.outstanding = 0;
    d.notify();
    await Promise.all(runs);
    expect(passed.sort()).toEqual([0, 1, 2]);
  });
});

/** Lets microtasks and timers run until `cond` holds (bounded). */
async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await new Promise((r) => setImmediate(r));
  expect(cond()).toBe(true);
}
