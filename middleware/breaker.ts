import type { Middleware, RouteContext } from '../src/context';
import type { BreakerBook } from '../src/controller/breakers';
import { RouterError } from '../src/errors';

export interface BreakerFilterOptions {
  /** When false the middleware passes everything through (default true). */
  enabled: boolean;
}

export interface BreakerFilterDeps {
  breakers: BreakerBook;
}

/**
 * breaker: removes from `ctx.candidates` every worker whose breaker refuses traffic now (open, or
 * half-open with all probe permits taken). When none remain it fails fast with
 * CIRCUIT_BREAKER_OPEN (503) and a Retry-After of the time until the first breaker turns half-open.
 * The outcomes themselves are recorded by `health`.
 */
export function breaker(options: BreakerFilterOptions, deps: BreakerFilterDeps): Middleware {
  return async function breaker(ctx: RouteContext, next): Promise<void> {
    if (!options.enabled || ctx.candidates.length === 0) return next();
    const allowed = ctx.candidates.filter((w) => deps.breakers.allows(w.id));
    if (allowed.length === 0) {
      const ids = ctx.candidates.map((w) => w.id);
      const wait = deps.breakers.retryAfterMs(ids);
      throw new RouterError('CIRCUIT_BREAKER_OPEN', `every worker serving ${ctx.request.model} has an open circuit breaker (${ids.join(', ')})`, {
        retryAfterMs: Math.max(1, wait ?? 1000),
      });
    }
    ctx.candidates = allowed;
    await next();
  };
}
