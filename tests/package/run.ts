/** Runs the packaged-consumer middleware with the package's own attempt runner and context. */
import { strict as assert } from 'node:assert';
import { attemptRunner, createContext, isRouterError, silentLogger, systemClock, type RouteContext, type WorkerInfo } from 'mlx-router';
import { audit, twice } from './audit.js';

const worker = (id: string): WorkerInfo => ({
  id, models: ['m'], engine: 'synthetic', maxConcurrent: 1, reportedInFlight: 0, outstanding: 0, foreignInFlight: 0,
  latencyMs: 0, latencyAt: 0, state: 'ready', lastSeen: 0, gone: false, continuation: false, version: 2, capabilities: { m: ['chat'] },
  progressMs: 0, heartbeatMs: 0, lastActivityAt: 0,
});

function context(headers: Record<string, string>): RouteContext {
  return createContext({
    requestId: 'req-1',
    request: { model: 'm', messages: [{ role: 'user', content: 'hi' }], stream: false },
    log: silentLogger(),
    clock: systemClock,
    signal: new AbortController().signal,
    deadline: systemClock.now() + 5000,
    headers,
  });
}

// The attempt part: audit, then a stand-in dispatch that fails on w1 and answers on w2.
const mw = audit({ required: true }, { clock: systemClock });
const runAttempt = attemptRunner(
  (ctx) =>
    mw(ctx, async () => {
      ctx.worker = worker(`w${ctx.attempt.number}`);
      if (ctx.attempt.number === 1) throw new Error('w1 broke');
      ctx.result = { type: 'result', text: 'ok', finish_reason: 'stop', usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } };
    }),
);
const boundary = twice(undefined, {} as never, runAttempt);

const ctx = context({ 'x-audit': 'abc' });
await boundary(ctx, () => Promise.resolve());
assert.equal(ctx.result?.text, 'ok');
assert.deepEqual(ctx.attempts.map((a) => [a.worker, a.outcome, a.code]), [['w1', 'worker_failure', 'INTERNAL_ERROR'], ['w2', 'success', null]]);
assert.deepEqual((ctx.state.audit as { value: string; worker: string }).worker, 'w2');

const refused = context({});
const err: unknown = await boundary(refused, () => Promise.resolve()).then(() => undefined, (e: unknown) => e);
assert.ok(isRouterError(err) && err.code === 'REQUEST_VALIDATION_FAILED' && err.status === 400, String(err));
assert.equal(audit.options().header, 'x-audit');
console.log('typescript consumer: ok');
