/** The error catalogue (src/errors.ts): codes, statuses, outcome classes, bodies, Retry-After. */
import {
  countsAgainstWorker,
  ERROR_CATALOGUE,
  ERROR_CODE_HEADER,
  isErrorCode,
  isRetryableOutcome,
  isRouterError,
  OUTCOME_CLASSES,
  RouterError,
  toRouterError,
  type ErrorCode,
  type OutcomeClass,
} from '../../src/errors';
import { errorHeaders } from '../../src/controller/chat';

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
    // OpenAI's types: invalid_request_error for 4xx (401 and 403 too), `requests` for a rate limit, server_error for 5xx.
    const own: Record<string, string> = { RATE_LIMIT_EXCEEDED: 'requests' };
    expect(entry.type).toBe(own[code] ?? (entry.status < 500 ? 'invalid_request_error' : 'server_error'));
    expect(OUTCOME_CLASSES).toContain(entry.outcome);
    const err = new RouterError(code as ErrorCode, 'x');
    expect([err.status, err.type, err.outcome]).toEqual([entry.status, entry.type, entry.outcome]);
  }
  expect(isErrorCode('NOT_A_CODE')).toBe(false);
  expect(isErrorCode('toString')).toBe(false);
});

test.each<[ErrorCode, string, string | null]>([
  ['CONTEXT_LENGTH_EXCEEDED', 'context_length_exceeded', 'messages'],
  ['MODEL_NOT_FOUND', 'model_not_found', 'model'],
  ['NOT_FOUND', 'unknown_url', null],
  ['ADMIN_UNAUTHORIZED', 'admin_unauthorized', null],
  ['MISSING_API_KEY', 'missing_api_key', null],
  ['INVALID_API_KEY', 'invalid_api_key', null],
  ['MODEL_NOT_ALLOWED', 'model_not_allowed', 'model'],
  ['RATE_LIMIT_EXCEEDED', 'rate_limit_exceeded', null],
  ['ADMIN_FORBIDDEN', 'admin_forbidden', null],
  ['REQUEST_TOO_LARGE', 'request_too_large', null],
  ['INTERNAL_ERROR', 'server_error', null],
  ['REQUEST_VALIDATION_FAILED', 'request_validation_failed', null],
  ['WORKER_UNAVAILABLE', 'worker_unavailable', null],
  ['WORKER_OVERLOADED', 'worker_overloaded', null],
  ['NO_WORKERS_AVAILABLE', 'no_workers_available', null],
  ['STREAM_INTERRUPTED', 'stream_interrupted', null],
])('errors - %s is OpenAI code %s with param %p in the body, router_code beside', (code, openaiCode, param) => {
  const body = new RouterError(code, 'm').toJSON().error;
  expect(body).toMatchObject({ code: openaiCode, router_code: code, param });
  expect(body.type).toBe(code === 'RATE_LIMIT_EXCEEDED' ? 'requests' : ERROR_CATALOGUE[code].status < 500 ? 'invalid_request_error' : 'server_error');
});

test('errors - every code maps to a distinct lower-case OpenAI code; OpenAI\'s own where it has one, else ours in snake case', () => {
  const openai = new Set(['context_length_exceeded', 'model_not_found', 'unknown_url', 'missing_api_key', 'invalid_api_key', 'rate_limit_exceeded', 'request_too_large', 'server_error']);
  const seen = new Set<string>();
  for (const [code, entry] of Object.entries(ERROR_CATALOGUE)) {
    expect(entry.openaiCode).toMatch(/^[a-z][a-z0-9_]*$/);
    expect(seen.has(entry.openaiCode)).toBe(false);
    seen.add(entry.openaiCode);
    if (!openai.has(entry.openaiCode)) expect(entry.openaiCode).toBe(code.toLowerCase());
    expect(new RouterError(code as ErrorCode, 'x').openaiCode).toBe(entry.openaiCode);
  }
  expect(seen.size).toBe(Object.keys(ERROR_CATALOGUE).length);
});

test('errors - a param given with the error wins over the catalogue\'s default', () => {
  expect(new RouterError('CONTEXT_LENGTH_EXCEEDED', 'x', { param: 'prompt' }).toJSON().error.param).toBe('prompt');
  expect(new RouterError('MODEL_NOT_FOUND', 'x').param).toBe('model');
});

test('errors - errorHeaders carries the stable code in x-mlx-error-code, and retry-after only with a delay', () => {
  expect(errorHeaders(new RouterError('WORKER_ERROR', 'x'))).toEqual({ [ERROR_CODE_HEADER]: 'WORKER_ERROR' });
  expect(errorHeaders(new RouterError('NO_WORKERS_AVAILABLE', 'x', { retryAfterMs: 1500 }))).toEqual({ 'x-mlx-error-code': 'NO_WORKERS_AVAILABLE', 'retry-after': '2' });
});

test('errors - a worker may report its own outcome class for a code', () => {
  const err = new RouterError('WORKER_ERROR', 'broke mid-stream', { outcome: 'committed' });
  expect(err.outcome).toBe('committed');
  expect(err.status).toBe(502);
});

test('errors - toJSON is the OpenAI error shape with exactly message, type, param, code (OpenAI\'s) and router_code (ours)', () => {
  const err = new RouterError('REQUEST_VALIDATION_FAILED', 'messages is required', { param: 'messages' });
  expect(err.toJSON()).toEqual({ error: { message: 'messages is required', type: 'invalid_request_error', param: 'messages', code: 'request_validation_failed', router_code: 'REQUEST_VALIDATION_FAILED' } });
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
