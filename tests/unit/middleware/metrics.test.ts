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
import { makeCtx } from '../../helpers/context';
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

const retryOptions: RetryOptions = {
  enabled: true,
  maxRetries: 2,
  retryDelayMs: 100,
  maxRetryDelayMs: 1000,
  minAttemptMs: 50,
  retryOnErrors: ['WORKER_UNAVAILABLE', 'WORKER_OVERLOADED', 'WORKER_TIMEOUT', 'WORKER_ERROR'],
};

/** ctx.runAttempt that fails with the given codes in turn (null = success), recording attempts like the assembler. */
function scriptAttempts(ctx: RouteContext, clock: FakeClock, script: Array<ErrorCode | null>): void {
  ctx.runAttempt = async () => {
    const n = ctx.attempts.length;
    const worker = `w${n + 1}`;
    await clock.advance(10);
    const code = script[n] ?? null;
    if (code === null) {
      ctx.attempts.push({ attempt: n + 1, worker, outcome: 'success', code: null, durationMs: 10 });
      ctx.metrics.selectedWorker = worker;
      return;
    }
    const err = new RouterError(code, `scripted ${code}`, { worker });
    ctx.attempts.push({ attempt: n + 1, worker, outcome: err.outcome, code, durationMs: 10 });
    throw err;
  };
}

function chain(m: RouterMetrics, clock: FakeClock) {
  return compose<RouteContext>([
    metrics({}, { metrics: m, clock }),
    retry(retryOptions, { clock, budget: new RetryBudget({ maxTokens: 10, tokenRatio: 0.1 }), random: () => 0.5 }),
  ]);
}

test('metrics - counts one 200 after a retry that succeeded, not the failed attempt', async () => {
  const m = new RouterMetrics();
  const clock = new InstantClock();
  const ctx = makeCtx({ clock });
  scriptAttempts(ctx, clock, ['WORKER_ERROR', null]);
  await chain(m, clock)(ctx);
  expect(ctx.attempts).toHaveLength(2);
  expect(await requestCounts(m)).toEqual([{ status: '200', code: '', value: 1 }]);
});

test('metrics - counts the final 502 ALL_RETRIES_EXHAUSTED after all retries, and rethrows it', async () => {
  const m = new RouterMetrics();
  const clock = new InstantClock();
  const ctx = makeCtx({ clock });
  scriptAttempts(ctx, clock, ['WORKER_ERROR', 'WORKER_TIMEOUT', 'WORKER_ERROR']);
  await expect(chain(m, clock)(ctx)).rejects.toMatchObject({ code: 'ALL_RETRIES_EXHAUSTED', status: 502 });
  expect(ctx.attempts).toHaveLength(3);
  expect(await requestCounts(m)).toEqual([{ status: '502', code: 'ALL_RETRIES_EXHAUSTED', value: 1 }]);
});

test('metrics - sets totalDurationMs to the whole request, backoff included', async () => {
  const m = new RouterMetrics();
  const clock = new InstantClock();
  const ctx = makeCtx({ clock });
  scriptAttempts(ctx, clock, ['WORKER_ERROR', null]);
  const started = clock.now();
  await chain(m, clock)(ctx);
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
