import type { Middleware, RouteContext } from '../src/context';
import type { RouterMetrics } from '../src/controller/metrics';
import type { WorkerInfo, WorkerRegistry } from '../src/controller/registry';
import { RouterError } from '../src/errors';
import type { Strategy } from '../src/config';

export interface SelectOptions {
  /** `round-robin`, `least-outstanding` (default) or `p2c`. */
  strategy: Strategy;
  /**
   * When every candidate is busy, wait this long (ms) for a free one before failing with
   * NO_WORKERS_AVAILABLE; bounded by the request's deadline (default 5000; 0 sends to a busy
   * worker at once, which answers WORKER_OVERLOADED).
   */
  workerWaitTimeoutMs?: number;
}

export interface SelectDeps {
  /** Random source in [0, 1) for p2c (default Math.random). */
  random?: () => number;
  /** Wakes waiters when capacity may have freed (needed when workerWaitTimeoutMs > 0). */
  registry?: Pick<WorkerRegistry, 'waitForChange'> & Partial<Pick<WorkerRegistry, 'unhealthyFor'>>;
  metrics?: RouterMetrics;
}

/** Busy: this controller's requests plus other controllers' (as of the last heartbeat) fill it. */
export function saturated(w: WorkerInfo): boolean {
  return w.outstanding + w.foreignInFlight >= w.maxConcurrent;
}

/** p2c load score: controller in-flight (plus one, so idle workers still differ) × peak-EWMA latency. */
export function p2cScore(w: WorkerInfo): number {
  return (w.outstanding + 1) * Math.max(1, w.latencyMs);
}

/** A worker's load: this controller's in-flight requests plus other controllers'. */
function load(w: WorkerInfo): number {
  return w.outstanding + w.foreignInFlight;
}

function leastOutstanding(pool: WorkerInfo[]): WorkerInfo {
  let best = pool[0];
  for (const w of pool) if (load(w) < load(best)) best = w;
  return best;
}

/**
 * select: picks the attempt's worker from `ctx.candidates`. Prefers workers this request has not
 * tried yet, honours the session's sticky worker when it is still a candidate and not saturated,
 * and otherwise applies the strategy. Fails with NO_WORKERS_AVAILABLE (503) on an empty pool.
 *
 * @example pipeline: [metrics, session, retry, breaker, select, timeout, health]
 */
export function select(options: SelectOptions, deps: SelectDeps = {}): Middleware {
  const random = deps.random ?? Math.random;
  const waitMs = options.workerWaitTimeoutMs ?? 0;
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

  return async function select(ctx: RouteContext, next): Promise<void> {
    if (ctx.candidates.length === 0) {
      const down = deps.registry?.unhealthyFor?.(ctx.request.model).length ?? 0;
      const why = down > 0 ? `${down} worker(s) serve model ${ctx.request.model}, but their engines are unhealthy (down or not answering)` : `no online worker serves model ${ctx.request.model}`;
      throw new RouterError('NO_WORKERS_AVAILABLE', why, { retryAfterMs: 1000 });
    }
    const tried = new Set<string>();
    for (const a of ctx.attempts) if (a.worker) tried.add(a.worker);
    const untried = ctx.candidates.filter((w) => !tried.has(w.id));
    let pool = untried.length > 0 ? untried : ctx.candidates;
    let free = pool.filter((w) => !saturated(w));
    if (free.length === 0 && waitMs > 0 && deps.registry) {
      // The fourth deadline: waiting for a worker. Counts are live, so re-check on every wake.
      const until = Math.min(ctx.clock.now() + waitMs, ctx.deadline);
      while (free.length === 0 && !ctx.attempt.signal.aborted && ctx.clock.now() < until) {
        await deps.registry.waitForChange(ctx.attempt.signal, until - ctx.clock.now());
        free = pool.filter((w) => !saturated(w));
      }
      if (free.length === 0) {
        if (ctx.attempt.signal.aborted) throw ctx.attempt.signal.reason;
        deps.metrics?.timeouts.inc({ kind: 'wait' });
        throw new RouterError('NO_WORKERS_AVAILABLE', `all ${pool.length} workers serving ${ctx.request.model} stayed busy for ${waitMs} ms`, {
          retryAfterMs: 1000,
        });
      }
    }
    if (free.length > 0) pool = free;
    const sticky = ctx.stickyWorker ? pool.find((w) => w.id === ctx.stickyWorker) : undefined;
    ctx.worker = sticky ?? pick(pool);
    ctx.metrics.selectedWorker = ctx.worker.id;
    await next();
  };
}
