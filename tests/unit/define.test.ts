/** defineMiddleware: defaults merged inside, typed boundary, and built-in defaults equal to the configuration's. */
import { attemptRunner } from '../../src/attempt';
import { loadConfig } from '../../src/config';
import { defineMiddleware, isMiddlewareDefinition } from '../../src/define';
import { BUILTIN_MIDDLEWARE } from '../../middleware';
import { makeCtx } from '../helpers/context';

test('define - options are the defaults with the given values merged over them; undefined keeps a default', async () => {
  const seen: Array<{ a: number; b: string }> = [];
  const def = defineMiddleware<{ a: number; b: string }, object>({
    name: 'probe',
    defaults: { a: 1, b: 'x' },
    factory: (options) => {
      seen.push(options);
      return async (_ctx, next) => next();
    },
  });
  def();
  def({ a: 2 });
  def({ a: undefined, b: 'y' });
  expect(seen).toEqual([
    { a: 1, b: 'x' },
    { a: 2, b: 'x' },
    { a: 1, b: 'y' },
  ]);
  expect(def.defaults).toEqual({ a: 1, b: 'x' });
  expect(def.boundary).toBe(false);
  expect(def.middlewareName).toBe('probe');
  expect(isMiddlewareDefinition(def)).toBe(true);
  expect(isMiddlewareDefinition(() => undefined)).toBe(false);
});

test('define - a boundary gets the attempt runner and refuses to be built without one', async () => {
  const def = defineMiddleware({
    name: 'once',
    boundary: true,
    defaults: {},
    factory: (_options, _deps, runAttempt) => async (ctx) => runAttempt(ctx),
  });
  expect(def.boundary).toBe(true);
  const ran: number[] = [];
  const runner = attemptRunner(async (ctx) => {
    ran.push(ctx.attempt.number);
  });
  const ctx = makeCtx();
  await def(undefined, {} as never, runner)(ctx, () => Promise.reject(new Error('a boundary never calls next')));
  expect(ran).toEqual([1]);
  expect(ctx.attempts.map((a) => a.outcome)).toEqual(['success']);
  expect(() => (def as unknown as (o: unknown, d: unknown) => unknown)(undefined, {})).toThrow(/boundary/);
});

test('define - every built-in default equals what the default configuration gives it (docs and code cannot disagree)', () => {
  const config = loadConfig({ env: {} });
  for (const [name, def] of Object.entries(BUILTIN_MIDDLEWARE)) {
    expect([name, def.options(def.fromConfig?.(config) as never)]).toEqual([name, def.defaults]);
  }
  expect(BUILTIN_MIDDLEWARE.retry.boundary).toBe(true);
  expect(Object.entries(BUILTIN_MIDDLEWARE).filter(([, d]) => d.boundary).map(([n]) => n)).toEqual(['retry', 'hedge']);
});
