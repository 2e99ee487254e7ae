import type { Clock } from '../src/clock';
import type { Middleware, RouteContext } from '../src/context';
import type { RouterMetrics } from '../src/controller/metrics';
import { toRouterError } from '../src/errors';

export type MetricsOptions = Record<string, never>;

export interface MetricsDeps {
  metrics: RouterMetrics;
  clock: Clock;
}

/**
 * metrics: outermost, so it sees the final outcome after all retries. Sets
 * `ctx.metrics.totalDurationMs`, counts the request by status and code, observes the duration
 * histogram and the in-flight gauge, and writes one log line per request.
 */
export function metrics(_options: MetricsOptions, deps: MetricsDeps): Middleware {
  return async function metrics(ctx: RouteContext, next): Promise<void> {
    const started = deps.clock.now();
    const stream = ctx.stream ? 'true' : 'false';
    deps.metrics.inFlight.inc();
    let status = 200;
    let code = '';
    try {
      await next();
    } catch (e) {
      const err = toRouterError(e);
      status = err.status;
      code = err.code;
      throw err;
    } finally {
      const ms = deps.clock.now() - started;
      ctx.metrics.totalDurationMs = ms;
      deps.metrics.inFlight.dec();
      deps.metrics.requests.inc({ status: String(status), code, stream });
      deps.metrics.duration.observe({ stream }, ms / 1000);
      ctx.log.info(
        {
          status,
          code: code || undefined,
          model: ctx.request.model,
          stream: ctx.stream,
          worker: ctx.metrics.selectedWorker,
          retries: ctx.metrics.retryCount,
          durationMs: Math.round(ms * 100) / 100,
          attempts: ctx.attempts.length > 1 || code ? ctx.attempts : undefined,
        },
        'request finished',
      );
    }
  };
}
