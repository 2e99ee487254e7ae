/**
 * A third-party middleware written against the public API only: typed options with defaults,
 * the deps it needs, a RouterError from the catalogue. Packaged-consumer test (scripts/package-test.sh).
 */
import { defineMiddleware, RouterError, type MiddlewareDeps, type RouteContext } from 'mlx-router';

export interface AuditOptions {
  /** Request header whose value is recorded (default x-audit). */
  header: string;
  /** Refuse requests without it (default false). */
  required: boolean;
}

export const audit = defineMiddleware<AuditOptions, Pick<MiddlewareDeps, 'clock'>>({
  name: 'audit',
  defaults: { header: 'x-audit', required: false },
  factory: (options, deps) =>
    async function audit(ctx: RouteContext, next) {
      const value = ctx.headers[options.header];
      if (options.required && !value) {
        throw new RouterError('REQUEST_VALIDATION_FAILED', `header ${options.header} is required`, { param: options.header });
      }
      const started = deps.clock.now();
      await next();
      ctx.state.audit = { value: value ?? null, worker: ctx.worker?.id ?? null, ms: deps.clock.now() - started };
    },
});

/** A boundary of its own: tries the attempt part up to `attempts` times. */
export const twice = defineMiddleware({
  name: 'twice',
  boundary: true,
  defaults: { attempts: 2 },
  factory: (options, _deps, runAttempt) =>
    async function twice(ctx: RouteContext) {
      for (let i = 1; ; i++) {
        try {
          return await runAttempt(ctx);
        } catch (e) {
          if (i >= options.attempts) throw e;
        }
      }
    },
});
