/** health middleware: records what an attempt's outcome says about the worker's health in the registry. */
import { WorkerRegistry } from '../../../src/controller/registry';
import { RouterError, type ErrorCode } from '../../../src/errors';
import { silentLogger } from '../../../src/logger';
import type { Heartbeat } from '../../../src/protocol';
import { health } from '../../../middleware/health';
import { MODEL, makeCtx } from '../../helpers/context';
import { FakeClock } from '../../helpers/fake-clock';

function heartbeat(id: string): Heartbeat {
  return { type: 'heartbeat', version: 1, id, models: [MODEL], engine: 'synthetic', max_concurrent: 8, in_flight: 0, state: 'ready', interval_ms: 1000 };
}

function setup() {
  const clock = new FakeClock();
  const registry = new WorkerRegistry({ clock, offlineAfterMs: 5000, log: silentLogger() });
  registry.onHeartbeat(heartbeat('w1'));
  const mw = health({}, { registry });
  /** One attempt on w1 that ends as `code` says (null: success). */
  const attempt = async (code: ErrorCode | null) => {
    const ctx = makeCtx({ clock });
    ctx.worker = registry.get('w1');
    const next = jest.fn(async () => {
      if (code) throw new RouterError(code, `scripted ${code}`);
    });
    const outcome = await mw(ctx, next).then(
      () => null,
      (e: RouterError) => e,
    );
    return { ctx, next, outcome };
  };
  return { clock, registry, mw, attempt };
}

test.each<ErrorCode | null>([null, 'WORKER_ERROR', 'WORKER_TIMEOUT', 'STREAM_INTERRUPTED', 'WORKER_OVERLOADED'])(
  'health - never refuses a worker: the attempt runs and its outcome (%s) passes through unchanged',
  async (code) => {
    const s = setup();
    for (let i = 0; i < 10; i++) {
      const { next, outcome } = await s.attempt(code);
      expect(next).toHaveBeenCalledTimes(1);
      expect(outcome?.code ?? null).toBe(code);
    }
    expect(s.registry.forModel(MODEL).map((w) => w.id)).toEqual(['w1']);
  },
);

test('health - WORKER_UNAVAILABLE marks the worker offline in the registry at once', async () => {
  const s = setup();
  expect(s.registry.forModel(MODEL).map((w) => w.id)).toEqual(['w1']);
  const { outcome } = await s.attempt('WORKER_UNAVAILABLE');
  expect(outcome?.code).toBe('WORKER_UNAVAILABLE');
  expect(s.registry.get('w1')?.gone).toBe(true);
  expect(s.registry.forModel(MODEL)).toEqual([]);
});

test('health - other failures leave the worker online', async () => {
  const s = setup();
  await s.attempt('WORKER_TIMEOUT');
  expect(s.registry.forModel(MODEL).map((w) => w.id)).toEqual(['w1']);
});

test('health - without a selected worker it only passes through', async () => {
  const s = setup();
  const ctx = makeCtx({ clock: s.clock });
  const err = new RouterError('NO_WORKERS_AVAILABLE', 'none');
  await expect(
    s.mw(ctx, async () => {
      throw err;
    }),
  ).rejects.toBe(err);
});

test("health - a refusal the worker sent itself (draining) does not mark it offline: it is alive and finishing other work", async () => {
  const s = setup();
  const ctx = makeCtx({ clock: s.clock });
  ctx.worker = s.registry.get('w1');
  const interrupted: string[] = [];
  s.registry.watch(ctx.worker!, (reason) => interrupted.push(reason));
  const refusal = new RouterError('WORKER_UNAVAILABLE', 'worker w1 is shutting down', { worker: 'w1', fromWorker: true });
  await expect(s.mw(ctx, async () => Promise.reject(refusal))).rejects.toBe(refusal);
  expect(s.registry.online().map((w) => w.id)).toEqual(['w1']);
  expect(interrupted).toEqual([]);
});

test('health - WORKER_OVERLOADED from the worker counts it full until its next heartbeat, so select waits for a slot', async () => {
  const s = setup();
  const w = s.registry.get('w1')!;
  w.outstanding = 3;
  const ctx = makeCtx({ clock: s.clock });
  ctx.worker = w;
  await s.mw(ctx, async () => {
    throw new RouterError('WORKER_OVERLOADED', 'full', { worker: 'w1', fromWorker: true });
  }).catch(() => undefined);
  // Its other 5 slots are someone else's: full until a heartbeat says otherwise.
  expect(w.outstanding + w.foreignInFlight).toBe(w.maxConcurrent);
  expect(s.registry.forModel(MODEL).map((x) => x.id)).toEqual(['w1']);
  s.registry.onHeartbeat({ ...heartbeat('w1'), in_flight: 3 });
  expect(w.foreignInFlight).toBe(0);
});

test('health - a WORKER_OVERLOADED that did not come from the worker does not count it full', async () => {
  const s = setup();
  const w = s.registry.get('w1')!;
  const ctx = makeCtx({ clock: s.clock });
  ctx.worker = w;
  await s.mw(ctx, async () => {
    throw new RouterError('WORKER_OVERLOADED', 'forged or local', { worker: 'w1' });
  }).catch(() => undefined);
  expect(w.foreignInFlight).toBe(0);
});
