import type { Middleware, RouteContext } from '../src/context';
import type { BreakerBook } from '../src/controller/breakers';
import type { WorkerRegistry } from '../src/controller/registry';
import { countsAgainstWorker, RouterError, toRouterError } from '../src/errors';

export interface HealthOptions {
  /** Whether breakers are in use (cluster.requestRouting.circuitBreaker.enabled, default true). */
  breakerEnabled: boolean;
}

export interface HealthDeps {
  breakers: BreakerBook;
  registry: WorkerRegistry;
}

const TIMEOUT_CODES: ReadonlySet<string> = new Set(['WORKER_TIMEOUT', 'STREAM_IDLE_TIMEOUT', 'REQUEST_TIMEOUT']);

/**
 * What counts against a worker: errors, disconnects, broken streams, and timeouts only when the
 * worker went quiet (no first token within its limit, silence mid-answer: `ctx.attempt.stalled`).
 * A slow worker that keeps producing is never blamed for a deadline or a cap, and a request the
 * client cancelled never counts.
 */
export function countsAgainst(err: RouterError, ctx: Pick<RouteContext, 'attempt'>): boolean {
  if (!countsAgainstWorker(err.outcome)) return false;
  return !TIMEOUT_CODES.has(err.code) || ctx.attempt.stalled !== undefined;
}

/**
 * health: records the attempt's outcome, by outcome class, where routing decisions read it.
 * Takes the breaker's half-open probe permit before dispatch (so exactly `halfOpenPermits` probes
 * go out); success and counted failures (a quiet worker's timeouts, worker failures, broken streams; see
 * countsAgainst) go to the breaker; caller errors, overload rejections and cancellations only release the permit; "no
 * responders" marks the worker offline at once.
 */
export function health(options: HealthOptions, deps: HealthDeps): Middleware {
  return async function health(ctx: RouteContext, next): Promise<void> {
    const worker = ctx.worker;
    if (!worker) return next();
    const id = worker.id;
    const ticket = options.breakerEnabled ? deps.breakers.ticket(id) : undefined;
    if (options.breakerEnabled && !deps.breakers.acquire(id)) {
      // Another request took the last half-open permit between filter and dispatch.
      // Never delivered: retried at once on another worker, and not counted against this one.
      throw new RouterError('WORKER_UNAVAILABLE', `worker ${id} is half-open and its probe permits are taken`, {
        outcome: 'not_delivered',
        worker: id,
      });
    }
    try {
      await next();
      if (options.breakerEnabled) deps.breakers.success(id, ticket);
    } catch (e) {
      const err = toRouterError(e);
      // No responders: nobody listens on its subject any more, so it is offline for everyone now.
      // A refusal the worker sent itself (draining, engine down) is not that: it is alive and
      // finishing other work, and its heartbeat already takes it out of selection.
      if (err.outcome === 'not_delivered' && !err.fromWorker) deps.registry.markOffline(id, `not delivered: ${err.message}`);
      if (options.breakerEnabled) {
        if (countsAgainst(err, ctx)) {
          if (deps.breakers.failure(id, ticket)) {
            ctx.metrics.circuitBreakerTrips++;
            ctx.log.warn({ worker: id, code: err.code }, 'circuit breaker opened');
          }
        } else {
          deps.breakers.release(id, ticket);
        }
      }
      throw err;
    }
  };
}
