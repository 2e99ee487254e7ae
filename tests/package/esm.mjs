// The same public API from a plain ES module (no TypeScript): defineMiddleware, the runner, errors.
import { strict as assert } from 'node:assert';
import { attemptRunner, createContext, defineMiddleware, ERROR_CATALOGUE, RouterError, silentLogger, systemClock } from 'mlx-router';

const tag = defineMiddleware({
  name: 'tag',
  defaults: { key: 'tagged', value: true },
  factory: (options) => async (ctx, next) => {
    ctx.state[options.key] = options.value;
    await next();
  },
});
const mw = tag({ value: 'yes' });
const runAttempt = attemptRunner((ctx) => mw(ctx, async () => {
  throw new RouterError('WORKER_TIMEOUT', 'scripted');
}));
const ctx = createContext({
  requestId: 'req-esm',
  request: { model: 'm', messages: [{ role: 'user', content: 'hi' }], stream: false },
  log: silentLogger(),
  clock: systemClock,
  signal: new AbortController().signal,
  deadline: systemClock.now() + 5000,
});
await assert.rejects(runAttempt(ctx), (e) => e instanceof RouterError && e.status === ERROR_CATALOGUE.WORKER_TIMEOUT.status);
assert.equal(ctx.state.tagged, 'yes');
assert.deepEqual(ctx.attempts.map((a) => a.outcome), ['ambiguous']);
console.log('es module consumer: ok');
