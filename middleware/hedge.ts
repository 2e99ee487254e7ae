import { AdaptiveLimits } from '../src/adaptive-limits';
import { candidatesFor, type AttemptRunner } from '../src/attempt';
import type { Clock, ClockTimer } from '../src/clock';
import type { AttemptState, HedgeReport, Middleware, RouteContext, StreamSink } from '../src/context';
import type { ChoiceDelta } from '../src/protocol-v2';
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
  const shared: RaceShared = {
    options,
    deps,
    runAttempt,
    learned: new AdaptiveLimits({ enabled: true, factor: 1, floorMs: 0, minSamples: options.minSamples }),
    budget: new HedgeBudget(options.budget, deps.clock),
  };
  return function hedge(ctx: RouteContext): Promise<void> {
    shared.budget.onAttempt();
    // A resume writes to a committed stream at once: nothing to race.
    if (ctx.sink?.committed || ctx.signal.aborted) return runAttempt(ctx);
    return new HedgeRace(shared, ctx).run();
  };
}

/** What every race of one hedge middleware shares. */
interface RaceShared {
  readonly options: HedgeOptions;
  readonly deps: HedgeDeps;
  readonly runAttempt: AttemptRunner;
  /** Times to first token per worker and model, learned from the attempts the races run. */
  readonly learned: AdaptiveLimits;
  readonly budget: HedgeBudget;
}

/**
 * One request's race: its primary attempt and, past the hedge point, one hedge. State and steps
 * are fields and methods of one object (forks are made for every attempt, so the per-request
 * cost is a handful of objects, not a closure per step).
 */
class HedgeRace {
  private readonly branches: RaceBranch[] = [];
  private winner: RaceBranch | undefined;
  private hedged: RaceBranch | undefined;
  private report: HedgeReport | undefined;
  private timer: ClockTimer | undefined;
  private over = false;
  private allowanceMs: number | undefined;
  private primary: RaceBranch | undefined;
  private resolve: (() => void) | undefined;
  private reject: ((err: RouterError) => void) | undefined;

  constructor(
    private readonly shared: RaceShared,
    readonly ctx: RouteContext,
  ) {}

  /** Runs the race: resolves or rejects as the request's attempt (see `end`). */
  run(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
      this.primary = this.start(false);
    });
  }

  /** Every branch settled: the request's context takes the winner's (or the primary's) answer. */
  private end(): void {
    try {
      this.conclude();
    } catch (e) {
      // Runs in an attempt's settlement: anything thrown fails the request, never the process.
      this.reject!(toRouterError(e));
    }
  }

  private conclude(): void {
    const ctx = this.ctx;
    const final = this.winner ?? this.primary!;
    ctx.worker = final.worker;
    if (final.attempt) ctx.attempt = final.attempt;
    if (final.ctx.result !== undefined) ctx.result = final.ctx.result;
    if (final.ctx.end !== undefined) ctx.end = final.ctx.end;
    if (final.worker) ctx.metrics.selectedWorker = final.worker.id;
    ctx.metrics.retryCount = Math.max(0, ctx.attempts.filter((a) => !a.hedge).length - 1);
    const { hedged, report } = this;
    if (hedged && report) {
      const outcome: HedgeOutcome = this.winner === hedged ? 'won' : hedged.error?.code === 'HEDGE_LOST' ? 'lost' : 'failed';
      report.outcome = outcome;
      this.count(outcome);
    }
    if (report) ctx.metrics.hedge = report;
    if (final.ok) this.resolve!();
    else this.reject!(final.error ?? new RouterError('INTERNAL_ERROR', 'hedge: an attempt ended with neither answer nor error'));
  }

  private count(outcome: HedgeOutcome): void {
    this.shared.deps.metrics?.hedges?.inc({ outcome });
  }

  /** The hedge point's allowance for a long prompt (as the TTFT limit has), computed once. */
  private allowance(): number {
    const per1k = this.shared.options.firstChunkMsPer1kPromptTokens;
    return (this.allowanceMs ??= per1k > 0 ? (per1k * promptTokenEstimate(this.ctx)) / 1000 : 0);
  }

  /** `b` produced the first token (or answered) first: the others are cancelled. */
  declare(b: RaceBranch): boolean {
    if (this.winner) return this.winner === b;
    this.winner = b;
    this.stopTimer();
    // The client's view follows the winner from now on (a stream's headers name its worker).
    this.ctx.worker = b.worker;
    if (b.attempt) this.ctx.attempt = b.attempt;
    for (const o of this.branches) {
      if (o !== b && !o.settled) {
        const id = o.worker?.id;
        o.attempt?.abort(new RouterError('HEDGE_LOST', `attempt on worker ${id ?? '-'} lost the hedge race to worker ${b.worker?.id ?? '-'}`, { worker: id }));
      }
    }
    return true;
  }

  /** Whether `b` may write to the client's stream: the winner, or the first to try. */
  claim(b: RaceBranch): boolean {
    return this.winner === b || (this.winner === undefined && this.declare(b));
  }

  onProgress(b: RaceBranch): void {
    const first = b.attempt?.firstTokenAt;
    if (first === undefined || this.winner) return;
    if (b.worker && b.chosenAt !== undefined) this.shared.learned.observeTtft(b.worker.id, this.ctx.request.model, Math.max(0, first - b.chosenAt - this.allowance()));
    this.declare(b);
  }

  private hedgePoint(w: WorkerInfo): number | undefined {
    const { options, learned } = this.shared;
    const p = learned.ttftPercentile(w.id, this.ctx.request.model, options.percentile, options.minSamples);
    const base = p ?? (options.initialDelayMs > 0 ? options.initialDelayMs : undefined);
    return base === undefined ? undefined : Math.max(options.minDelayMs, base) + this.allowance();
  }

  private onHedgePoint(primary: RaceBranch, afterMs: number): void {
    const ctx = this.ctx;
    const { deps, budget } = this.shared;
    if (this.over || this.winner || primary.settled || ctx.signal.aborted || !primary.worker) return;
    const first = primary.worker.id;
    const others = deps.registry
      ? candidatesFor(ctx, deps.registry).filter((w) => w.id !== first && !saturated(w) && (deps.breakers?.allows(w.id) ?? true))
      : undefined;
    if (others && others.length === 0) {
      this.report = { outcome: 'skipped_no_worker', afterMs };
      this.count('skipped_no_worker');
      return;
    }
    if (!budget.take()) {
      this.report = { outcome: 'skipped_budget', afterMs };
      this.count('skipped_budget');
      return;
    }
    ctx.metrics.hedges = (ctx.metrics.hedges ?? 0) + 1;
    this.report = { outcome: 'pending', afterMs };
    ctx.log.debug({ worker: first, afterMs: Math.round(afterMs) }, 'hedging: no first token yet');
    this.hedged = this.start(true, first);
  }

  onChosen(b: RaceBranch): void {
    if (b.hedge) {
      if (this.report) this.report.worker = b.worker?.id;
      return;
    }
    const w = b.worker!;
    // A buffered attempt to a worker that sends no progress shows no first token before its answer.
    if (!this.ctx.stream && !(w.progressMs > 0)) return;
    const at = this.hedgePoint(w);
    if (at === undefined) return;
    this.timer = this.ctx.clock.timer(at, () => this.onHedgePoint(b, at));
  }

  private start(isHedge: boolean, exclude?: string): RaceBranch {
    const b = new RaceBranch(this, isHedge, exclude);
    this.branches.push(b);
    this.shared.runAttempt(b.ctx).then(
      () => this.settled(b, undefined),
      (e: unknown) => this.settled(b, toRouterError(e)),
    );
    return b;
  }

  private settled(b: RaceBranch, error: RouterError | undefined): void {
    b.settled = true;
    if (error) b.error = error;
    else b.ok = true;
    if (b.ok) this.declare(b);
    if (!b.hedge) this.stopTimer();
    if (this.branches.every((o) => o.settled)) {
      this.over = true;
      this.stopTimer();
      this.end();
    }
  }

  /** Cancels the hedge point's timer and lets it go (a race can outlive it by minutes). */
  private stopTimer(): void {
    this.timer?.cancel();
    this.timer = undefined;
  }
}

/**
 * One attempt of the race, on its own fork of the request's context (see BranchContext), which
 * tells it of a fresh attempt and of `select`'s choice.
 */
class RaceBranch implements BranchHooks {
  readonly ctx: RouteContext;
  attempt?: AttemptState;
  worker?: WorkerInfo;
  /** When `select` chose its worker (clock ms). */
  chosenAt?: number;
  settled = false;
  ok = false;
  error?: RouterError;

  constructor(
    private readonly race: HedgeRace,
    readonly hedge: boolean,
    /** A worker this branch must not go to (the primary's, for a hedge). */
    private readonly exclude: string | undefined,
  ) {
    const sink = race.ctx.sink;
    this.ctx = BranchContext.of(race.ctx, sink ? (sink.writeChoices ? new BranchSinkV2(sink, this) : new BranchSink(sink, this)) : undefined, this);
  }

  /** Asked by the branch's sink before a write: only the race's winner writes. */
  claim(): boolean {
    return this.race.claim(this);
  }

  attemptStarted(a: AttemptState): void {
    this.attempt = a;
    if (this.hedge) a.hedge = true;
    const exclude = this.exclude;
    // First in the list, so a breaker never grants a permit to the worker refused here.
    if (exclude !== undefined) a.admissions.unshift({ allows: (w) => w.id !== exclude, admit: (w) => w.id !== exclude });
    a.onProgress(() => this.race.onProgress(this));
  }

  workerChosen(w: WorkerInfo): void {
    if (this.worker === w) return;
    this.worker = w;
    this.chosenAt = this.race.ctx.clock.now();
    this.race.onChosen(this);
  }
}

/** What a BranchContext tells its race: a fresh attempt began, `select` chose a worker. */
interface BranchHooks {
  attemptStarted(a: AttemptState): void;
  workerChosen(w: WorkerInfo): void;
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
    this.hooks?.attemptStarted(a);
  }

  get worker(): WorkerInfo | undefined {
    return this.currentWorker;
  }

  set worker(w: WorkerInfo | undefined) {
    this.currentWorker = w;
    if (w) this.hooks?.workerChosen(w);
  }
}

/**
 * A branch's view of the client's stream: the first write goes through only for the race's
 * winner (the branch's `claim` decides), so the client gets exactly one attempt's tokens.
 */
class BranchSink implements StreamSink {
  constructor(
    protected readonly sink: StreamSink,
    protected readonly branch: { claim(): boolean },
  ) {}

  get committed(): boolean {
    return this.sink.committed;
  }

  get streamed(): string {
    return this.sink.streamed;
  }

  get tooLongToResume(): boolean | undefined {
    return this.sink.tooLongToResume;
  }

  get resumable(): boolean | undefined {
    return this.sink.resumable;
  }

  write(text: string): boolean {
    return this.branch.claim() ? this.sink.write(text) : true;
  }
}

/** A BranchSink over a sink that forwards engine deltas whole (protocol v2's `writeChoices`). */
class BranchSinkV2 extends BranchSink {
  writeChoices(choices: ChoiceDelta[]): boolean {
    return this.branch.claim() ? this.sink.writeChoices!(choices) : true;
  }
}
