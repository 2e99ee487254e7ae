/**
 * metrics middleware: outermost, so it must count the request once, by its final status and code,
 * after every retry has run.
 */
import compose from 'koa-compose';
import type { RouteContext } from '../../../src/context';
import { RouterMetrics } from '../../../src/controller/metrics';
import { RetryBudget } from '../../../src/controller/retry-budget';
import { RouterError, toRouterError, type ErrorCode } from '../../../src/errors';
import { metrics } from '../../../middleware/metrics';
import { retry, type RetryOptions } from '../../../middleware/retry';
import { attemptRunner, type RouterEvent } from '../../../src/attempt';
import { Listeners } from '../../../src/listeners';
import { makeCtx, makeWorker } from '../../helpers/context';
import { FakeClock, InstantClock } from '../../helpers/fake-clock';

/** Counter samples by label set, read through the controller's own registry as /metrics would. */
async function requestCounts(m: RouterMetrics): Promise<Array<{ status: string; code: string; value: number }>> {
  const metric = m.register.getSingleMetric('mlx_router_requests_total');
  if (!metric) throw new Error('mlx_router_requests_total is not registered');
  const { values } = await metric.get();
  return values.map((v) => ({ status: String(v.labels.status), code: String(v.labels.code), value: v.value }));
}

async function gaugeValue(m: RouterMetrics, name: string): Promise<number> {
  const metric = m.register.getSingleMetric(name);
  if (!metric) throw new Error(`${name} is not registered`);
  const { values } = await metric.get();
  return values[0]?.value ?? 0;
}

const retryOptions: Partial<RetryOptions> = {
  retryOnErrors: ['WORKER_UNAVAILABLE', 'WORKER_OVERLOADED', 'WORKER_TIMEOUT', 'WORKER_ERROR'],
};

/**
 * The real attempt runner over a scripted worker: attempt n goes to worker w<n>, takes 10 ms and
 * ends as script[n - 1] says (null = success).
 */
function scriptedRunner(clock: FakeClock, script: Array<ErrorCode | null>, events?: Listeners<RouterEvent>) {
  return attemptRunner(
    async (ctx) => {
      const n = ctx.attempt.number;
      ctx.worker = makeWorker(`w${n}`);
      await clock.advance(10);
      const code = script[n - 1] ?? null;
      if (code !== null) throw new RouterError(code, `scripted ${code}`, { worker: ctx.worker.id });
    },
    { events },
  );
}

function chain(m: RouterMetrics, clock: FakeClock, script: Array<ErrorCode | null>) {
  const events = new Listeners<RouterEvent>();
  return compose<RouteContext>([
    metrics({}, { metrics: m, clock, events }),
    retry(retryOptions, { clock, budget: new RetryBudget({ maxTokens: 10, tokenRatio: 0.1 }), random: () => 0.5 }, scriptedRunner(clock, script, events)),
  ]);
}

async function counterValues(m: RouterMetrics, name: string): Promise<Record<string, number>> {
  const metric = m.register.getSingleMetric(name);
  if (!metric) throw new Error(`${name} is not registered`);
  const { values } = await metric.get();
  return Object.fromEntries(values.map((v) => [Object.values(v.labels).join(',') || '-', v.value]));
}

test('metrics - observes attempt events: attempts by outcome, retries and timeouts by kind', async () => {
  const m = new RouterMetrics();
  const clock = new InstantClock();
  await chain(m, clock, ['WORKER_ERROR', 'WORKER_TIMEOUT', null])(makeCtx({ clock }));
  expect(await counterValues(m, 'mlx_router_attempts_total')).toEqual({ worker_failure: 1, ambiguous: 1, success: 1 });
  expect(await counterValues(m, 'mlx_router_retries_total')).toEqual({ '-': 2 });
  expect(await counterValues(m, 'mlx_router_timeouts_total')).toEqual({ attempt: 1 });
});

test('metrics - without the metrics middleware the same attempts touch no metric', async () => {
  const m = new RouterMetrics();
  const clock = new InstantClock();
  const events = new Listeners<RouterEvent>();
  const runner = scriptedRunner(clock, ['WORKER_ERROR', null], events);
  const mw = retry(retryOptions, { clock, budget: new RetryBudget({ maxTokens: 10, tokenRatio: 0.1 }), random: () => 0.5 }, runner);
  const ctx = makeCtx({ clock });
  await mw(ctx, () => Promise.resolve());
  expect(ctx.attempts.map((a) => a.outcome)).toEqual(['worker_failure', 'success']);
  expect(events.size).toBe(0);
  const text = await m.register.metrics();
  expect(text).not.toMatch(/^mlx_router_(attempts|retries|timeouts|requests)_total\{?.* [1-9]/m);
});

test('metrics - counts one 200 after a retry that succeeded, not the failed attempt', async () => {
  const m = new RouterMetrics();
  const clock = new InstantClock();
  const ctx = makeCtx({ clock });
  await chain(m, clock, ['WORKER_ERROR', null])(ctx);
  expect(ctx.attempts).toHaveLength(2);
  expect(await requestCounts(m)).toEqual([{ status: '200', code: '', value: 1 }]);
});

test('metrics - counts the final 502 ALL_RETRIES_EXHAUSTED after all retries, and rethrows it', async () => {
  const m = new RouterMetrics();
  const clock = new InstantClock();
  const ctx = makeCtx({ clock });
  await expect(chain(m, clock, ['WORKER_ERROR', 'WORKER_TIMEOUT', 'WORKER_ERROR'])(ctx)).rejects.toMatchObject({ code: 'ALL_RETRIES_EXHAUSTED', status: 502 });
  expect(ctx.attempts).toHaveLength(3);
  expect(await requestCounts(m)).toEqual([{ status: '502', code: 'ALL_RETRIES_EXHAUSTED', value: 1 }]);
});

test('metrics - sets totalDurationMs to the whole request, backoff included', async () => {
  const m = new RouterMetrics();
  const clock = new InstantClock();
  const ctx = makeCtx({ clock });
  const started = clock.now();
  await chain(m, clock, ['WORKER_ERROR', null])(ctx);
  // Two attempts of 10 ms plus one backoff of 0.5 × 100 ms (stub random 0.5).
  expect(clock.sleeps).toEqual([50]);
  expect(ctx.metrics.totalDurationMs).toBe(clock.now() - started);
  expect(ctx.metrics.totalDurationMs).toBe(70);
});

test('metrics - in-flight gauge is 1 during the request and back to 0 after success and after failure', async () => {
  const m = new RouterMetrics();
  const clock = new FakeClock();
  const seen: number[] = [];
  const mw = metrics({}, { metrics: m, clock });
  await mw(makeCtx({ clock }), async () => {
    seen.push(await gaugeValue(m, 'mlx_router_in_flight_requests'));
  });
  expect(await gaugeValue(m, 'mlx_router_in_flight_requests')).toBe(0);
  await expect(
    mw(makeCtx({ clock }), async () => {
      seen.push(await gaugeValue(m, 'mlx_router_in_flight_requests'));
      throw new RouterError('NO_WORKERS_AVAILABLE', 'none');
    }),
  ).rejects.toMatchObject({ code: 'NO_WORKERS_AVAILABLE' });
  expect(seen).toEqual([1, 1]);
  expect(await gaugeValue(m, 'mlx_router_in_flight_requests')).toBe(0);
});

test('metrics - rethrows the same RouterError and counts it by its status and code', async () => {
  const m = new RouterMetrics();
  const clock = new FakeClock();
  const err = new RouterError('MODEL_NOT_FOUND', 'no such model');
  const next = jest.fn(async () => {
    throw err;
  });
  await expect(metrics({}, { metrics: m, clock })(makeCtx({ clock }), next)).rejects.toBe(err);
  expect(next).toHaveBeenCalledTimes(1);
  expect(await requestCounts(m)).toEqual([{ status: '404', code: 'MODEL_NOT_FOUND', value: 1 }]);
});

test('metrics - a plain Error becomes a 500 INTERNAL_ERROR that keeps the original as cause', async () => {
  const m = new RouterMetrics();
  const clock = new FakeClock();
  const boom = new Error('boom');
  const caught = await metrics({}, { metrics: m, clock })(makeCtx({ clock }), async () => {
    throw boom;
  }).then(
    () => undefined,
    (e: unknown) => toRouterError(e),
  );
  expect(caught).toMatchObject({ code: 'INTERNAL_ERROR', status: 500 });
  expect(caught?.cause).toBe(boom);
  expect(await requestCounts(m)).toEqual([{ status: '500', code: 'INTERNAL_ERROR', value: 1 }]);
});

test('metrics - observes the duration histogram once per request in seconds', async () => {
  const m = new RouterMetrics();
  const clock = new FakeClock();
  await metrics({}, { metrics: m, clock })(makeCtx({ clock }), async () => {
    await clock.advance(250);
  });
  const { values } = await m.duration.get();
  const count = values.find((v) => v.metricName === 'mlx_router_request_duration_seconds_count');
  const sum = values.find((v) => v.metricName === 'mlx_router_request_duration_seconds_sum');
  expect(count?.value).toBe(1);
  expect(sum?.value).toBeCloseTo(0.25, 6);
});
