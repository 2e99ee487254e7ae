import type { Admission, Middleware, RouteContext } from '../src/context';
import { defineMiddleware, type MiddlewareDeps } from '../src/define';
import { RouterError, toRouterError } from '../src/errors';
import type { BreakerPermit, WorkerInfo } from '../src/types';

export interface BreakerFilterOptions {
  /** When false the middleware passes everything through (cluster.requestRouting.circuitBreaker.enabled, default true). */
  enabled: boolean;
}

export type BreakerFilterDeps = Pick<MiddlewareDeps, 'breakers'>;

/**
 * breaker: the one owner of the per-worker circuit breakers in the chain: allow → take a permit →
 * record the outcome.
 * - allow: removes from `ctx.candidates` every worker whose breaker refuses traffic now (open, or
 *   half-open with all probe permits taken). When none remain it fails fast with
 *   CIRCUIT_BREAKER_OPEN (503) and a Retry-After of the time until the first breaker turns half-open.
 * - permit: installs an admission on the attempt, so the worker `select` chooses takes its permit
 *   right then (a half-open breaker admits exactly `halfOpenPermits` probes); a worker whose last
 *   permit went meanwhile is refused and `select` picks another.
 * - record: the attempt's outcome goes back through the permit; the breaker decides by outcome
 *   class what counts, and counts a timeout only when the worker went quiet (`ctx.attempt.stalled`:
 *   no first token within its limit, or silence mid-answer; see countsAgainst in src/controller/breakers.ts). A trip adds to `ctx.metrics.circuitBreakerTrips`.
 * Placed after `select` it checks and admits the chosen worker itself. Without `breaker` in the
 * pipeline no worker is ever refused for its breaker.
 */
export const breaker = defineMiddleware<BreakerFilterOptions, BreakerFilterDeps>({
  name: 'breaker',
  defaults: { enabled: true },
  fromConfig: (c) => ({ enabled: c.cluster.requestRouting.circuitBreaker.enabled }),
  factory(options, deps): Middleware {
    const { breakers } = deps;
    return async function breaker(ctx: RouteContext, next): Promise<void> {
      if (!options.enabled) return next();
      const gate = new BreakerAdmission(breakers);
      if (ctx.worker) {
        // After select: the worker is chosen already.
        if (!gate.admit(ctx.worker)) {
          const id = ctx.worker.id;
          throw new RouterError('CIRCUIT_BREAKER_OPEN', `worker ${id} has an open circuit breaker`, { worker: id, retryAfterMs: Math.max(1, breakers.retryAfterMs([id]) ?? 1000) });
        }
      } else if (ctx.candidates.length > 0) {
        const allowed = ctx.candidates.filter((w) => breakers.allows(w.id));
        if (allowed.length === 0) {
          const ids = ctx.candidates.map((w) => w.id);
          const wait = breakers.retryAfterMs(ids);
          throw new RouterError('CIRCUIT_BREAKER_OPEN', `every worker serving ${ctx.request.model} has an open circuit breaker (${ids.join(', ')})`, {
            retryAfterMs: Math.max(1, wait ?? 1000),
          });
        }
        ctx.candidates = allowed;
      }
      if (!gate.permit) ctx.attempt.admissions.push(gate);
      try {
        await next();
      } catch (e) {
        const err = toRouterError(e);
        const permit = gate.permit;
        // A timeout counts only when the worker went quiet (ctx.attempt.stalled, set by timeout).
        if (permit?.record(err.outcome, { code: err.code, stalled: ctx.attempt.stalled })) {
          ctx.metrics.circuitBreakerTrips++;
          ctx.log.warn({ worker: permit.worker, code: err.code }, 'circuit breaker opened');
        }
        throw err;
      }
      gate.permit?.record('success');
    };
  },
});

/** The attempt's say for the breakers: allows workers whose breaker lets traffic through, and takes the chosen one's permit. */
class BreakerAdmission implements Admission {
  permit: BreakerPermit | undefined;

  constructor(private readonly breakers: BreakerFilterDeps['breakers']) {}

  allows(w: WorkerInfo): boolean {
    return this.breakers.allows(w.id);
  }

  admit(w: WorkerInfo): boolean {
    this.permit = this.breakers.admit(w.id);
    return this.permit !== undefined;
  }
}
