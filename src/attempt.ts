/**
 * The attempt runner: runs one attempt of a request through the part of the chain after its
 * boundary (`retry`, or any middleware defined with `boundary: true`), with fresh attempt state,
 * and records it. A boundary gets the runner as an argument and calls it once per attempt; without
 * a boundary the assembler runs it once. Exported so that tests of a boundary use this very
 * runner rather than a stand-in.
 */
import { newAttempt, type RouteContext } from './context';
import { isRouterError, toRouterError, type AttemptRecord, type RouterError } from './errors';
import type { Listeners } from './listeners';
import { canServe } from './protocol-v2';
import type { WorkerDirectory, WorkerInfo } from './types';

/** Runs one attempt of `ctx` and records it in `ctx.attempts`; rejects with its RouterError. */
export type AttemptRunner = (ctx: RouteContext) => Promise<void>;

/** What the router tells its observers (the metrics middleware is one). */
export type RouterEvent =
  /** An attempt ended, recorded in `ctx.attempts`; `error` when it failed. */
  | { type: 'attempt'; ctx: RouteContext; record: AttemptRecord; error?: RouterError }
  /** `select` waited the full `workerWaitTimeoutMs` and found no worker. */
  | { type: 'wait-timeout'; ctx: RouteContext };

export interface AttemptRunnerOptions {
  /** The attempt's candidates, before any middleware narrows them (default: none). */
  candidates?: (ctx: RouteContext) => WorkerInfo[];
  /** Told of every attempt's end. */
  events?: Listeners<RouterEvent>;
}

/** Online workers serving the request's model (resumes need engines that continue a partial answer). */
export function candidatesFor(ctx: RouteContext, registry: Pick<WorkerDirectory, 'forModel'>): WorkerInfo[] {
  const all = registry.forModel(ctx.request.model).filter((w) => canServe(w, ctx.request));
  return ctx.continuation === undefined ? all : all.filter((w) => w.continuation);
}

/**
 * Makes the runner of `chain` (the attempt part, ending in dispatch). Each run: a fresh
 * AbortController linked to the request's signal, fresh attempt state and candidates, the chain,
 * then one AttemptRecord and one `attempt` event, success or not.
 */
export function attemptRunner(chain: (ctx: RouteContext) => Promise<void>, options: AttemptRunnerOptions = {}): AttemptRunner {
  const { candidates, events } = options;
  return async function runAttempt(ctx: RouteContext): Promise<void> {
    const clock = ctx.clock;
    const started = clock.now();
    const controller = new AbortController();
    const onRequestAbort = (): void => controller.abort(ctx.signal.reason);
    if (ctx.signal.aborted) controller.abort(ctx.signal.reason);
    else ctx.signal.addEventListener('abort', onRequestAbort, { once: true });
    // Numbered in start order: a hedge starts while the attempt beside it still runs.
    const number = Math.max(startedCount.get(ctx.attempts) ?? 0, ctx.attempts.length) + 1;
    startedCount.set(ctx.attempts, number);
    ctx.attempt = newAttempt(number, started, controller);
    ctx.worker = undefined;
    // A function, so the narrowing of `ctx.worker = undefined` above does not stick across the chain.
    const selected = (): string | null => ctx.worker?.id ?? null;
    let record: AttemptRecord;
    try {
      ctx.candidates = candidates ? candidates(ctx) : [];
      if (controller.signal.aborted) throw controller.signal.reason;
      await chain(ctx);
      record = { attempt: ctx.attempt.number, worker: selected(), outcome: 'success', code: null, durationMs: round2(clock.now() - started) };
      if (ctx.attempt.hedge) record.hedge = true;
      ctx.attempts.push(record);
      events?.emit({ type: 'attempt', ctx, record });
    } catch (e) {
      const err = toRouterError(isRouterError(e) || !controller.signal.aborted ? e : controller.signal.reason);
      const worker = selected();
      record = { attempt: ctx.attempt.number, worker, outcome: err.outcome, code: err.code, durationMs: round2(clock.now() - started) };
      if (ctx.attempt.hedge) record.hedge = true;
      ctx.attempts.push(record);
      if (worker && err.outcome !== 'cancelled' && err.outcome !== 'caller' && !ctx.metrics.failedWorkers.includes(worker)) {
        ctx.metrics.failedWorkers.push(worker);
      }
      if (TIMEOUT_CODES.has(err.code)) ctx.metrics.timeouts++;
      events?.emit({ type: 'attempt', ctx, record, error: err });
      throw err;
    } finally {
      ctx.signal.removeEventListener('abort', onRequestAbort);
      const worker = selected();
      if (worker) ctx.metrics.selectedWorker = worker;
      // Hedges are not retries.
      ctx.metrics.retryCount = Math.max(0, ctx.attempts.length - (ctx.metrics.hedges ?? 0) - 1);
    }
  };
}

/** Attempts started per request (keyed by its `attempts` list, which forks of the context share). */
const startedCount = new WeakMap<AttemptRecord[], number>();

/** The codes of the attempt and request deadlines. */
export const TIMEOUT_CODES: ReadonlySet<string> = new Set(['WORKER_TIMEOUT', 'STREAM_IDLE_TIMEOUT', 'REQUEST_TIMEOUT']);

function round2(ms: number): number {
  return Math.round(ms * 100) / 100;
}
