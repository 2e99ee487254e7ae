import type { RouterEvent } from '../src/attempt';
import type { Middleware, RouteContext } from '../src/context';
import { defineMiddleware, type MiddlewareDeps } from '../src/define';
import { toRouterError } from '../src/errors';

export type MetricsOptions = Record<string, never>;

export type MetricsDeps = Pick<MiddlewareDeps, 'metrics' | 'clock'> & Partial<Pick<MiddlewareDeps, 'events'>>;

/** Each deadline's code and its metric label (`first_chunk` for a stream's attempt limit). */
const TIMEOUT_KINDS: Partial<Record<string, string>> = {
  WORKER_TIMEOUT: 'attempt',
  STREAM_IDLE_TIMEOUT: 'idle',
  REQUEST_TIMEOUT: 'total',
};

/**
 * metrics: the one owner of the Prometheus request and attempt metrics. As a middleware, placed
 * outermost, it sees the final outcome after all retries: sets `ctx.metrics.totalDurationMs`,
 * counts the request by status and code, observes the duration histogram and the in-flight gauge,
 * and writes one log line per request. As a listener of the router's events it counts attempts by
 * outcome, retries (attempts after the first) and timeouts by kind. Left out of the pipeline,
 * none of this work is done.
 */
export const metrics = defineMiddleware<MetricsOptions, MetricsDeps>({
  name: 'metrics',
  defaults: {},
  factory(_options, deps): Middleware {
    const m = deps.metrics;
    deps.events?.add((event: RouterEvent) => {
      if (event.type === 'wait-timeout') {
        m.timeouts.inc({ kind: 'wait' });
        return;
      }
      const { record, ctx } = event;
      m.attempts.inc({ outcome: record.outcome });
      if (record.attempt > 1 && !record.hedge) m.retries.inc();
      const kind = record.code === null ? undefined : TIMEOUT_KINDS[record.code];
      if (kind) m.timeouts.inc({ kind: kind === 'attempt' && ctx.stream ? 'first_chunk' : kind });
    });
    return async function metrics(ctx: RouteContext, next): Promise<void> {
      const started = deps.clock.now();
      const stream = ctx.stream ? 'true' : 'false';
      m.inFlight.inc();
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
        m.inFlight.dec();
        m.requests.inc({ status: String(status), code, stream });
        if (ctx.client) m.keyRequests?.inc({ key: ctx.client.id, status: String(status) });
        m.duration.observe({ stream }, ms / 1000);
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
  },
});
