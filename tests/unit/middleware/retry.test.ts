/**
 * retry middleware: the chain's boundary. It gets the real attempt runner (src/attempt.ts), here
 * over the real `select` middleware and then a scripted worker, as the assembler builds it.
 */
import compose from 'koa-compose';
import type { Middleware, RouteContext, StreamSink } from '../../../src/context';
import type { WorkerInfo } from '../../../src/types';
import { RetryBudget } from '../../../src/controller/retry-budget';
import { attemptRunner } from '../../../src/attempt';
import { RouterError, toRouterError, type ErrorCode } from '../../../src/errors';
import { backoffDelay, finalError, retry, type RetryOptions } from '../../../middleware/retry';
import { select } from '../../../middleware/select';
import { makeCtx, makeWorker } from '../../helpers/context';
import { InstantClock } from '../../helpers/fake-clock';

/** The definition's defaults, with four retryable codes and stream resume off unless a test turns it on. */
const DEFAULTS: Partial<RetryOptions> = {
  retryOnErrors: ['WORKER_UNAVAILABLE', 'WORKER_OVERLOADED', 'WORKER_TIMEOUT', 'WORKER_ERROR'],
  resume: false,
};

/** What a scripted worker does on one attempt: answer, or fail with an error. */
type Behaviour = (ctx: RouteContext) => Promise<void> | void;
const ok: Behaviour = () => undefined;
const fail = (code: ErrorCode, extra: { retryAfterMs?: number; fromWorker?: boolean } = {}): Behaviour => (ctx) => {
  throw new RouterError(code, `scripted ${code}`, { worker: ctx.worker?.id, ...extra });
};

interface Harness {
  ctx: RouteContext;
  clock: InstantClock;
  budget: RetryBudget;
  run: () => Promise<void>;
  /** Workers in attempt order. */
  workers: () => Array<string | null>;
}

interface HarnessOptions {
  options?: Partial<RetryOptions>;
  /** Candidates for each attempt (a function: the pool may change between attempts). */
  pool: () => WorkerInfo[];
  /** Per worker id: what it does on each of its attempts (the last entry repeats). */
  script: Record<string, Behaviour[]>;
  budget?: RetryBudget;
  clock?: InstantClock;
  deadlineMs?: number;
  random?: () => number;
  sink?: StreamSink;
  signal?: AbortSignal;
  /** Whether some known worker can continue a partial answer (stream resume). */
  canContinue?: boolean;
}

function harness(h: HarnessOptions): Harness {
  const clock = h.clock ?? new InstantClock();
  const budget = h.budget ?? new RetryBudget({ maxTokens: 10, tokenRatio: 0.1 });
  const ctx = makeCtx({ clock, deadlineMs: h.deadlineMs, sink: h.sink, signal: h.signal });
  const calls = new Map<string, number>();
  const worker: Middleware = async (c) => {
    const id = c.worker!.id;
    const n = calls.get(id) ?? 0;
    calls.set(id, n + 1);
    const steps = h.script[id] ?? [ok];
    await steps[Math.min(n, steps.length - 1)](c);
  };
  const runAttempt = attemptRunner(compose<RouteContext>([select({ strategy: 'least-outstanding', workerWaitTimeoutMs: 0 }), worker]), { candidates: () => h.pool() });
  const registry = h.canContinue === undefined ? undefined : { knowsContinuation: () => h.canContinue === true };
  const mw = retry({ ...DEFAULTS, ...h.options }, { clock, budget, random: h.random ?? (() => 0.5), registry }, runAttempt);
  return { ctx, clock, budget, run: () => mw(ctx, () => Promise.resolve()), workers: () => ctx.attempts.map((a) => a.worker) };
}

/** A sink that commits at its first write and remembers what it delivered. */
function committingSink(): StreamSink {
  let streamed = '';
  return {
    get committed() {
      return streamed.length > 0;
    },
    get streamed() {
      return streamed;
    },
    write: (text) => {
      streamed += text;
      return true;
    },
  };
}
const breaksAfterHello: Behaviour = (ctx) => {
  ctx.sink!.write('Hello');
  throw new RouterError('WORKER_UNAVAILABLE', 'worker vanished mid-stream');
};

const three = (): WorkerInfo[] => [makeWorker('w1'), makeWorker('w2'), makeWorker('w3')];

async function failure(p: Promise<unknown>): Promise<RouterError> {
  try {
    await p;
  } catch (e) {
    return toRouterError(e);
  }
  throw new Error('expected the request to fail');
}

describe('backoffDelay', () => {
  const opts = { retryDelayMs: 100, maxRetryDelayMs: 1000 };

  test('backoff - many random samples stay within [0, min(cap, base·2^n)]', () => {
    for (let n = 0; n <= 12; n++) {
      const ceiling = Math.min(1000, 100 * 2 ** n);
      let min = Infinity;
      let max = -Infinity;
      for (let i = 0; i < 2000; i++) {
        const d = backoffDelay(n, opts, Math.random);
        min = Math.min(min, d);
        max = Math.max(max, d);
      }
      expect(min).toBeGreaterThanOrEqual(0);
      expect(max).toBeLessThan(ceiling);
      // Full jitter spreads over the whole range, not a corner of it.
      expect(min).toBeLessThan(ceiling * 0.1);
      expect(max).toBeGreaterThan(ceiling * 0.9);
    }
  });

  test('backoff - exact values with a stub random: uniform scale of the capped exponential', () => {
    expect(backoffDelay(0, opts, () => 0.5)).toBe(50);
    expect(backoffDelay(1, opts, () => 0.5)).toBe(100);
    expect(backoffDelay(2, opts, () => 0.5)).toBe(200);
    expect(backoffDelay(3, opts, () => 0.5)).toBe(400);
    expect(backoffDelay(4, opts, () => 0.5)).toBe(500); // capped at 1000
    expect(backoffDelay(1000, opts, () => 0.5)).toBe(500); // no overflow for huge n
    expect(backoffDelay(3, opts, () => 0)).toBe(0);
    expect(backoffDelay(3, opts, () => 0.999)).toBeCloseTo(799.2, 6);
  });

  test('retry - sleeps the full-jitter backoff of each retry in turn', async () => {
    const h = harness({ pool: three, script: { w1: [fail('WORKER_ERROR')], w2: [fail('WORKER_ERROR')] }, random: () => 0.5 });
    await h.run();
    expect(h.workers()).toEqual(['w1', 'w2', 'w3']);
    expect(h.clock.sleeps).toEqual([50, 100]);
  });
});

describe('retry - worker choice', () => {
  test('retry - never repeats a worker while an untried one remains', async () => {
    // least-outstanding with equal loads would pick w1 every time without the untried rule.
    const h = harness({ pool: three, script: { w1: [fail('WORKER_ERROR')], w2: [fail('WORKER_TIMEOUT')], w3: [fail('WORKER_ERROR')] } });
    await failure(h.run());
    expect(h.workers()).toEqual(['w1', 'w2', 'w3']);
  });

  test('retry - returns to a tried worker only once every worker was tried', async () => {
    const h = harness({
      options: { maxRetries: 3 },
      pool: () => [makeWorker('w1'), makeWorker('w2')],
      script: { w1: [fail('WORKER_ERROR'), ok], w2: [fail('WORKER_ERROR')] },
    });
    await h.run();
    expect(h.workers()).toEqual(['w1', 'w2', 'w1']);
    expect(h.ctx.attempts.at(-1)?.outcome).toBe('success');
  });

  test('retry - a success after a failure stops retrying and returns normally', async () => {
    const h = harness({ pool: three, script: { w1: [fail('WORKER_ERROR')] } });
    await h.run();
    expect(h.workers()).toEqual(['w1', 'w2']);
    expect(h.ctx.attempts.map((a) => a.outcome)).toEqual(['worker_failure', 'success']);
  });
});

describe('retry - delays', () => {
  test('retry - no backoff after not_delivered (WORKER_UNAVAILABLE)', async () => {
    const h = harness({ pool: three, script: { w1: [fail('WORKER_UNAVAILABLE')], w2: [fail('WORKER_UNAVAILABLE')] } });
    await h.run();
    expect(h.workers()).toEqual(['w1', 'w2', 'w3']);
    expect(h.clock.sleeps).toEqual([]);
  });

  test('retry - honours the retryAfterMs of a rejected attempt when it exceeds the backoff', async () => {
    const h = harness({ pool: three, script: { w1: [fail('WORKER_OVERLOADED', { retryAfterMs: 700 })] } });
    await h.run();
    expect(h.workers()).toEqual(['w1', 'w2']);
    expect(h.clock.sleeps).toEqual([700]);
  });

  test('retry - a rejected attempt with a shorter retryAfterMs keeps the backoff', async () => {
    const h = harness({ pool: three, script: { w1: [fail('WORKER_OVERLOADED', { retryAfterMs: 10 })] } });
    await h.run();
    expect(h.clock.sleeps).toEqual([50]);
  });

  test('retry - no retry when the remaining deadline is shorter than minAttemptMs', async () => {
    const h = harness({
      deadlineMs: 1000,
      pool: three,
      script: {
        w1: [
          async (ctx) => {
            await (ctx.clock as InstantClock).advance(960);
            throw new RouterError('WORKER_ERROR', 'slow failure');
          },
        ],
      },
    });
    const err = await failure(h.run());
    expect(h.workers()).toEqual(['w1']);
    expect(err.code).toBe('WORKER_ERROR');
    expect(h.clock.sleeps).toEqual([]);
  });

  test('retry - the delay counts against the deadline: a long Retry-After past the deadline stops retries', async () => {
    const h = harness({ deadlineMs: 500, pool: three, script: { w1: [fail('WORKER_OVERLOADED', { retryAfterMs: 480 })] } });
    const err = await failure(h.run());
    expect(h.workers()).toEqual(['w1']);
    expect(err.code).toBe('WORKER_OVERLOADED');
  });

  test('retry - with the same short deadline a no-backoff retry still goes out', async () => {
    const h = harness({ deadlineMs: 500, pool: three, script: { w1: [fail('WORKER_UNAVAILABLE')] } });
    await h.run();
    expect(h.workers()).toEqual(['w1', 'w2']);
  });
});

describe('retry - what is retried', () => {
  test('retry - a caller error is neither retried nor counted against the budget', async () => {
    const h = harness({ pool: three, script: { w1: [fail('CONTEXT_LENGTH_EXCEEDED')] } });
    const err = await failure(h.run());
    expect(h.workers()).toEqual(['w1']);
    expect(err).toMatchObject({ code: 'CONTEXT_LENGTH_EXCEEDED', status: 400, outcome: 'caller' });
    expect(h.budget.available).toBe(10);
  });

  test('retry - a retryable class whose code is not in retryOnErrors is not retried', async () => {
    const h = harness({ options: { retryOnErrors: ['WORKER_UNAVAILABLE'] }, pool: three, script: { w1: [fail('WORKER_ERROR')] } });
    const err = await failure(h.run());
    expect(h.workers()).toEqual(['w1']);
    expect(err.code).toBe('WORKER_ERROR');
  });

  test('retry - disabled runs exactly one attempt', async () => {
    const h = harness({ options: { enabled: false }, pool: three, script: { w1: [fail('WORKER_ERROR')] } });
    const err = await failure(h.run());
    expect(h.workers()).toEqual(['w1']);
    expect(err.code).toBe('WORKER_ERROR');
  });

  test('retry - maxRetries 1 allows two attempts in total', async () => {
    const h = harness({ options: { maxRetries: 1 }, pool: three, script: { w1: [fail('WORKER_ERROR')], w2: [fail('WORKER_ERROR')] } });
    const err = await failure(h.run());
    expect(h.workers()).toEqual(['w1', 'w2']);
    expect(err.code).toBe('ALL_RETRIES_EXHAUSTED');
  });

  test('retry - maxRetries 0 allows one attempt', async () => {
    const h = harness({ options: { maxRetries: 0 }, pool: three, script: { w1: [fail('WORKER_ERROR')] } });
    await failure(h.run());
    expect(h.workers()).toEqual(['w1']);
  });

  test('retry - no blind retry after a stream committed its first chunk: the stream is interrupted', async () => {
    const sink = committingSink();
    const h = harness({
      options: { resume: false },
      sink,
      pool: three,
      script: {
        w1: [
          (ctx) => {
            ctx.sink!.write('Hello');
            // A disconnect after the first chunk: retryable on its own, but the client already has text.
            throw new RouterError('WORKER_UNAVAILABLE', 'worker vanished mid-stream');
          },
        ],
      },
    });
    const err = await failure(h.run());
    expect(h.workers()).toEqual(['w1']);
    expect(err).toMatchObject({ code: 'STREAM_INTERRUPTED', outcome: 'committed' });
    expect(toRouterError(err.cause).code).toBe('WORKER_UNAVAILABLE');
  });

  test('retry - with resume, a stream broken after commit continues on another worker after the delivered text', async () => {
    let continuation: string | undefined;
    const h = harness({
      options: { resume: true, maxResumes: 2 },
      sink: committingSink(),
      canContinue: true,
      pool: three,
      script: { w1: [breaksAfterHello], w2: [(ctx) => void (continuation = ctx.continuation)] },
    });
    await h.run();
    expect(h.workers()).toEqual(['w1', 'w2']);
    expect(continuation).toBe('Hello');
    expect(h.ctx.metrics.resumes).toBe(1);
  });

  test('retry - a stream that broke after a tool call reached the client is not resumed: it ends with its error', async () => {
    const sink = committingSink();
    let resumable = true;
    const toolSink: StreamSink = {
      get committed() {
        return sink.committed;
      },
      get streamed() {
        return sink.streamed;
      },
      get resumable() {
        return resumable;
      },
      write: (text) => sink.write(text),
    };
    const h = harness({
      options: { resume: true, maxResumes: 2 },
      sink: toolSink,
      canContinue: true,
      pool: three,
      script: {
        w1: [
          (ctx) => {
            ctx.sink!.write('{');
            resumable = false; // as SseSink does once a tool_calls delta went out
            throw new RouterError('WORKER_UNAVAILABLE', 'worker vanished inside a tool call');
          },
        ],
      },
    });
    const err = await failure(h.run());
    expect(h.workers()).toEqual(['w1']);
    expect(err).toMatchObject({ code: 'STREAM_INTERRUPTED', outcome: 'committed' });
    expect(h.ctx.metrics.resumes).toBe(0);
  });

  test('retry - with resume but no known worker able to continue, the stream ends at once', async () => {
    const h = harness({ options: { resume: true, maxResumes: 2 }, sink: committingSink(), canContinue: false, pool: three, script: { w1: [breaksAfterHello] } });
    const err = await failure(h.run());
    expect(h.workers()).toEqual(['w1']);
    expect(err).toMatchObject({ code: 'STREAM_INTERRUPTED', outcome: 'committed' });
    expect(h.ctx.metrics.resumes).toBe(0);
  });

  test('retry - resumes stop at maxResumes', async () => {
    const h = harness({
      options: { resume: true, maxResumes: 1 },
      sink: committingSink(),
      canContinue: true,
      pool: three,
      script: { w1: [breaksAfterHello], w2: [fail('WORKER_TIMEOUT')] },
    });
    const err = await failure(h.run());
    expect(h.workers()).toEqual(['w1', 'w2']);
    expect(err).toMatchObject({ code: 'STREAM_INTERRUPTED', outcome: 'committed' });
  });

  test('retry - the same failure before the first chunk of a stream is retried', async () => {
    const sink: StreamSink = { committed: false, streamed: '', write: () => true };
    const h = harness({ sink, pool: three, script: { w1: [fail('WORKER_TIMEOUT')] } });
    await h.run();
    expect(h.workers()).toEqual(['w1', 'w2']);
  });

  test('retry - no retry once the client went away', async () => {
    const client = new AbortController();
    const h = harness({
      signal: client.signal,
      pool: three,
      script: {
        w1: [
          () => {
            client.abort(new RouterError('CLIENT_CLOSED_REQUEST', 'client left'));
            throw new RouterError('WORKER_ERROR', 'failed as the client left');
          },
        ],
      },
    });
    await failure(h.run());
    expect(h.workers()).toEqual(['w1']);
  });
});

test('retry - a deadline that passes during the backoff ends in one REQUEST_TIMEOUT that lists the attempts', async () => {
  class DeadlineDuringBackoff extends InstantClock {
    override sleep(ms: number): Promise<void> {
      this.sleeps.push(ms);
      return Promise.reject(new RouterError('REQUEST_TIMEOUT', 'request deadline passed'));
    }
  }
  const h = harness({ clock: new DeadlineDuringBackoff(), pool: three, script: { w1: [fail('WORKER_ERROR')] } });
  const err = await failure(h.run());
  expect(err).toMatchObject({ code: 'REQUEST_TIMEOUT', status: 504 });
  expect(err.attempts?.map((a) => a.code)).toEqual(['WORKER_ERROR']);
});

test('retry - a spent budget stops resumes too', async () => {
  const budget = new RetryBudget({ maxTokens: 10, tokenRatio: 0.1 });
  for (let i = 0; i < 5; i++) budget.onFailure();
  const h = harness({ options: { resume: true, maxResumes: 2 }, sink: committingSink(), canContinue: true, budget, pool: three, script: { w1: [breaksAfterHello] } });
  const err = await failure(h.run());
  expect(h.workers()).toEqual(['w1']);
  expect(err).toMatchObject({ code: 'STREAM_INTERRUPTED' });
  expect(h.ctx.metrics.resumes).toBe(0);
});

describe('retry - budget', () => {
  test('retry - the budget stops retries during an outage (RETRY_BUDGET_EXHAUSTED)', async () => {
    const budget = new RetryBudget({ maxTokens: 10, tokenRatio: 0.1 });
    const allFail = { w1: [fail('WORKER_ERROR')], w2: [fail('WORKER_ERROR')], w3: [fail('WORKER_ERROR')] };
    const attemptsPerRequest: number[] = [];
    const codes: string[] = [];
    for (let i = 0; i < 10; i++) {
      const h = harness({ pool: three, script: allFail, budget });
      const err = await failure(h.run());
      attemptsPerRequest.push(h.ctx.attempts.length);
      codes.push(err.code);
    }
    // Tokens 10 → 7 (3 attempts), → 5 (stops below more-than-half), then one attempt per request.
    expect(attemptsPerRequest).toEqual([3, 2, 1, 1, 1, 1, 1, 1, 1, 1]);
    expect(codes[0]).toBe('ALL_RETRIES_EXHAUSTED');
    expect(codes.slice(1)).toEqual(Array(9).fill('RETRY_BUDGET_EXHAUSTED'));
    // 13 attempts instead of 30: retries did not multiply the load.
    expect(attemptsPerRequest.reduce((a, b) => a + b)).toBe(13);
  });

  test('retry - RETRY_BUDGET_EXHAUSTED is a 503 with Retry-After that lists the attempts', async () => {
    const budget = new RetryBudget({ maxTokens: 2, tokenRatio: 0.1 });
    const h = harness({ pool: three, script: { w1: [fail('WORKER_ERROR')] }, budget });
    const err = await failure(h.run());
    expect(err).toMatchObject({ code: 'RETRY_BUDGET_EXHAUSTED', status: 503, outcome: 'no_capacity' });
    expect(err.retryAfterSeconds()).toBeGreaterThanOrEqual(1);
    expect(err.attempts?.map((a) => a.worker)).toEqual(['w1']);
    expect(toRouterError(err.cause).code).toBe('WORKER_ERROR');
  });

  test('retry - successes refill the budget so retries resume after the outage', async () => {
    const budget = new RetryBudget({ maxTokens: 10, tokenRatio: 0.1 });
    for (let i = 0; i < 5; i++) budget.onFailure();
    expect(budget.canRetry()).toBe(false);
    // The failed attempt itself takes a token before the check: 5 + 11 × 0.1 − 1 = 5.1 > 5.
    for (let i = 0; i < 11; i++) await harness({ pool: three, script: {}, budget }).run();
    expect(budget.available).toBeCloseTo(6.1, 9);
    const h = harness({ pool: three, script: { w1: [fail('WORKER_ERROR')] }, budget });
    await h.run();
    expect(h.workers()).toEqual(['w1', 'w2']);
  });

  test('retry - one success is not enough to reopen a spent budget', async () => {
    const budget = new RetryBudget({ maxTokens: 10, tokenRatio: 0.1 });
    for (let i = 0; i < 5; i++) budget.onFailure();
    await harness({ pool: three, script: {}, budget }).run();
    const h = harness({ pool: three, script: { w1: [fail('WORKER_ERROR')] }, budget });
    const err = await failure(h.run());
    expect(h.workers()).toEqual(['w1']);
    expect(err.code).toBe('RETRY_BUDGET_EXHAUSTED');
  });
});

test('retry - a full worker\'s own refusal (WORKER_OVERLOADED from the worker) takes no budget token and is retried on a spent budget; a real failure is not', async () => {
  const budget = new RetryBudget({ maxTokens: 10, tokenRatio: 0.1 });
  // Many refusals in a row: each retried elsewhere, none spends the budget.
  for (let i = 0; i < 20; i++) {
    const h = harness({ pool: three, script: { w1: [fail('WORKER_OVERLOADED', { retryAfterMs: 100, fromWorker: true })] }, budget });
    await h.run();
    expect(h.workers()).toEqual(['w1', 'w2']);
  }
  expect(budget.available).toBe(10);
  // With the budget spent by real failures, a refusal is still retried: it cost no work.
  for (let i = 0; i < 5; i++) budget.onFailure();
  const refused = harness({ pool: three, script: { w1: [fail('WORKER_OVERLOADED', { retryAfterMs: 100, fromWorker: true })] }, budget });
  await refused.run();
  expect(refused.workers()).toEqual(['w1', 'w2']);
  const failed = harness({ pool: three, script: { w1: [fail('WORKER_ERROR')] }, budget });
  expect((await failure(failed.run())).code).toBe('RETRY_BUDGET_EXHAUSTED');
  // A refusal that did not come from the worker itself stays on the budget.
  const notFromWorker = harness({ pool: three, script: { w1: [fail('WORKER_OVERLOADED', { retryAfterMs: 100 })] }, budget });
  expect((await failure(notFromWorker.run())).code).toBe('RETRY_BUDGET_EXHAUSTED');
});

describe('finalError', () => {
  test('finalError - a single attempt keeps its own code and lists itself', async () => {
    const h = harness({ options: { maxRetries: 0 }, pool: three, script: { w1: [fail('WORKER_TIMEOUT')] } });
    const err = await failure(h.run());
    expect(err).toMatchObject({ code: 'WORKER_TIMEOUT', status: 504 });
    expect(err.attempts).toHaveLength(1);
  });

  test('finalError - every attempt timing out stays 504 WORKER_TIMEOUT', async () => {
    const h = harness({ pool: three, script: { w1: [fail('WORKER_TIMEOUT')], w2: [fail('WORKER_TIMEOUT')], w3: [fail('WORKER_TIMEOUT')] } });
    const err = await failure(h.run());
    expect(err).toMatchObject({ code: 'WORKER_TIMEOUT', status: 504 });
    expect(err.attempts?.map((a) => a.worker)).toEqual(['w1', 'w2', 'w3']);
  });

  test('finalError - worker failures become 502 ALL_RETRIES_EXHAUSTED listing every attempt', async () => {
    const h = harness({ pool: three, script: { w1: [fail('WORKER_ERROR')], w2: [fail('WORKER_ERROR')], w3: [fail('WORKER_ERROR')] } });
    const err = await failure(h.run());
    expect(err).toMatchObject({ code: 'ALL_RETRIES_EXHAUSTED', status: 502 });
    expect(err.attempts?.map((a) => [a.worker, a.code])).toEqual([
      ['w1', 'WORKER_ERROR'],
      ['w2', 'WORKER_ERROR'],
      ['w3', 'WORKER_ERROR'],
    ]);
    expect(err.message).toContain('w1');
    expect(err.message).toContain('w3');
    expect(err.toJSON().error.attempts).toHaveLength(3);
  });

  test('finalError - mixed timeout and failure codes become ALL_RETRIES_EXHAUSTED', async () => {
    const h = harness({ pool: three, script: { w1: [fail('WORKER_TIMEOUT')], w2: [fail('WORKER_ERROR')], w3: [fail('WORKER_TIMEOUT')] } });
    const err = await failure(h.run());
    expect(err.code).toBe('ALL_RETRIES_EXHAUSTED');
  });

  test('finalError - no capacity on the last attempt stays 503 NO_WORKERS_AVAILABLE with Retry-After', async () => {
    // The only worker vanishes (no responders); health would take it out of the registry.
    let pool = [makeWorker('w1')];
    const h = harness({
      pool: () => pool,
      script: {
        w1: [
          () => {
            pool = [];
            throw new RouterError('WORKER_UNAVAILABLE', 'no responders');
          },
        ],
      },
    });
    const err = await failure(h.run());
    expect(h.workers()).toEqual(['w1', null]);
    expect(err).toMatchObject({ code: 'NO_WORKERS_AVAILABLE', status: 503 });
    expect(err.retryAfterMs).toBeGreaterThan(0);
    expect(err.attempts).toHaveLength(2);
  });

  test('finalError - a caller error on a later attempt is returned as it is', () => {
    const ctx = makeCtx();
    ctx.attempts.push(
      { attempt: 1, worker: 'w1', outcome: 'worker_failure', code: 'WORKER_ERROR', durationMs: 1 },
      { attempt: 2, worker: 'w2', outcome: 'caller', code: 'CONTEXT_LENGTH_EXCEEDED', durationMs: 1 },
    );
    const last = new RouterError('CONTEXT_LENGTH_EXCEEDED', 'too long');
    const out = finalError(ctx, last);
    expect(out).toBe(last);
    expect(out.attempts).toHaveLength(2);
  });
});
