/** The per-model max_tokens cap: a request's own size is refused up front, never held against a worker. */
import { loadConfig } from '../../src/config';
import { checkMaxTokens, maxTokensCap } from '../../src/controller/token-cap';
import { isRouterError } from '../../src/errors';

const caps = { cap: 1000, byModel: { small: 64 } };

test('token cap - a model listed in byModel has its own cap; others get cap', () => {
  expect(maxTokensCap(caps, 'small')).toBe(64);
  expect(maxTokensCap(caps, 'other')).toBe(1000);
  expect(maxTokensCap(caps, 'constructor')).toBe(1000);
});

test('token cap - at the cap passes, above it is 400 REQUEST_VALIDATION_FAILED naming max_tokens', () => {
  expect(() => checkMaxTokens(caps, { model: 'small', max_tokens: 64 })).not.toThrow();
  expect(() => checkMaxTokens(caps, { model: 'other' })).not.toThrow();
  let err: unknown;
  try {
    checkMaxTokens(caps, { model: 'small', max_tokens: 65 });
  } catch (e) {
    err = e;
  }
  expect(isRouterError(err) && err).toMatchObject({ code: 'REQUEST_VALIDATION_FAILED', status: 400, param: 'max_tokens', outcome: 'caller' });
});

test('token cap - byModel is read from the environment as JSON and checked', () => {
  const c = loadConfig({ env: { MLX_ROUTER_CLUSTER_MAX_TOKENS_BY_MODEL: '{"m": 10}' } });
  expect(c.cluster.maxTokens.byModel).toEqual({ m: 10 });
  expect(() => loadConfig({ env: { MLX_ROUTER_CLUSTER_MAX_TOKENS_BY_MODEL: '{"m": 0}' } })).toThrow(/cluster.maxTokens.byModel/);
});
