/** The error catalogue (src/errors.ts): codes, statuses, outcome classes, bodies, Retry-After. */
import {
  countsAgainstWorker,
  ERROR_CATALOGUE,
  isErrorCode,
  isRetryableOutcome,
  isRouterError,
  OUTCOME_CLASSES,
  RouterError,
  toRouterError,
  type ErrorCode,
  type OutcomeClass,
} from '../../src/errors';

test.each<[ErrorCode, number, OutcomeClass]>([
  ['REQUEST_VALIDATION_FAILED', 400, 'caller'],
  ['MODEL_NOT_FOUND', 404, 'caller'],
  ['WORKER_ERROR', 502, 'worker_failure'],
  ['ALL_RETRIES_EXHAUSTED', 502, 'worker_failure'],
  ['WORKER_UNAVAILABLE', 503, 'not_delivered'],
  ['WORKER_OVERLOADED', 503, 'rejected'],
  ['NO_WORKERS_AVAILABLE', 503, 'no_capacity'],
  ['CIRCUIT_BREAKER_OPEN', 503, 'no_capacity'],
  ['RETRY_BUDGET_EXHAUSTED', 503, 'no_capacity'],
  ['WORKER_TIMEOUT', 504, 'ambiguous'],
  ['STREAM_INTERRUPTED', 502, 'committed'],
])('errors - %s is HTTP %i with outcome %s', (code, status, outcome) => {
  const err = new RouterError(code, 'm');
  expect(err.status).toBe(status);
  expect(err.outcome).toBe(outcome);
});

test('errors - every catalogue entry has a 4xx/5xx status, an OpenAI type and a known outcome class', () => {
  for (const [code, entry] of Object.entries(ERROR_CATALOGUE)) {
    expect(isErrorCode(code)).toBe(true);
    expect(entry.status).toBeGreaterThanOrEqual(400);
    expect(entry.status).toBeLessThan(600);
    // OpenAI's types: client keys have their own (401 authentication, 403 permission, 429 rate limit).
    const own: Record<string, string> = {
      MISSING_API_KEY: 'authentication_error',
      INVALID_API_KEY: 'authentication_error',
      MODEL_NOT_ALLOWED: 'permission_error',
      RATE_LIMIT_EXCEEDED: 'rate_limit_error',
    };
    expect(entry.type).toBe(own[code] ?? (entry.status < 500 ? 'invalid_request_error' : 'server_error'));
    expect(OUTCOME_CLASSES).toContain(entry.outcome);
    const err = new RouterError(code as ErrorCode, 'x');
    expect([err.status, err.type, err.outcome]).toEqual([entry.status, entry.type, entry.outcome]);
  }
  expect(isErrorCode('NOT_A_CODE')).toBe(false);
  expect(isErrorCode('toString')).toBe(false);
});

test('errors - a worker may report its own outcome class for a code', () => {
  const err = new RouterError('WORKER_ERROR', 'broke mid-stream', { outcome: 'committed' });
  expect(err.outcome).toBe('committed');
  expect(err.status).toBe(502);
});

test('errors - toJSON is the OpenAI error shape with exactly message, type, param, code', () => {
  const err = new RouterError('REQUEST_VALIDATION_FAILED', 'messages is required', { param: 'messages' });
  expect(err.toJSON()).toEqual({ error: { message: 'messages is required', type: 'invalid_request_error', param: 'messages', code: 'REQUEST_VALIDATION_FAILED' } });
  expect(JSON.parse(JSON.stringify(err))).toEqual(err.toJSON());
  expect(new RouterError('WORKER_TIMEOUT', 't').toJSON().error.param).toBeNull();
});

test('errors - toJSON lists the attempts only when there are some', () => {
  const attempts = [
    { attempt: 1, worker: 'w1', outcome: 'worker_failure' as const, code: 'WORKER_ERROR' as const, durationMs: 3 },
    { attempt: 2, worker: 'w2', outcome: 'ambiguous' as const, code: 'WORKER_TIMEOUT' as const, durationMs: 9 },
  ];
  expect(new RouterError('ALL_RETRIES_EXHAUSTED', 'x', { attempts }).toJSON().error.attempts).toEqual(attempts);
  expect(new RouterError('ALL_RETRIES_EXHAUSTED', 'x', { attempts: [] }).toJSON().error).not.toHaveProperty('attempts');
  expect(new RouterError('WORKER_ERROR', 'x').toJSON().error).not.toHaveProperty('attempts');
});

test.each<[number | undefined, number | undefined]>([
  [undefined, undefined],
  [0, 1],
  [1, 1],
  [999, 1],
  [1000, 1],
  [1001, 2],
  [2500, 3],
  [30_000, 30],
])('errors - retryAfterMs %p gives Retry-After %p seconds (rounded up, at least 1)', (ms, seconds) => {
  expect(new RouterError('NO_WORKERS_AVAILABLE', 'x', { retryAfterMs: ms }).retryAfterSeconds()).toBe(seconds);
});

test('errors - isRouterError checks the brand, not the prototype', () => {
  const err = new RouterError('WORKER_ERROR', 'x');
  expect(isRouterError(err)).toBe(true);
  expect(isRouterError(new Error('x'))).toBe(false);
  expect(isRouterError({ code: 'WORKER_ERROR', status: 502 })).toBe(false);
  expect(isRouterError(null)).toBe(false);
  expect(isRouterError('WORKER_ERROR')).toBe(false);
  // A RouterError from another copy of the module carries the same global symbol.
  expect(isRouterError({ [Symbol.for('mlx-router.RouterError')]: true })).toBe(true);
});

test('errors - the cause is kept', () => {
  const cause = new Error('nats: timeout');
  expect(new RouterError('WORKER_TIMEOUT', 'x', { cause }).cause).toBe(cause);
});

test('errors - toRouterError keeps a RouterError and wraps anything else as INTERNAL_ERROR with its cause', () => {
  const r = new RouterError('WORKER_ERROR', 'x');
  expect(toRouterError(r)).toBe(r);
  const plain = new Error('boom');
  expect(toRouterError(plain)).toMatchObject({ code: 'INTERNAL_ERROR', status: 500, cause: plain });
  expect(toRouterError(plain).message).toContain('boom');
  expect(toRouterError('text').message).toContain('text');
});

test('errors - retryable classes and classes counted against the worker follow the outcome classes', () => {
  const retryable = OUTCOME_CLASSES.filter(isRetryableOutcome);
  const counted = OUTCOME_CLASSES.filter(countsAgainstWorker);
  expect(retryable.sort()).toEqual(['ambiguous', 'not_delivered', 'rejected', 'worker_failure']);
  expect(counted.sort()).toEqual(['ambiguous', 'committed', 'worker_failure']);
});
