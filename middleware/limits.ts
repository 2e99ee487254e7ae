import { answerUsage, type Middleware, type RouteContext } from '../src/context';
import { defineMiddleware, type MiddlewareDeps } from '../src/define';
import { RouterError } from '../src/errors';
import type { ClientKey } from '../src/types';

export type LimitsOptions = Record<string, never>;

export type LimitsDeps = Pick<MiddlewareDeps, 'clock'> & Partial<Pick<MiddlewareDeps, 'metrics'>>;

const MINUTE_MS = 60_000;

/** One key's state: two token buckets (full at start) and its requests in flight. */
interface KeyState {
  /** Requests left of the per-minute bucket (refills at rpm per minute, at most rpm). */
  requests: number;
  /** Tokens left of the per-minute bucket; may go below zero when an answer used more. */
  tokens: number;
  at: number;
  /** Start times of the key's requests in flight, oldest first. */
  inFlight: number[];
  /** Average duration of the key's requests (ms); 0 until one ended. */
  durationMs: number;
}

function refill(s: KeyState, c: ClientKey, now: number): void {
  const elapsed = Math.max(0, now - s.at);
  s.at = now;
  if (c.rpm > 0) s.requests = Math.min(c.rpm, s.requests + (elapsed * c.rpm) / MINUTE_MS);
  if (c.tpm > 0) s.tokens = Math.min(c.tpm, s.tokens + (elapsed * c.tpm) / MINUTE_MS);
}

function refuse(c: ClientKey, limit: 'rpm' | 'tpm' | 'concurrency', message: string, retryAfterMs: number, deps: LimitsDeps): never {
  deps.metrics?.rateLimited?.inc({ key: c.id, limit });
  throw new RouterError('RATE_LIMIT_EXCEEDED', message, { retryAfterMs: Math.max(1, Math.ceil(retryAfterMs - 1e-6)) });
}

/**
 * limits: the per-key limits of `ctx.client` (an API key of cluster.auth.keys): requests per
 * minute and tokens per minute as token buckets (full at start, refilled continuously), and
 * requests at once. Over a limit the request gets 429 RATE_LIMIT_EXCEEDED with Retry-After: for
 * rpm the time until the bucket holds a whole request, for tpm until it is above zero again (the
 * tokens an answer's usage reports are taken after it ends, so one large answer may overdraw
 * it), for concurrency the key's average request duration less the age of its oldest request in
 * flight. Place it early (after `metrics`, before `retry`): it runs once per request. Requests
 * without a client (no keys configured) pass untouched. Each controller keeps its own counts.
 *
 * @example pipeline: [metrics, limits, session, retry, breaker, priority, select, timeout, health]
 */
export const limits = defineMiddleware<LimitsOptions, LimitsDeps>({
  name: 'limits',
  defaults: {},
  factory(_options, deps): Middleware {
    const { clock } = deps;
    // By key id: only configured keys reach here, so the map stays as small as the configuration.
    const states = new Map<string, KeyState>();
    return async function limits(ctx: RouteContext, next): Promise<void> {
      const c = ctx.client;
      if (!c) return next();
      const now = clock.now();
      let s = states.get(c.id);
      if (!s) states.set(c.id, (s = { requests: c.rpm, tokens: c.tpm, at: now, inFlight: [], durationMs: 0 }));
      refill(s, c, now);
      if (c.concurrency > 0 && s.inFlight.length >= c.concurrency) {
        const expected = s.durationMs > 0 ? s.durationMs - (now - s.inFlight[0]) : 1000;
        refuse(c, 'concurrency', `API key '${c.id}' has ${s.inFlight.length} requests in flight, its limit (concurrency ${c.concurrency})`, Math.max(expected, 1), deps);
      }
      if (c.rpm > 0 && s.requests < 1) {
        refuse(c, 'rpm', `API key '${c.id}' is over its limit of ${c.rpm} requests per minute`, ((1 - s.requests) * MINUTE_MS) / c.rpm, deps);
      }
      if (c.tpm > 0 && s.tokens <= 0) {
        refuse(c, 'tpm', `API key '${c.id}' is over its limit of ${c.tpm} tokens per minute`, ((1 - s.tokens) * MINUTE_MS) / c.tpm, deps);
      }
      if (c.rpm > 0) s.requests -= 1;
      s.inFlight.push(now);
      const state = s;
      try {
        await next();
      } finally {
        const i = state.inFlight.indexOf(now);
        if (i >= 0) state.inFlight.splice(i, 1);
        const end = clock.now();
        state.durationMs = state.durationMs === 0 ? end - now : state.durationMs + 0.2 * (end - now - state.durationMs);
        const usage = answerUsage(ctx);
        const used = usage ? usage.total_tokens ?? usage.prompt_tokens + usage.completion_tokens : 0;
        if (used > 0) {
          refill(state, c, end);
          if (c.tpm > 0) state.tokens -= used;
          deps.metrics?.keyTokens?.inc({ key: c.id }, used);
        }
      }
    };
  },
});
