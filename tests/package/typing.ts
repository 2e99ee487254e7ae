/** Type errors a consumer must get: options and deps are typed through the definition. */
import { defineMiddleware, type RouteContext } from 'mlx-router';
import { audit } from './audit.js';

// @ts-expect-error header is a string
audit({ header: 42 }, { clock: { now: () => 0, sleep: async () => undefined, timer: () => ({ cancel() {}, restart() {} }) } });
// @ts-expect-error unknown option
audit({ heder: 'x' });

// @ts-expect-error a plain middleware's factory gets no attempt runner
defineMiddleware({
  name: 'bad',
  defaults: { n: 1 },
  factory: (_o: { n: number }, _d: unknown, runAttempt: (ctx: RouteContext) => Promise<void>) => async (ctx) => runAttempt(ctx),
});
