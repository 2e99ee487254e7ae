/** health middleware: records each attempt's outcome, by class, in the breaker book and the registry. */
import { BreakerBook } from '../../../src/controller/breakers';
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

function setup(opts: { failureThreshold?: number; successThreshold?: number; halfOpenPermits?: number; breakerEnabled?: boolean } = {}) {
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
  const registry = new WorkerRegistry({ clock, offlineAfterMs: 5000, log: silentLogger() });
  registry.onHeartbeat(heartbeat('w1'));
  const mw = health({ breakerEnabled: opts.breakerEnabled ?? true }, { breakers, registry });
  /** One attempt on w1 that ends as `code` says (null: success). */
  /** `stalled` says what the timeout middleware saw: the worker went quiet (default for timeouts). */
  const attempt = async (code: ErrorCode | null, stalled: 'first' | 'idle' | 'producing' = 'first') => {
    const ctx = makeCtx({ clock });
    ctx.worker = registry.get('w1');
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
  return { clock, breakers, registry, transitions, mw, attempt };
}

const failures = (s: ReturnType<typeof setup>) => {
  const st = s.breakers.state('w1');
  return st.kind === 'closed' ? st.failures : -1;
};

test.each<[ErrorCode, string]>([
  ['WORKER_ERROR', 'worker_failure'],
  ['WORKER_TIMEOUT', 'ambiguous'],
  ['STREAM_INTERRUPTED', 'committed'],
])('health - %s (%s) counts against the worker breaker', async (code) => {
  const s = setup();
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
])('health - %s (%s) does not count against the worker breaker', async (code) => {
  const s = setup();
  await s.attempt('WORKER_ERROR');
  const { outcome } = await s.attempt(code);
  expect(outcome?.code).toBe(code);
  // The earlier counted failure is neither reset nor increased.
  expect(failures(s)).toBe(1);
});

test('health - a success is recorded and resets the consecutive failure count', async () => {
  const s = setup({ failureThreshold: 3 });
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

test('health - overload rejections never open the breaker however many there are', async () => {
  const s = setup({ failureThreshold: 2 });
  for (let i = 0; i < 10; i++) await s.attempt('WORKER_OVERLOADED');
  expect(s.breakers.state('w1').kind).toBe('closed');
  expect(s.transitions).toEqual([]);
});

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

test.each<[ErrorCode]>([['WORKER_TIMEOUT'], ['STREAM_IDLE_TIMEOUT'], ['REQUEST_TIMEOUT']])(
  'health - %s on an attempt that was still producing (not stalled) never counts against the worker',
  async (code) => {
    const s = setup({ failureThreshold: 1 });
    for (let i = 0; i < 3; i++) {
      const { outcome } = await s.attempt(code, 'producing');
      expect(outcome?.code).toBe(code);
    }
    expect(failures(s)).toBe(0);
    expect(s.transitions).toEqual([]);
  },
);

test('health - a timeout of a worker that went quiet (idle mid-answer) counts', async () => {
  const s = setup({ failureThreshold: 1 });
  await s.attempt('STREAM_IDLE_TIMEOUT', 'idle');
  expect(s.transitions).toEqual(['w1:closed->open']);
});

test('health - a request the client cancelled never counts', async () => {
  const s = setup({ failureThreshold: 1 });
  for (let i = 0; i < 3; i++) await s.attempt('CLIENT_CLOSED_REQUEST');
  expect(failures(s)).toBe(0);
});

test('health - a trip increments ctx.metrics.circuitBreakerTrips only on the failure that opened it', async () => {
  const s = setup({ failureThreshold: 2 });
  const first = await s.attempt('WORKER_ERROR');
  expect(first.ctx.metrics.circuitBreakerTrips).toBe(0);
  const second = await s.attempt('WORKER_ERROR');
  expect(second.ctx.metrics.circuitBreakerTrips).toBe(1);
  expect(s.transitions).toEqual(['w1:closed->open']);
});

test('health - a failed half-open probe reopens the breaker and counts as a trip', async () => {
  const s = setup({ failureThreshold: 1 });
  await s.attempt('WORKER_ERROR');
  await s.clock.advance(1000);
  const probe = await s.attempt('WORKER_TIMEOUT');
  expect(probe.next).toHaveBeenCalledTimes(1);
  expect(probe.ctx.metrics.circuitBreakerTrips).toBe(1);
  expect(s.transitions).toEqual(['w1:closed->open', 'w1:open->half-open', 'w1:half-open->open']);
});

test.each([1, 2])('health - half-open admits exactly %i probe(s); the next is refused as not delivered', async (permits) => {
  const s = setup({ failureThreshold: 1, halfOpenPermits: permits });
  await s.attempt('WORKER_ERROR');
  await s.clock.advance(1000);
  expect(s.breakers.state('w1').kind).toBe('half-open');
  // Probes that are still running hold their permits.
  const releases: Array<() => void> = [];
  const probes = Array.from({ length: permits }, () => {
    const ctx = makeCtx({ clock: s.clock });
    ctx.worker = s.registry.get('w1');
    const next = jest.fn(() => new Promise<void>((resolve) => releases.push(resolve)));
    return { next, done: s.mw(ctx, next) };
  });
  for (const p of probes) expect(p.next).toHaveBeenCalledTimes(1);
  const extra = await s.attempt(null);
  expect(extra.next).not.toHaveBeenCalled();
  expect(extra.outcome).toMatchObject({ code: 'WORKER_UNAVAILABLE', outcome: 'not_delivered', worker: 'w1' });
  for (const release of releases) release();
  await Promise.all(probes.map((p) => p.done));
  // successThreshold 1: the probes closed it.
  expect(s.breakers.state('w1').kind).toBe('closed');
});

test('health - a half-open probe ending in a caller error frees its permit without closing or reopening', async () => {
  const s = setup({ failureThreshold: 1, halfOpenPermits: 1 });
  await s.attempt('WORKER_ERROR');
  await s.clock.advance(1000);
  await s.attempt('REQUEST_VALIDATION_FAILED');
  expect(s.breakers.state('w1')).toMatchObject({ kind: 'half-open', inUse: 0 });
  const next = await s.attempt(null);
  expect(next.next).toHaveBeenCalledTimes(1);
  expect(s.breakers.state('w1').kind).toBe('closed');
});

test('health - with breakers disabled nothing is recorded in the book, but no responders still marks offline', async () => {
  const s = setup({ failureThreshold: 1, breakerEnabled: false });
  await s.attempt('WORKER_ERROR');
  await s.attempt('WORKER_ERROR');
  expect(s.breakers.state('w1')).toEqual({ kind: 'closed', failures: 0 });
  await s.attempt('WORKER_UNAVAILABLE');
  expect(s.registry.get('w1')?.gone).toBe(true);
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
  expect(s.breakers.snapshot()).toEqual([]);
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
