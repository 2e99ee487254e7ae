import type { ClockTimer } from '../src/clock';
import type { AttemptState, Middleware, RouteContext } from '../src/context';
import { AdaptiveLimits, type AdaptiveOptions } from '../src/adaptive-limits';
import { defineMiddleware } from '../src/define';
import { RouterError } from '../src/errors';
import { estimateTokens } from '../src/protocol';

export interface TimeoutOptions {
  /**
   * Last-resort limit of one attempt (ms, default 300000), and the whole limit of a buffered
   * attempt to a worker that sends no progress messages (protocol 1.0).
   */
  attemptTimeoutMs: number;
  /** Time to first token of one attempt, buffered or streamed, for a short prompt (ms, default 10000). */
  firstChunkTimeoutMs: number;
  /** Longest silence between tokens after the first (ms, default 10000). */
  idleTimeoutMs: number;
  /** Extra time to first token per 1000 prompt tokens (ms, default 2000; 0: none). */
  firstChunkMsPer1kPromptTokens?: number;
  /**
   * While retries remain, a time-to-first-token or idle limit uses at most this share of what the
   * request has left (default 0.5; 1: no reserve), so a hung attempt leaves time for another.
   */
  deadlineShare?: number;
  /**
   * Learn the TTFT and idle limits per worker and model (cluster.requestRouting.adaptiveLimits);
   * the configured limits are then the ceilings (default: on, factor 4, floor 1000 ms, 20 samples).
   * Disabled: the configured limits only.
   */
  adaptive?: AdaptiveOptions;
}

/** Prompt size in tokens as the controller estimates it (~4 characters a token, 3 per message). */
export function promptTokenEstimate(ctx: Pick<RouteContext, 'request'>): number {
  return ctx.request.messages.reduce((sum, m) => sum + 3 + estimateTokens(m.content), 3);
}

/**
 * timeout: arms the attempt's limits and aborts `ctx.attempt.signal` when one passes; dispatch
 * then stops listening and sends the worker a cancel. Limits follow the attempt's progress, for
 * buffered and streamed attempts alike: until the first token (a chunk, or a buffered attempt's
 * `progress` message) the TTFT limit (`firstChunkTimeoutMs`, more for long prompts); after it,
 * `idleTimeoutMs` between tokens. A producing attempt is never cut by these; `attemptTimeoutMs`
 * caps an attempt only as a last resort (and is the whole limit of a buffered attempt to a worker
 * that sends no progress). While retries remain, the TTFT and idle limits use at most
 * `deadlineShare` of what the request has left; every limit is cut to the request's deadline.
 * A limit that fires on a quiet worker marks the attempt `stalled` (counted against the worker):
 * no first token within its limit, or silence longer than `idleTimeoutMs`. The deadline, the
 * last-resort cap and an idle limit shortened only to keep time for a retry never do. One timer per
 * attempt carries every limit; it is cleared in `finally`.
 */
export const timeout = defineMiddleware<TimeoutOptions, object>({
  name: 'timeout',
  defaults: {
    attemptTimeoutMs: 300000,
    firstChunkTimeoutMs: 10000,
    idleTimeoutMs: 10000,
    firstChunkMsPer1kPromptTokens: 2000,
    deadlineShare: 0.5,
    adaptive: { enabled: true, factor: 4, floorMs: 1000, minSamples: 20 },
  },
  fromConfig: (c) => {
    const r = c.cluster.requestRouting;
    return {
      attemptTimeoutMs: r.attemptTimeoutMs,
      firstChunkTimeoutMs: r.firstChunkTimeoutMs,
      idleTimeoutMs: r.idleTimeoutMs,
      firstChunkMsPer1kPromptTokens: r.firstChunkMsPer1kPromptTokens,
      deadlineShare: r.deadlineShare,
      adaptive: r.adaptiveLimits,
    };
  },
  factory: timeoutMiddleware,
});

function timeoutMiddleware(options: TimeoutOptions): Middleware {
  const shared: WatchShared = {
    options,
    share: options.deadlineShare ?? 0.5,
    per1k: options.firstChunkMsPer1kPromptTokens ?? 0,
    learned: options.adaptive?.enabled ? new AdaptiveLimits(options.adaptive) : undefined,
  };
  return async function timeout(ctx: RouteContext, next): Promise<void> {
    const watch = new AttemptWatch(shared, ctx);
    try {
      await next();
      watch.learn();
    } finally {
      watch.stop();
    }
  };
}

/** What every attempt's watch of one timeout middleware shares. */
interface WatchShared {
  readonly options: TimeoutOptions;
  readonly share: number;
  readonly per1k: number;
  readonly learned: AdaptiveLimits | undefined;
}

/**
 * One attempt's limits: one timer, re-armed as the attempt moves from its first token to the
 * gaps between tokens, and cut to the request's deadline and to the last-resort cap. State and
 * steps are fields and methods of one object, so an attempt costs it, its timer and two callbacks.
 */
class AttemptWatch {
  private readonly attempt: AttemptState;
  private readonly worker: string;
  private readonly startedAt: number;
  /** Streams show progress by their chunks; buffered attempts only with a 1.1 worker. */
  private readonly watched: boolean;
  private readonly model: string;
  private readonly promptAllowance: number;
  private readonly idle: number;
  /** A 1.1 worker reports progress at most every progressMs: never wait less than twice that. */
  private readonly idleFloor: number;
  /** When a producing attempt is cut as a last resort (clock ms); undefined: never before the deadline. */
  private readonly capAt: number | undefined;
  private lastTokenAt = 0;
  private longestGap = 0;
  private phase: 'first' | 'idle' = 'first';
  private limit = 0;
  private cutByDeadline = false;
  private cutByReserve = false;
  private cutByCap = false;
  private timer: ClockTimer | undefined;

  constructor(
    private readonly shared: WatchShared,
    private readonly ctx: RouteContext,
  ) {
    const { options, learned, per1k } = shared;
    this.attempt = ctx.attempt;
    const worker = (this.worker = ctx.worker?.id ?? 'unknown');
    this.startedAt = ctx.clock.now();
    const progressMs = ctx.worker?.progressMs ?? 0;
    this.watched = ctx.stream || progressMs > 0;
    const model = (this.model = ctx.request.model);
    this.promptAllowance = (per1k * promptTokenEstimate(ctx)) / 1000;
    const ttft = (learned?.ttftLimit(worker, model, options.firstChunkTimeoutMs) ?? options.firstChunkTimeoutMs) + this.promptAllowance;
    this.idle = Math.max(learned?.idleLimit(worker, model, options.idleTimeoutMs) ?? options.idleTimeoutMs, 2 * progressMs);
    this.idleFloor = 2 * progressMs;
    // The last resort: a producing attempt longer than this is cut, without blaming the worker.
    // (Before the first token the quiet-worker limit, armed no later than this, decides.)
    this.capAt = this.watched && options.attemptTimeoutMs < this.left() ? this.startedAt + options.attemptTimeoutMs : undefined;
    this.arm(this.watched ? Math.min(ttft, options.attemptTimeoutMs) : options.attemptTimeoutMs);
    // The listener goes with the attempt's state; nothing to remove.
    if (this.watched) this.attempt.onProgress(() => this.onProgress());
  }

  private left(): number {
    return Math.max(0, this.ctx.deadline - this.ctx.clock.now());
  }

  private reserve(ms: number): number {
    return (this.ctx.retriesLeft ?? 0) > 0 ? Math.min(ms, this.shared.share * this.left()) : ms;
  }

  /**
   * (Re)arms the timer: `configured`, reserved for retries (never below `floor`, the least a
   * worker's own progress cadence needs), cut to the deadline and, after the first token, to the
   * last-resort cap.
   */
  private arm(configured: number, floor = 0): void {
    const reserved = Math.max(this.reserve(configured), Math.min(configured, floor));
    const toDeadline = this.left();
    const toCap = this.capAt === undefined || this.phase === 'first' ? Infinity : Math.max(0, this.capAt - this.ctx.clock.now());
    this.limit = Math.min(reserved, toDeadline, toCap);
    // Ties: the cap wins over a quiet-worker limit (it blames nobody), the deadline over the cap.
    this.cutByCap = toCap <= reserved && toCap < toDeadline;
    this.cutByDeadline = !this.cutByCap && toDeadline < reserved;
    this.cutByReserve = reserved < configured;
    if (this.timer) this.timer.restart(this.limit);
    else this.timer = this.ctx.clock.timer(this.limit, () => this.fire());
  }

  private fire(): void {
    const { attempt, worker, phase, ctx } = this;
    if (this.cutByCap) {
      attempt.abort(new RouterError('WORKER_TIMEOUT', `attempt on worker ${worker} ran past its last-resort limit of ${this.shared.options.attemptTimeoutMs} ms`, { worker }));
      return;
    }
    const what = phase === 'first' ? (this.watched ? 'produce a first token' : 'answer') : ctx.stream ? 'send the next chunk' : 'report progress';
    if (this.cutByDeadline) {
      attempt.abort(new RouterError('REQUEST_TIMEOUT', `worker ${worker} did not ${what} within ${Math.round(this.limit)} ms (the request deadline)`, { worker }));
      return;
    }
    // No first token within its limit, or silence mid-answer longer than the configured idle
    // limit: the worker is unwell. A shorter silence cut only to keep time for a retry fails
    // over just the same, but is not held against a worker that may merely be slow.
    // (A buffered attempt to a 1.0 worker is "quiet" for its whole length: its one limit counts.)
    if (phase === 'first' || !this.cutByReserve) attempt.stalled = phase;
    const code = phase === 'idle' && ctx.stream ? 'STREAM_IDLE_TIMEOUT' : 'WORKER_TIMEOUT';
    attempt.abort(new RouterError(code, `worker ${worker} did not ${what} within ${Math.round(this.limit)} ms`, { worker }));
  }

  private onProgress(): void {
    const clock = this.ctx.clock;
    if (this.shared.learned && this.ctx.stream) {
      const now = clock.now();
      if (this.phase === 'idle' && now - this.lastTokenAt > this.longestGap) this.longestGap = now - this.lastTokenAt;
      this.lastTokenAt = now;
    }
    if (this.phase === 'first') {
      this.phase = 'idle';
      this.arm(this.idle, this.idleFloor);
    } else if (this.cutByDeadline || this.cutByCap) {
      // The timer already ends at the deadline or the cap, which do not move.
    } else if (this.cutByReserve || this.left() < this.limit || (this.capAt !== undefined && this.capAt - clock.now() <= this.limit)) {
      // The retry reserve shrinks with the deadline, or the deadline or the cap is now the tighter bound.
      this.arm(this.idle, this.idleFloor);
    } else {
      // The same duration re-arms the same timer: no allocation per chunk.
      this.timer?.restart();
    }
  }

  /** A successful attempt teaches the worker's pace (the prompt's own allowance taken out). */
  learn(): void {
    const { learned } = this.shared;
    const attempt = this.attempt;
    if (learned && attempt.firstTokenAt !== undefined && this.ctx.worker) {
      learned.observeTtft(this.worker, this.model, Math.max(0, attempt.firstTokenAt - this.startedAt - this.promptAllowance));
      if (this.ctx.stream && attempt.chunks > 1) learned.observeGap(this.worker, this.model, this.longestGap);
    }
  }

  stop(): void {
    this.timer?.cancel();
  }
}
