import type { AttemptRunner } from '../src/attempt';
import type { Middleware, RouteContext } from '../src/context';
import { defineMiddleware, type MiddlewareDeps } from '../src/define';
import { isRetryableOutcome, RouterError, toRouterError } from '../src/errors';

export interface RetryOptions {
  /** When false, one attempt only (default true). */
  enabled: boolean;
  /** Retries after the first attempt (default 2). */
  maxRetries: number;
  /** Backoff base (ms, default 100): delay n is uniform in [0, min(cap, base·2ⁿ)]. */
  retryDelayMs: number;
  /** Backoff cap (ms, default 1000). */
  maxRetryDelayMs: number;
  /** No retry when less than this is left of the request's deadline after the delay (ms, default 50). */
  minAttemptMs: number;
  /** Codes that may be retried; only retryable outcome classes ever are (default: the five below). */
  retryOnErrors: string[];
  /** Continue a stream that broke after commit on another worker (cluster.streaming.resume, default true). */
  resume: boolean;
  /** Resumes of one stream at most (cluster.streaming.maxResumes, default 2). */
  maxResumes: number;
}

export interface RetryDeps extends Pick<MiddlewareDeps, 'clock' | 'budget'> {
  /** Random source in [0, 1) for jitter (default Math.random). */
  random?: () => number;
  /** A stream is resumed only while some known worker can continue it. */
  registry?: Pick<MiddlewareDeps['registry'], 'knowsContinuation'>;
}

/** Full-jitter exponential backoff (AWS architecture blog): uniform in [0, min(cap, base·2ⁿ)]. */
export function backoffDelay(retry: number, options: Pick<RetryOptions, 'retryDelayMs' | 'maxRetryDelayMs'>, random: () => number): number {
  const ceiling = Math.min(options.maxRetryDelayMs, options.retryDelayMs * 2 ** Math.min(retry, 30));
  return random() * ceiling;
}

/**
 * The error the client gets when no more attempts will be made. One attempt: its own error.
 * Several: a capacity error stays what it is (503 with Retry-After); the same non-failure code on
 * every attempt stays that code (504 WORKER_TIMEOUT for a hung worker), and so does the last of
 * attempts that all timed out (ambiguous: attempt limits, then the request deadline); anything else is
 * ALL_RETRIES_EXHAUSTED (502). The attempts are always listed.
 */
export function finalError(ctx: RouteContext, last: RouterError): RouterError {
  const attempts = [...ctx.attempts];
  if (ctx.sink?.committed && last.outcome !== 'committed' && last.outcome !== 'cancelled') {
    // A resume attempt failed before its own first chunk: to the client the stream still broke.
    return new RouterError('STREAM_INTERRUPTED', `stream broke and could not be resumed: ${last.message}`, { outcome: 'committed', attempts, cause: last });
  }
  if (
    attempts.length <= 1 ||
    last.code === 'REQUEST_TIMEOUT' ||
    last.outcome === 'no_capacity' ||
    last.outcome === 'caller' ||
    last.outcome === 'committed' ||
    last.outcome === 'cancelled'
  ) {
    last.attempts = attempts;
    return last;
  }
  const sameCode = attempts.every((a) => a.code === last.code);
  // Attempt limits and then the request deadline: every attempt timed out, so it is still a 504.
  const allAmbiguous = last.outcome === 'ambiguous' && attempts.every((a) => a.outcome === 'ambiguous');
  if ((sameCode || allAmbiguous) && last.outcome !== 'worker_failure') {
    last.attempts = attempts;
    return last;
  }
  const summary = attempts.map((a) => `#${a.attempt} ${a.worker ?? '-'}: ${a.code ?? a.outcome}`).join('; ');
  return new RouterError('ALL_RETRIES_EXHAUSTED', `all ${attempts.length} attempts failed (${summary})`, { attempts, cause: last });
}

/** A broken stream may continue elsewhere: resume on, budget left, the client still there. */
function canResume(ctx: RouteContext, err: RouterError, options: RetryOptions, deps: RetryDeps): boolean {
  if (!options.enabled || !options.resume || ctx.signal.aborted) return false;
  if (err.outcome === 'cancelled' || err.outcome === 'caller' || err.code === 'REQUEST_TIMEOUT') return false;
  // The client got a tool call or several choices: no engine continues those exactly.
  if (ctx.sink?.resumable === false) return false;
  if (ctx.metrics.resumes >= options.maxResumes || ctx.deadline - ctx.clock.now() < options.minAttemptMs) return false;
  // A resume is a retry too: the budget keeps resumes from multiplying load in an outage.
  if (!deps.budget.canRetry()) return false;
  // No known engine can continue a partial answer: say so now rather than wait for one.
  return !deps.registry || deps.registry.knowsContinuation(ctx.request.model);
}

/**
 * retry: a boundary: runs the part of the chain after it through `runAttempt` up to
 * 1 + maxRetries times and never calls `next`. Retries only retryable outcome classes whose code
 * is in `retryOnErrors`, never after a stream committed, never past the deadline, and only while
 * the controller-wide retry budget allows. "No responders" is retried at once; other failures
 * after full-jitter backoff, never shorter than a worker's Retry-After. `select` keeps retries off
 * tried workers.
 */
export const retry = defineMiddleware<RetryOptions, RetryDeps>({
  name: 'retry',
  boundary: true,
  defaults: {
    enabled: true,
    maxRetries: 2,
    retryDelayMs: 100,
    maxRetryDelayMs: 1000,
    minAttemptMs: 50,
    retryOnErrors: ['WORKER_UNAVAILABLE', 'WORKER_OVERLOADED', 'WORKER_TIMEOUT', 'WORKER_ERROR', 'NATS_DISCONNECTED'],
    resume: true,
    maxResumes: 2,
  },
  fromConfig: (c) => {
    const { budget: _budget, ...retry } = c.cluster.requestRouting.retry;
    return { ...retry, resume: c.cluster.streaming.resume, maxResumes: c.cluster.streaming.maxResumes };
  },
  factory: retryMiddleware,
});

function retryMiddleware(options: RetryOptions, deps: RetryDeps, runAttempt: AttemptRunner): Middleware {
  const random = deps.random ?? Math.random;
  const retryable = new Set(options.retryOnErrors);
  return async function retry(ctx: RouteContext): Promise<void> {
    for (;;) {
      let err: RouterError;
      // What may follow this attempt: the timeout middleware keeps part of the deadline for it.
      const more = ctx.sink?.committed ? (options.maxResumes ?? 0) - ctx.metrics.resumes : options.maxRetries - ctx.attempts.length;
      ctx.retriesLeft = options.enabled && deps.budget.canRetry() ? Math.max(0, more) : 0;
      try {
        await runAttempt(ctx);
        deps.budget.onSuccess();
        return;
      } catch (e) {
        err = toRouterError(e);
      }
      const classRetryable = isRetryableOutcome(err.outcome);
      // A full worker's own refusal (WORKER_OVERLOADED from the worker, token-checked; nothing was
      // generated) costs the cluster no work: it takes no budget token. Several controllers see
      // each other's load only by heartbeat, so such refusals are routine under saturation and
      // must not run the budget dry for the real failures it exists for. maxRetries and the
      // Retry-After backoff bound them. Other rejections (a lost NATS connection, an engine's own
      // 429/503 relayed) may have cost work and stay on the budget.
      const refusedFull = err.code === 'WORKER_OVERLOADED' && err.fromWorker === true && err.outcome === 'rejected';
      if ((classRetryable && !refusedFull) || err.outcome === 'committed') deps.budget.onFailure();
      if (ctx.sink?.committed) {
        // After the commit point nothing is retried blindly: only resumed, where allowed.
        if (ctx.sink.tooLongToResume && options.resume && options.enabled) {
          err.message += ' (no resume: the stream is longer than cluster.streaming.maxResumeChars)';
          throw finalError(ctx, err);
        }
        if (!canResume(ctx, err, options, deps)) throw finalError(ctx, err);
        ctx.continuation = ctx.sink.streamed;
        ctx.metrics.resumes++;
        ctx.log.warn({ code: err.code, worker: err.worker, deliveredChars: ctx.continuation.length }, 'resuming stream on another worker');
        continue;
      }
      const retriesDone = ctx.attempts.length - 1;
      if (
        !options.enabled ||
        !classRetryable ||
        !retryable.has(err.code) ||
        ctx.signal.aborted ||
        retriesDone >= options.maxRetries
      ) {
        throw finalError(ctx, err);
      }
      if (!refusedFull && !deps.budget.canRetry()) {
        const attempts = [...ctx.attempts];
        throw new RouterError('RETRY_BUDGET_EXHAUSTED', `attempt failed (${err.code}) and the controller's retry budget is spent; not retrying`, {
          attempts,
          retryAfterMs: 1000,
          cause: err,
        });
      }
      let delay = err.outcome === 'not_delivered' ? 0 : backoffDelay(retriesDone, options, random);
      if (err.outcome === 'rejected' && err.retryAfterMs !== undefined) delay = Math.max(delay, err.retryAfterMs);
      if (ctx.deadline - ctx.clock.now() - delay < options.minAttemptMs) throw finalError(ctx, err);
      ctx.log.debug({ attempt: ctx.attempts.length, code: err.code, worker: err.worker, delayMs: Math.round(delay) }, 'retrying');
      if (delay > 0) {
        try {
          await deps.clock.sleep(delay, ctx.signal);
        } catch (e) {
          // The deadline passed, or the client left, during the backoff: still one honest answer.
          throw finalError(ctx, toRouterError(e));
        }
      }
    }
  };
}
