import { AdaptiveLimits } from '../src/adaptive-limits';
import { candidatesFor, type AttemptRunner } from '../src/attempt';
import type { Clock, ClockTimer } from '../src/clock';
import type { AttemptState, HedgeReport, Middleware, RouteContext, StreamSink } from '../src/context';
import { defineMiddleware, type MiddlewareDeps } from '../src/define';
import { RouterError, toRouterError } from '../src/errors';
import type { WorkerInfo } from '../src/types';
import { saturated } from './select';
import { promptTokenEstimate } from './timeout';

export interface HedgeBudgetOptions {
  /** Hedge tokens each attempt adds: at most this share of attempts is hedged (default 0.05). */
  ratio: number;
  /** Bucket size, and what it holds at start (default 10): the largest burst of hedges. */
  maxTokens: number;
  /** Tokens added per second whatever the traffic, so a quiet cluster may still hedge (default 0.1). */
  minPerSecond: number;
}

export interface HedgeOptions {
  /** When false, attempts run one at a time, never hedged (default true). */
  enabled: boolean;
  /** The hedge point: this percentile (0..1) of the worker's recent times to first token (default 0.95). */
  percentile: number;
  /** Times to first token of a worker and model needed before it is hedged (default 20). */
  minSamples: number;
  /** The hedge point is never earlier than this after the worker was chosen (ms, default 50). */
  minDelayMs: number;
  /** The hedge point of a worker whose times are not learned yet (ms; default 0: not hedged until learned). */
  initialDelayMs: number;
  /** The hedge point grows by this per 1000 prompt tokens, as the TTFT limit does (ms, default 2000). */
  firstChunkMsPer1kPromptTokens: number;
  /** The hedges' own token bucket: one token per hedge. */
  budget: HedgeBudgetOptions;
}

export type HedgeDeps = Pick<MiddlewareDeps, 'clock'> & Partial<Pick<MiddlewareDeps, 'registry' | 'breakers' | 'metrics'>>;

/** Hedge outcomes, the label values of mlx_router_hedges_total. */
export type HedgeOutcome = 'won' | 'lost' | 'failed' | 'skipped_budget' | 'skipped_no_worker';

/**
 * The hedges' token bucket: every attempt adds `ratio`, time adds `minPerSecond`, a hedge takes
 * one; never more than `maxTokens`. Over a run, hedges ≤ ratio × attempts + minPerSecond × seconds
 * + maxTokens.
 */
export class HedgeBudget {
  private tokens: number;
  private last: number;

  constructor(
    private readonly options: HedgeBudgetOptions,
    private readonly clock: Pick<Clock, 'now'>,
  ) {
    this.tokens = options.maxTokens;
    this.last = clock.now();
  }

  get available(): number {
    this.refill();
    return this.tokens;
  }

  private refill(): void {
    const now = this.clock.now();
    this.tokens = Math.min(this.options.maxTokens, this.tokens + (Math.max(0, now - this.last) / 1000) * this.options.minPerSecond);
    this.last = now;
  }

  /** One attempt ran: its share of a hedge. */
  onAttempt(): void {
    this.refill();
    this.tokens = Math.min(this.options.maxTokens, this.tokens + this.options.ratio);
  }

  /** Takes a hedge's token; false when the budget is spent. */
  take(): boolean {
    this.refill();
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

/** One attempt of the race, on its own fork of the request's context. */
interface Branch {
  ctx: RouteContext;
  readonly hedge: boolean;
  attempt?: AttemptState;
  worker?: WorkerInfo;
  /** When `select` chose its worker (clock ms). */
  chosenAt?: number;
  settled: boolean;
  ok: boolean;
  error?: RouterError;
}

/**
 * hedge: a boundary inside `retry` (it gets the attempt runner; retry runs it once per attempt).
 * It runs the attempt and, when no first token showed by the hedge point (a percentile of the
 * worker's recent times to first token for the model, learned from the attempts it runs), starts
 * the same request on another worker. The first attempt to produce a token wins; the other gets
 * HEDGE_LOST (outcome `cancelled`: the worker is sent a cancel, and its breaker never counts it).
 * Streams write nothing to the client before the race is decided, since the first token decides
 * it. Hedges draw on their own token bucket (`budget`), not on retry's. Each hedge point reached
 * shows in `metadata.hedge` and in mlx_router_hedges_total{outcome}: won, lost, failed (the hedge
 * failed by itself), skipped_budget, skipped_no_worker. Never hedged: a resume (its stream is
 * committed), and a buffered attempt to a worker that reports no progress (no first token shows).
 *
 * @example pipeline: [metrics, session, retry, hedge, breaker, select, timeout, health]
 */
export const hedge = defineMiddleware<HedgeOptions, HedgeDeps>({
  name: 'hedge',
  boundary: true,
  defaults: {
    enabled: true,
    percentile: 0.95,
    minSamples: 20,
    minDelayMs: 50,
    initialDelayMs: 0,
    firstChunkMsPer1kPromptTokens: 2000,
    budget: { ratio: 0.05, maxTokens: 10, minPerSecond: 0.1 },
  },
  fromConfig: (c) => ({
    ...c.cluster.requestRouting.hedge,
    budget: { ...c.cluster.requestRouting.hedge.budget },
    firstChunkMsPer1kPromptTokens: c.cluster.requestRouting.firstChunkMsPer1kPromptTokens,
  }),
  factory: hedgeMiddleware,
});

function hedgeMiddleware(options: HedgeOptions, deps: HedgeDeps, runAttempt: AttemptRunner): Middleware {
  if (!options.enabled) return (ctx) => runAttempt(ctx);
  const learned = new AdaptiveLimits({ enabled: true, factor: 1, floorMs: 0, minSamples: options.minSamples });
  const budget = new HedgeBudget(options.budget, deps.clock);
  const count = (outcome: HedgeOutcome): void => deps.metrics?.hedges?.inc({ outcome });

  return async function hedge(ctx: RouteContext): Promise<void> {
    budget.onAttempt();
    // A resume writes to a committed stream at once: nothing to race.
    if (ctx.sink?.committed || ctx.signal.aborted) return runAttempt(ctx);
    const clock = ctx.clock;
    const model = ctx.request.model;
    let allowanceMs: number | undefined;
    const allowance = (): number => (allowanceMs ??= options.firstChunkMsPer1kPromptTokens > 0 ? (options.firstChunkMsPer1kPromptTokens * promptTokenEstimate(ctx)) / 1000 : 0);
    const branches: Branch[] = [];
    let winner: Branch | undefined;
    let hedged: Branch | undefined;
    let report: HedgeReport | undefined;
    let timer: ClockTimer | undefined;
    let over = false;
    let finish: () => void = () => undefined;
    const finished = new Promise<void>((resolve) => (finish = resolve));

    /** `b` produced the first token (or answered) first: the others are cancelled. */
    const declare = (b: Branch): boolean => {
      if (winner) return winner === b;
      winner = b;
      timer?.cancel();
      // The client's view follows the winner from now on (a stream's headers name its worker).
      ctx.worker = b.worker;
      if (b.attempt) ctx.attempt = b.attempt;
      for (const o of branches) {
        if (o !== b && !o.settled) {
          const id = o.worker?.id;
          o.attempt?.abort(new RouterError('HEDGE_LOST', `attempt on worker ${id ?? '-'} lost the hedge race to worker ${b.worker?.id ?? '-'}`, { worker: id }));
        }
      }
      return true;
    };

    const onProgress = (b: Branch): void => {
      const first = b.attempt?.firstTokenAt;
      if (first === undefined || winner) return;
      if (b.worker && b.chosenAt !== undefined) learned.observeTtft(b.worker.id, model, Math.max(0, first - b.chosenAt - allowance()));
      declare(b);
    };

    const hedgePoint = (w: WorkerInfo): number | undefined => {
      const p = learned.ttftPercentile(w.id, model, options.percentile, options.minSamples);
      const base = p ?? (options.initialDelayMs > 0 ? options.initialDelayMs : undefined);
      return base === undefined ? undefined : Math.max(options.minDelayMs, base) + allowance();
    };

    const onHedgePoint = (primary: Branch, afterMs: number): void => {
      if (over || winner || primary.settled || ctx.signal.aborted || !primary.worker) return;
      const first = primary.worker.id;
      const others = deps.registry
        ? candidatesFor(ctx, deps.registry).filter((w) => w.id !== first && !saturated(w) && (deps.breakers?.allows(w.id) ?? true))
        : undefined;
      if (others && others.length === 0) {
        report = { outcome: 'skipped_no_worker', afterMs };
        count('skipped_no_worker');
        return;
      }
      if (!budget.take()) {
        report = { outcome: 'skipped_budget', afterMs };
        count('skipped_budget');
        return;
      }
      ctx.metrics.hedges = (ctx.metrics.hedges ?? 0) + 1;
      report = { outcome: 'pending', afterMs };
      ctx.log.debug({ worker: first, afterMs: Math.round(afterMs) }, 'hedging: no first token yet');
      hedged = start(true, first);
    };

    const onChosen = (b: Branch): void => {
      if (b.hedge) {
        if (report) report.worker = b.worker?.id;
        return;
      }
      const w = b.worker!;
      // A buffered attempt to a worker that sends no progress shows no first token before its answer.
      if (!ctx.stream && !(w.progressMs > 0)) return;
      const at = hedgePoint(w);
      if (at === undefined) return;
      timer = clock.timer(at, () => onHedgePoint(b, at));
    };

    const onSettled = (b: Branch): void => {
      if (b.ok) declare(b);
      if (!b.hedge) timer?.cancel();
      if (branches.every((o) => o.settled)) {
        over = true;
        timer?.cancel();
        finish();
      }
    };

    /** A fork of the request's context for one attempt of the race (see BranchContext). */
    const fork = (hedge: boolean, exclude?: string): Branch => {
      const b: Branch = { ctx: undefined as unknown as RouteContext, hedge, settled: false, ok: false };
      const sink = ctx.sink;
      b.ctx = BranchContext.of(ctx, sink ? branchSink(sink, () => winner === b || (winner === undefined && declare(b))) : undefined, {
        attempt(a) {
          b.attempt = a;
          if (hedge) a.hedge = true;
          // First in the list, so a breaker never grants a permit to the worker refused here.
          if (exclude !== undefined) a.admissions.unshift({ allows: (w) => w.id !== exclude, admit: (w) => w.id !== exclude });
          a.onProgress(() => onProgress(b));
        },
        worker(w) {
          if (b.worker === w) return;
          b.worker = w;
          b.chosenAt = clock.now();
          onChosen(b);
        },
      });
      return b;
    };

    const start = (isHedge: boolean, exclude?: string): Branch => {
      const b = fork(isHedge, exclude);
      branches.push(b);
      runAttempt(b.ctx).then(
        () => settled(b, undefined),
        (e: unknown) => settled(b, toRouterError(e)),
      );
      return b;
    };

    const settled = (b: Branch, error: RouterError | undefined): void => {
      b.settled = true;
      if (error) b.error = error;
      else b.ok = true;
      onSettled(b);
    };

    const primary = start(false);
    await finished;

    const final = winner ?? primary;
    ctx.worker = final.worker;
    if (final.attempt) ctx.attempt = final.attempt;
    if (final.ctx.result !== undefined) ctx.result = final.ctx.result;
    if (final.ctx.end !== undefined) ctx.end = final.ctx.end;
    if (final.worker) ctx.metrics.selectedWorker = final.worker.id;
    ctx.metrics.retryCount = Math.max(0, ctx.attempts.filter((a) => !a.hedge).length - 1);
    if (hedged && report) {
      const outcome: HedgeOutcome = winner === hedged ? 'won' : hedged.error?.code === 'HEDGE_LOST' ? 'lost' : 'failed';
      report.outcome = outcome;
      count(outcome);
    }
    if (report) ctx.metrics.hedge = report;
    if (final.ok) return;
    throw final.error ?? new RouterError('INTERNAL_ERROR', 'hedge: an attempt ended with neither answer nor error');
  };
}

/** What a BranchContext tells its race: a fresh attempt began, `select` chose a worker. */
interface BranchHooks {
  attempt(a: AttemptState): void;
  worker(w: WorkerInfo): void;
}

/**
 * A fork of the request's context for one attempt of a hedge race: every field of the request's
 * context copied (so `attempts`, `metrics` and `state` stay shared, and fields other middleware
 * add are there too), with attempt state, worker, answer and sink of its own. `attempt` and
 * `worker` are accessors, so the runner's fresh attempt and `select`'s choice are seen as they
 * happen. A class, so every fork has the same shape: forks are made for every attempt.
 */
class BranchContext {
  private currentAttempt: AttemptState | undefined;
  private currentWorker: WorkerInfo | undefined;
  private hooks: BranchHooks | undefined;
  sink?: StreamSink;

  constructor(parent: RouteContext, sink: StreamSink | undefined, hooks: BranchHooks) {
    // Copies through the accessors below too; the hooks are not set yet, so nothing is told.
    Object.assign(this, parent);
    this.sink = sink;
    this.hooks = hooks;
  }

  static of(parent: RouteContext, sink: StreamSink | undefined, hooks: BranchHooks): RouteContext {
    return new BranchContext(parent, sink, hooks) as unknown as RouteContext;
  }

  get attempt(): AttemptState {
    return this.currentAttempt as AttemptState;
  }

  set attempt(a: AttemptState) {
    this.currentAttempt = a;
    this.hooks?.attempt(a);
  }

  get worker(): WorkerInfo | undefined {
    return this.currentWorker;
  }

  set worker(w: WorkerInfo | undefined) {
    this.currentWorker = w;
    if (w) this.hooks?.worker(w);
  }
}

/**
 * A branch's view of the client's stream: the first write goes through only for the race's
 * winner (`claim` decides), so the client gets exactly one attempt's tokens.
 */
function branchSink(sink: StreamSink, claim: () => boolean): StreamSink {
  return {
    get committed() {
      return sink.committed;
    },
    get streamed() {
      return sink.streamed;
    },
    get tooLongToResume() {
      return sink.tooLongToResume;
    },
    get resumable() {
      return sink.resumable;
    },
    write: (text) => (claim() ? sink.write(text) : true),
    writeChoices: sink.writeChoices ? (choices) => (claim() ? sink.writeChoices!(choices) : true) : undefined,
  };
}
