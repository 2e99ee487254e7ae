/** priority middleware: straight through when a slot is free, weighted round robin under saturation, early 503. */
import { priority } from '../../../middleware/priority';
import type { RouteContext } from '../../../src/context';
import type { RouterError } from '../../../src/errors';
import type { ClientKey, RouterInstruments, WorkerDirectory, WorkerInfo } from '../../../src/types';
import { makeCtx, makeWorker } from '../../helpers/context';
import { FakeClock } from '../../helpers/fake-clock';

/** The registry as the middleware sees it: one list of workers and a change signal. */
class FakeDirectory {
  private waiters = new Set<() => void>();
  constructor(readonly workers: WorkerInfo[]) {}
  forModel(): WorkerInfo[] {
    return this.workers;
  }
  waitForChange(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        this.waiters.delete(done);
        resolve();
      };
      if (signal.aborted) return resolve();
      this.waiters.add(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }
  change(): void {
    for (const w of [...this.waiters]) w();
  }
  get watching(): number {
    return this.waiters.size;
  }
}

const tick = () => new Promise((r) => setImmediate(r));

function setup(workers: WorkerInfo[], options: Parameters<typeof priority>[0] = {}) {
  const clock = new FakeClock();
  const dir = new FakeDirectory(workers);
  const queued = { inc: jest.fn(), dec: jest.fn() };
  const shedEarly = { inc: jest.fn() };
  const metrics = { queued, shedEarly } as unknown as RouterInstruments;
  const mw = priority({ weights: { high: 3, low: 1 }, defaultClass: 'low', waitMs: 60_000, ...options }, { registry: dir as unknown as WorkerDirectory, clock, metrics });
  return { clock, dir, mw, queued, shedEarly };
}

function ctxOf(clock: FakeClock, workers: WorkerInfo[], cls?: string, id = 'req'): RouteContext {
  const ctx = makeCtx({ clock, candidates: workers, deadlineMs: 120_000 });
  if (cls) (ctx as { client?: ClientKey }).client = { id: `key-${cls}`, rpm: 0, tpm: 0, concurrency: 0, priority: cls, admin: false };
  (ctx as { requestId: string }).requestId = id;
  return ctx;
}

/** What select + dispatch do: take the worker's slot, hold it until released. */
function slotTaker(w: WorkerInfo, order: string[], releases: Map<string, () => void>) {
  return (ctx: RouteContext) => async (): Promise<void> => {
    w.outstanding++;
    ctx.worker = w;
    order.push(ctx.requestId);
    await new Promise<void>((r) => releases.set(ctx.requestId, r));
    w.outstanding--;
  };
}

test('priority - with a free slot and nobody waiting the request goes straight on', async () => {
  const w = makeWorker('w1', { maxConcurrent: 2 });
  const { clock, mw, dir } = setup([w]);
  const next = jest.fn(async () => undefined);
  await mw(ctxOf(clock, [w]), next);
  expect(next).toHaveBeenCalledTimes(1);
  expect(dir.watching).toBe(0);
});

test('priority - without candidates (all offline) it leaves the waiting to select', async () => {
  const { clock, mw } = setup([]);
  const next = jest.fn(async () => undefined);
  await mw(ctxOf(clock, []), next);
  expect(next).toHaveBeenCalledTimes(1);
});

test('priority - under saturation free slots go by weighted round robin: high first, low never starves', async () => {
  const w = makeWorker('w1', { maxConcurrent: 1 });
  const { clock, mw, dir, queued } = setup([w]);
  const order: string[] = [];
  const releases = new Map<string, () => void>();
  const take = slotTaker(w, order, releases);
  const runs: Array<Promise<void>> = [];
  const start = (cls: string, id: string): void => {
    const ctx = ctxOf(clock, [w], cls, id);
    runs.push(mw(ctx, take(ctx)));
  };
  start('low', 'busy');
  await tick();
  expect(order).toEqual(['busy']);
  // The low class floods first, then high requests arrive.
  for (let i = 0; i < 6; i++) start('low', `low${i}`);
  for (let i = 0; i < 6; i++) start('high', `high${i}`);
  await tick();
  expect(order).toEqual(['busy']);
  expect(queued.inc).toHaveBeenCalledTimes(12);
  // Free one slot at a time.
  for (let served = 1; served <= 12; served++) {
    releases.get(order[order.length - 1])!();
    await tick();
    dir.change();
    await tick();
    expect(order).toHaveLength(served + 1);
  }
  const served = order.slice(1);
  // Weights 3:1 — of the first 8 grants, 6 are high and 2 low; low progresses while high waits.
  const firstEight = served.slice(0, 8);
  expect(firstEight.filter((id) => id.startsWith('high'))).toHaveLength(6);
  expect(firstEight.filter((id) => id.startsWith('low'))).toHaveLength(2);
  expect(served.indexOf('low0')).toBeLessThan(served.indexOf('high5'));
  // Within a class, first come first served.
  expect(served.filter((id) => id.startsWith('low'))).toEqual(['low0', 'low1', 'low2', 'low3', 'low4', 'low5']);
  releases.get(order[order.length - 1])!();
  await Promise.all(runs);
  expect(queued.dec).toHaveBeenCalledTimes(12);
  expect(dir.watching).toBe(0);
});

test('priority - a request whose predicted wait exceeds what it may wait gets 503 at once, Retry-After the prediction', async () => {
  const w = makeWorker('w1', { maxConcurrent: 1 });
  const { clock, mw, dir, shedEarly } = setup([w], { waitMs: 2500 });
  // Learn the slot-holding time: one request holding its slot for 1000 ms.
  const first = ctxOf(clock, [w], 'low', 'learn');
  await mw(first, async () => {
    first.worker = w;
    await clock.advance(1000);
  });
  const order: string[] = [];
  const releases = new Map<string, () => void>();
  const take = slotTaker(w, order, releases);
  const runs: Array<Promise<unknown>> = [];
  const start = (cls: string, id: string): Promise<void> => {
    const ctx = ctxOf(clock, [w], cls, id);
    const p = mw(ctx, take(ctx));
    runs.push(p.catch(() => undefined));
    return p;
  };
  void start('low', 'busy');
  await tick();
  // Waits of about 1 s and 2 s: within 2.5 s.
  void start('low', 'q1');
  void start('low', 'q2');
  await tick();
  // A third low waiter would wait about 3 s > 2.5 s: refused at once.
  const err = await start('low', 'q3').then(
    () => {
      throw new Error('expected 503');
    },
    (e: RouterError) => e,
  );
  expect(err.code).toBe('NO_WORKERS_AVAILABLE');
  expect(err.retryAfterMs).toBe(3000);
  expect(err.retryAfterSeconds()).toBe(3);
  expect(shedEarly.inc).toHaveBeenCalledWith({ class: 'low' });
  // A high request goes ahead of the low ones: it waits 1 s at most, so it queues.
  void start('high', 'h1');
  await tick();
  expect(shedEarly.inc).toHaveBeenCalledTimes(1);
  for (let i = 0; i < 3; i++) {
    releases.get(order[order.length - 1])!();
    await tick();
    dir.change();
    await tick();
  }
  expect(order).toEqual(['busy', 'h1', 'q1', 'q2']);
  releases.get('q2')!();
  await Promise.all(runs);
});

test('priority - a waiter ends at its wait limit with 503, and at once when its attempt aborts', async () => {
  const w = makeWorker('w1', { maxConcurrent: 1, outstanding: 1 });
  const { clock, mw, dir, queued } = setup([w], { waitMs: 30 });
  const next = jest.fn(async () => undefined);
  await expect(mw(ctxOf(clock, [w], 'high'), next)).rejects.toMatchObject({ code: 'NO_WORKERS_AVAILABLE' });
  const ctx = ctxOf(clock, [w], 'high');
  const p = mw(ctx, next);
  ctx.attempt.abort(new Error('client gone'));
  await expect(p).rejects.toThrow('client gone');
  expect(next).not.toHaveBeenCalled();
  expect(queued.inc).toHaveBeenCalledTimes(2);
  expect(queued.dec).toHaveBeenCalledTimes(2);
  await tick();
  expect(dir.watching).toBe(0);
});

test('priority - a class it does not know is the default class', async () => {
  const w = makeWorker('w1', { maxConcurrent: 1, outstanding: 1 });
  const { clock, mw, queued } = setup([w], { waitMs: 10 });
  await expect(mw(ctxOf(clock, [w], 'gold'), async () => undefined)).rejects.toMatchObject({ code: 'NO_WORKERS_AVAILABLE' });
  expect(queued.inc).toHaveBeenCalledWith({ class: 'low' });
});
