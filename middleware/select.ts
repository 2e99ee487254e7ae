import { candidatesFor } from '../src/attempt';
import { rendezvousPick } from '../src/rendezvous';
import type { Strategy } from '../src/config';
import type { Admission, Middleware, RouteContext } from '../src/context';
import { defineMiddleware, type MiddlewareDeps } from '../src/define';
import { RouterError } from '../src/errors';
import type { WorkerInfo } from '../src/types';

export interface SelectOptions {
  /** `round-robin`, `least-outstanding` (default) or `p2c`. */
  strategy: Strategy;
  /**
   * How long (ms, default 5000) to wait, bounded by the request's deadline, when every worker for
   * the model is busy (then NO_WORKERS_AVAILABLE) or offline (restarting, a NATS blip). 0: no
   * wait; a busy worker is sent the request at once and answers WORKER_OVERLOADED.
   */
  workerWaitTimeoutMs: number;
}

/** `registry` is needed for waiting (workerWaitTimeoutMs > 0); `events` hears of wait timeouts. */
export type SelectDeps = Partial<Pick<MiddlewareDeps, 'random' | 'registry' | 'events'>>;

/** Busy: this controller's requests plus other controllers' (as of the last heartbeat) fill it. */
export function saturated(w: WorkerInfo): boolean {
  return w.outstanding + w.foreignInFlight >= w.maxConcurrent;
}

/** p2c load score: controller in-flight (plus one, so idle workers still differ) × peak-EWMA latency. */
export function p2cScore(w: WorkerInfo): number {
  return (w.outstanding + 1) * Math.max(1, w.latencyMs);
}

/** Load: this controller's in-flight requests plus other controllers'. */
function load(w: WorkerInfo): number {
  return w.outstanding + w.foreignInFlight;
}

function leastOutstanding(pool: WorkerInfo[]): WorkerInfo {
  let best = pool[0];
  for (const w of pool) if (load(w) < load(best)) best = w;
  return best;
}

function allowedByAll(admissions: readonly Admission[], w: WorkerInfo): boolean {
  for (const a of admissions) if (!a.allows(w)) return false;
  return true;
}

function admittedByAll(admissions: readonly Admission[], w: WorkerInfo): boolean {
  for (const a of admissions) if (!a.admit(w)) return false;
  return true;
}

/**
 * select: picks the attempt's worker from `ctx.candidates`, and is the one place that waits for
 * one. When every known worker for the model is offline it waits for one to come back; when every
 * candidate is saturated it waits for a free one; both bounded by `workerWaitTimeoutMs` and the
 * deadline. Prefers workers this request has not tried yet, honours the session's sticky worker
 * when it is still a candidate and not saturated (else moves the session by rendezvous hash over
 * the pool), and otherwise applies the strategy. The chosen worker must pass the attempt's
 * admissions (the breaker's permit); a refused one is dropped and another picked. Fails with NO_WORKERS_AVAILABLE (503) on an empty pool.
 *
 * @example pipeline: [metrics, session, retry, breaker, select, timeout, health]
 */
export const select = defineMiddleware<SelectOptions, SelectDeps>({
  name: 'select',
  defaults: { strategy: 'least-outstanding', workerWaitTimeoutMs: 5000 },
  fromConfig: (c) => ({ strategy: c.cluster.requestRouting.strategy, workerWaitTimeoutMs: c.cluster.requestRouting.workerWaitTimeoutMs }),
  factory(options, deps = {}): Middleware {
    const random = deps.random ?? Math.random;
    const waitMs = options.workerWaitTimeoutMs;
    const registry = deps.registry;
    let turn = 0;
    const pick = (pool: WorkerInfo[]): WorkerInfo => {
      if (pool.length === 1) return pool[0];
      switch (options.strategy) {
        case 'round-robin': {
          // Order by id so the rotation is stable while workers come and go.
          const sorted = [...pool].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
          return sorted[turn++ % sorted.length];
        }
        case 'p2c': {
          const i = Math.floor(random() * pool.length);
          let j = Math.floor(random() * (pool.length - 1));
          if (j >= i) j++;
          return p2cScore(pool[j]) < p2cScore(pool[i]) ? pool[j] : pool[i];
        }
        default:
          return leastOutstanding(pool);
      }
    };

    /**
     * Waits, until `until`, for `found` to return something; counts are live, so re-check on every
     * wake. Resolves with nothing to pass on: the caller must run `found()` again in its own
     * continuation, because one freed slot wakes every waiter, and a result handed across an
     * `await` would be stale by the time the caller acts on it (each waiter would see the same free
     * slot before any of them took it).
     */
    const waitUntilFound = async (ctx: RouteContext, until: number, found: () => unknown[]): Promise<void> => {
      while (found().length === 0 && registry && !ctx.attempt.signal.aborted && ctx.clock.now() < until) {
        await registry.waitForChange(ctx.attempt.signal, until - ctx.clock.now());
      }
      if (ctx.attempt.signal.aborted) throw ctx.attempt.signal.reason;
    };

    return async function select(ctx: RouteContext, next): Promise<void> {
      const admissions = ctx.attempt.admissions;
      const until = Math.min(ctx.clock.now() + waitMs, ctx.deadline);
      const canWait = waitMs > 0 && registry !== undefined;
      if (ctx.candidates.length === 0 && canWait && registry.knowsModel(ctx.request.model)) {
        // Known workers for the model are all offline (restarting, NATS blip): wait for one to return.
        const found = (): WorkerInfo[] => candidatesFor(ctx, registry).filter((w) => allowedByAll(admissions, w));
        await waitUntilFound(ctx, until, found);
        ctx.candidates = found();
        if (ctx.candidates.length === 0) deps.events?.emit({ type: 'wait-timeout', ctx });
      }
      if (ctx.candidates.length === 0) {
        const down = registry?.unhealthyFor(ctx.request.model).length ?? 0;
        const why =
          down > 0
            ? `${down} worker(s) serve model ${ctx.request.model}, but their engines are unhealthy (down or not answering)`
            : `no online worker serves model ${ctx.request.model}`;
        throw new RouterError('NO_WORKERS_AVAILABLE', why, { retryAfterMs: 1000 });
      }
      const tried = new Set<string>();
      for (const a of ctx.attempts) if (a.worker) tried.add(a.worker);
      const poolOf = (candidates: WorkerInfo[]): WorkerInfo[] => {
        const untried = candidates.filter((w) => !tried.has(w.id));
        return untried.length > 0 ? untried : candidates;
      };
      let pool = poolOf(ctx.candidates);
      const unsaturated = (): WorkerInfo[] => pool.filter((w) => !saturated(w));
      let free = unsaturated();
      const dir = registry;
      if (free.length === 0 && canWait && dir) {
        // While waiting, the pool stays live: a candidate that went offline, started draining or
        // was lost with our NATS connection drops out, and the attempt's admissions (a hedge's
        // exclusion of its primary) still apply. Only workers the chain before select let through
        // (breaker, prefix) are considered. Built once per wait, never on the path that needs none.
        const allowed = new Set(ctx.candidates.map((w) => w.id));
        const livePool = (): WorkerInfo[] => poolOf(candidatesFor(ctx, dir).filter((w) => allowed.has(w.id) && allowedByAll(admissions, w)));
        while (free.length === 0) {
          // The fourth deadline: waiting for a worker. The check that follows the wait and the
          // dispatch that takes the slot run in one continuation, with no await between them.
          await waitUntilFound(ctx, until, () => livePool().filter((w) => !saturated(w)));
          pool = livePool();
          free = unsaturated();
          if (free.length === 0 && ctx.clock.now() < until) continue;
          if (free.length === 0) {
            deps.events?.emit({ type: 'wait-timeout', ctx });
            throw new RouterError('NO_WORKERS_AVAILABLE', `all ${pool.length} workers serving ${ctx.request.model} stayed busy for ${waitMs} ms`, {
              retryAfterMs: 1000,
            });
          }
        }
      }
      if (free.length > 0) pool = free;
      for (;;) {
        const sticky = ctx.stickyWorker ? pool.find((w) => w.id === ctx.stickyWorker) : undefined;
        // A session whose worker cannot take this attempt falls back by the same hash over what is
        // left, so every controller moves it to the same place (the move is then shared by `session`).
        const fallback = ctx.stickyWorker && ctx.sessionId ? rendezvousPick(ctx.sessionId, pool, (w) => w.id) : undefined;
        const chosen = sticky ?? fallback ?? pick(pool);
        if (admissions.length === 0 || admittedByAll(admissions, chosen)) {
          ctx.worker = chosen;
          break;
        }
        pool = pool.filter((w) => w !== chosen);
        if (pool.length === 0) {
          // Never delivered: retried at once on another worker, and not counted against this one.
          throw new RouterError('WORKER_UNAVAILABLE', `worker ${chosen.id} was refused admission (its breaker's probe permits are taken)`, {
            outcome: 'not_delivered',
            worker: chosen.id,
          });
        }
      }
      ctx.metrics.selectedWorker = ctx.worker.id;
      // Returned, not awaited: this frame (its pool, closures and tried set) ends here rather than
      // staying held for as long as the attempt runs. next() still runs in this continuation.
      return next();
    };
  },
});
