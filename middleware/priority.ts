import type { Middleware, RouteContext } from '../src/context';
import { defineMiddleware, type MiddlewareDeps } from '../src/define';
import { RouterError } from '../src/errors';
import type { WorkerInfo } from '../src/types';

export interface PriorityOptions {
  /**
   * Priority classes and their weights (default high 6, normal 3, low 1). While requests wait for
   * a worker slot, free slots go to the classes by smooth weighted round robin: with every class
   * waiting, each gets slots in proportion to its weight, so a higher class is served first and
   * a lower one still progresses (a low request waits at most about total/low weight grants).
   */
  weights: Record<string, number>;
  /** Class of a request whose client names none (or an unknown one). */
  defaultClass: string;
  /** Longest wait for a slot (ms; bounded by the deadline), as select's workerWaitTimeoutMs. */
  waitMs: number;
  /**
   * Refuse at once (503 NO_WORKERS_AVAILABLE with Retry-After: the predicted wait) a request whose
   * predicted wait is longer than the wait it has left, instead of letting it wait in vain.
   */
  shedEarly: boolean;
  /** Weight of the newest sample in the slot-holding-time average (0..1). */
  serviceAlpha: number;
}

export type PriorityDeps = Pick<MiddlewareDeps, 'registry' | 'clock'> & Partial<Pick<MiddlewareDeps, 'breakers' | 'metrics'>>;

interface Waiter {
  readonly cls: string;
  /** Called by the pump: this request may take a slot now. */
  grant(): void;
}

/** Requests of one model waiting for a slot, by class; one pump per model while any wait. */
class ModelQueue {
  readonly byClass = new Map<string, Waiter[]>();
  /** Smooth weighted round robin state of the classes that have waiters. */
  readonly current = new Map<string, number>();
  size = 0;
  /** Grants handed out whose request has not yet taken its slot (begun its attempt). */
  granted = 0;
  pumping = false;
  wake?: AbortController;
  /** Average time an attempt holds a worker slot (ms); 0 until measured. */
  serviceMs = 0;

  add(w: Waiter): void {
    let list = this.byClass.get(w.cls);
    if (!list) this.byClass.set(w.cls, (list = []));
    list.push(w);
    this.size++;
  }

  remove(w: Waiter): boolean {
    const list = this.byClass.get(w.cls);
    const i = list ? list.indexOf(w) : -1;
    if (!list || i < 0) return false;
    list.splice(i, 1);
    this.size--;
    if (list.length === 0) {
      this.byClass.delete(w.cls);
      this.current.delete(w.cls);
    }
    return true;
  }

  /** The next waiter by smooth weighted round robin over the classes that have waiters. */
  next(weights: Record<string, number>): Waiter | undefined {
    let best: string | undefined;
    let total = 0;
    for (const cls of this.byClass.keys()) {
      const w = weights[cls] ?? 1;
      total += w;
      const c = (this.current.get(cls) ?? 0) + w;
      this.current.set(cls, c);
      if (best === undefined || c > this.current.get(best)!) best = cls;
    }
    if (best === undefined) return undefined;
    this.current.set(best, this.current.get(best)! - total);
    const waiter = this.byClass.get(best)![0];
    this.remove(waiter);
    return waiter;
  }

  /**
   * Grants that go before a new request of class `cls` under the round robin: its own class's
   * waiters, and of each other class as many as its weight earns meanwhile (at most all of them).
   */
  ahead(cls: string, weights: Record<string, number>): number {
    const mine = this.byClass.get(cls)?.length ?? 0;
    const w = weights[cls] ?? 1;
    let n = mine;
    for (const [other, list] of this.byClass) {
      if (other === cls) continue;
      n += Math.min(list.length, Math.ceil(((mine + 1) * (weights[other] ?? 1)) / w));
    }
    return n;
  }
}

function load(w: WorkerInfo): number {
  return w.outstanding + w.foreignInFlight;
}

/**
 * priority: orders requests that wait for a worker slot by their client's priority class
 * (`ctx.client.priority`, from the API key), and refuses at once those that could not be served
 * in the time they may wait. Place it after `breaker` and before `select`: when a candidate has a
 * free slot and nobody waits, the request goes straight on; otherwise it queues in its class and
 * a pump hands free slots out by smooth weighted round robin as workers free up (one grant per
 * free slot, so granted requests do not race each other in `select`). A new waiter whose predicted
 * wait (the grants ahead of it × the average slot-holding time ÷ the model's slots) exceeds what it
 * may still wait gets 503 NO_WORKERS_AVAILABLE with that prediction as Retry-After. Without the
 * middleware, `select` waits first come, first served.
 *
 * @example pipeline: [metrics, limits, session, retry, breaker, priority, select, timeout, health]
 */
export const priority = defineMiddleware<PriorityOptions, PriorityDeps>({
  name: 'priority',
  defaults: { weights: { high: 6, normal: 3, low: 1 }, defaultClass: 'normal', waitMs: 5000, shedEarly: true, serviceAlpha: 0.2 },
  fromConfig: (c) => ({
    weights: c.cluster.auth.priorityWeights,
    defaultClass: c.cluster.auth.defaultPriority,
    waitMs: c.cluster.requestRouting.workerWaitTimeoutMs,
  }),
  factory(options, deps): Middleware {
    const { registry, clock } = deps;
    const weights = options.weights;
    // One queue per model asked for (only served models reach the chain), kept with its average.
    const queues = new Map<string, ModelQueue>();
    const classOf = (ctx: RouteContext): string => {
      const c = ctx.client?.priority;
      return c !== undefined && Object.hasOwn(weights, c) ? c : options.defaultClass;
    };
    const usable = (model: string): WorkerInfo[] => registry.forModel(model).filter((w) => !deps.breakers || deps.breakers.allows(w.id));
    const freeSlots = (workers: readonly WorkerInfo[]): number => {
      let free = 0;
      for (const w of workers) free += Math.max(0, w.maxConcurrent - load(w));
      return free;
    };
    const totalSlots = (workers: readonly WorkerInfo[]): number => {
      let n = 0;
      for (const w of workers) n += w.maxConcurrent;
      return n;
    };

    /** Hands out free slots while anyone waits, waking on every change of the workers' load. */
    const pump = async (model: string, q: ModelQueue): Promise<void> => {
      q.pumping = true;
      try {
        while (q.size > 0) {
          let free = freeSlots(usable(model)) - q.granted;
          while (free > 0 && q.size > 0) {
            const w = q.next(weights)!;
            q.granted++;
            free--;
            w.grant();
          }
          if (q.size === 0) break;
          q.wake = new AbortController();
          await registry.waitForChange(q.wake.signal, 1000);
        }
      } finally {
        q.pumping = false;
        q.wake = undefined;
      }
    };

    const queueOf = (model: string): ModelQueue => {
      let q = queues.get(model);
      if (!q) queues.set(model, (q = new ModelQueue()));
      return q;
    };

    /** Waits for a grant; throws the attempt's abort reason, or NO_WORKERS_AVAILABLE at `until`. */
    const wait = (ctx: RouteContext, q: ModelQueue, cls: string, until: number): Promise<void> =>
      new Promise<void>((resolve, reject) => {
        const signal = ctx.attempt.signal;
        const leave = (): void => {
          timer.cancel();
          signal.removeEventListener('abort', onAbort);
          deps.metrics?.queued?.dec({ class: cls });
          if (q.size === 0) q.wake?.abort();
        };
        const waiter: Waiter = {
          cls,
          grant: () => {
            leave();
            resolve();
          },
        };
        const onAbort = (): void => {
          if (q.remove(waiter)) {
            leave();
            reject(signal.reason);
          }
        };
        const timer = clock.timer(Math.max(0, until - clock.now()), () => {
          if (q.remove(waiter)) {
            leave();
            reject(
              new RouterError('NO_WORKERS_AVAILABLE', `every worker serving ${ctx.request.model} stayed busy while this request waited its turn (${options.waitMs} ms at most)`, {
                retryAfterMs: predictedMs(q, cls, ctx.request.model) ?? 1000,
              }),
            );
          }
        });
        q.add(waiter);
        deps.metrics?.queued?.inc({ class: cls });
        signal.addEventListener('abort', onAbort, { once: true });
        if (!q.pumping) void pump(ctx.request.model, q);
      });

    /** How long a new request of class `cls` would wait for its slot (ms), or undefined: unknown yet. */
    const predictedMs = (q: ModelQueue, cls: string, model: string): number | undefined => {
      const slots = totalSlots(usable(model));
      if (q.serviceMs <= 0 || slots === 0) return undefined;
      return ((q.ahead(cls, weights) + 1) * q.serviceMs) / slots;
    };

    return async function priority(ctx: RouteContext, next): Promise<void> {
      const model = ctx.request.model;
      const q = queueOf(model);
      const cls = classOf(ctx);
      // Nobody waits and a slot is free (or nothing is online: select waits for a worker to return).
      if (ctx.candidates.length === 0 || (q.size === 0 && freeSlots(ctx.candidates) - q.granted > 0) || options.waitMs <= 0) {
        return hold(ctx, q, next);
      }
      const now = clock.now();
      const until = Math.min(now + options.waitMs, ctx.deadline);
      const predicted = predictedMs(q, cls, model);
      if (options.shedEarly && predicted !== undefined && predicted > until - now) {
        deps.metrics?.shedEarly?.inc({ class: cls });
        throw new RouterError(
          'NO_WORKERS_AVAILABLE',
          `every worker serving ${model} is busy and ${q.size} request(s) wait: the predicted wait of ${Math.round(predicted)} ms is longer than this request may wait (${Math.round(until - now)} ms)`,
          { retryAfterMs: predicted },
        );
      }
      await wait(ctx, q, cls, until);
      // Granted: take the slot now (select and dispatch run on synchronously to the worker).
      q.granted--;
      return hold(ctx, q, next);
    };

    /** Runs the attempt, learning how long it holds its slot. */
    async function hold(ctx: RouteContext, q: ModelQueue, next: () => Promise<void>): Promise<void> {
      const started = clock.now();
      try {
        await next();
      } finally {
        if (ctx.worker) {
          const ms = clock.now() - started;
          q.serviceMs = q.serviceMs === 0 ? ms : q.serviceMs + options.serviceAlpha * (ms - q.serviceMs);
        }
      }
    }
  },
});
