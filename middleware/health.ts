import type { Middleware, RouteContext } from '../src/context';
import { defineMiddleware, type MiddlewareDeps } from '../src/define';
import { toRouterError } from '../src/errors';

export type HealthOptions = Record<string, never>;

export type HealthDeps = Pick<MiddlewareDeps, 'registry'>;

/**
 * health: records what an attempt's outcome says about the worker's health, where routing reads
 * it: "no responders" (nobody listens on the worker's subject any more) marks the worker offline
 * for everyone at once, until its next heartbeat; WORKER_OVERLOADED from the worker counts it full
 * until then. It never refuses a worker; circuit breakers are the `breaker` middleware's.
 */
export const health = defineMiddleware<HealthOptions, HealthDeps>({
  name: 'health',
  defaults: {},
  factory(_options, deps): Middleware {
    return async function health(ctx: RouteContext, next): Promise<void> {
      try {
        await next();
      } catch (e) {
        const err = toRouterError(e);
        const id = ctx.worker?.id;
        // A refusal the worker sent itself (draining, engine down) is not "no responders": it is
        // alive and finishing other work, and its heartbeat already takes it out of selection.
        if (id && err.outcome === 'not_delivered' && !err.fromWorker) deps.registry.markOffline(id, `not delivered: ${err.message}`);
        // The worker is full with requests we do not know of: wait for a slot rather than be refused again.
        if (id && err.code === 'WORKER_OVERLOADED' && err.fromWorker) deps.registry.markFull?.(id);
        throw err;
      }
    };
  },
});
