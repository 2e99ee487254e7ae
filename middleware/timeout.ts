import type { ClockTimer } from '../src/clock';
import type { Middleware, RouteContext } from '../src/context';
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
 * last-resort cap and an idle limit shortened only to keep time for a retry never do. The timers are cleared in `finally`.
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
  const share = options.deadlineShare ?? 0.5;
  const per1k = options.firstChunkMsPer1kPromptTokens ?? 0;
  const learned = options.adaptive?.enabled ? new AdaptiveLimits(options.adaptive) : undefined;
  return async function timeout(ctx: RouteContext, next): Promise<void> {
    const attempt = ctx.attempt;
    const worker = ctx.worker?.id ?? 'unknown';
    const startedAt = ctx.clock.now();
    const left = (): number => Math.max(0, ctx.deadline - ctx.clock.now());
    // Streams show progress by their chunks; buffered attempts only with a 1.1 worker.
    const progressMs = ctx.worker?.progressMs ?? 0;
    const watched = ctx.stream || progressMs > 0;
    const model = ctx.request.model;
    const promptAllowance = (per1k * promptTokenEstimate(ctx)) / 1000;
    const ttft = (learned?.ttftLimit(worker, model, options.firstChunkTimeoutMs) ?? options.firstChunkTimeoutMs) + promptAllowance;
    const idle = Math.max(learned?.idleLimit(worker, model, options.idleTimeoutMs) ?? options.idleTimeoutMs, 2 * progressMs);
    let lastTokenAt = 0;
    let longestGap = 0;
    const reserve = (ms: number): number => ((ctx.retriesLeft ?? 0) > 0 ? Math.min(ms, share * left()) : ms);

    let phase: 'first' | 'idle' = 'first';
    let limit = 0;
    let cutByDeadline = false;
    let cutByReserve = false;
    let timer: ClockTimer | undefined;
    /**
     * (Re)arms the quiet-worker timer: `configured`, reserved for retries (never below `floor`,
     * the least a worker's own progress cadence needs) and cut to the deadline.
     */
    const arm = (configured: number, floor = 0): void => {
      const reserved = Math.max(reserve(configured), Math.min(configured, floor));
      limit = Math.min(reserved, left());
      cutByDeadline = limit < reserved;
      cutByReserve = reserved < configured;
      if (timer) timer.restart(limit);
      else timer = ctx.clock.timer(limit, fire);
    };
    const fire = (): void => {
      const what = phase === 'first' ? (watched ? 'produce a first token' : 'answer') : ctx.stream ? 'send the next chunk' : 'report progress';
      if (cutByDeadline) {
        attempt.abort(new RouterError('REQUEST_TIMEOUT', `worker ${worker} did not ${what} within ${Math.round(limit)} ms (the request deadline)`, { worker }));
        return;
      }
      // No first token within its limit, or silence mid-answer longer than the configured idle
      // limit: the worker is unwell. A shorter silence cut only to keep time for a retry fails
      // over just the same, but is not held against a worker that may merely be slow.
      // (A buffered attempt to a 1.0 worker is "quiet" for its whole length: its one limit counts.)
      if (phase === 'first' || !cutByReserve) attempt.stalled = phase;
      const code = phase === 'idle' && ctx.stream ? 'STREAM_IDLE_TIMEOUT' : 'WORKER_TIMEOUT';
      attempt.abort(new RouterError(code, `worker ${worker} did not ${what} within ${Math.round(limit)} ms`, { worker }));
    };
    arm(watched ? Math.min(ttft, options.attemptTimeoutMs) : options.attemptTimeoutMs);
    // The last resort: a producing attempt longer than this is cut, without blaming the worker.
    let cap: ClockTimer | undefined;
    if (watched && options.attemptTimeoutMs < left()) {
      cap = ctx.clock.timer(options.attemptTimeoutMs - (ctx.clock.now() - startedAt), () => {
        // Before the first token the quiet-worker timer, armed no later than this, decides.
        if (phase === 'first') return;
        attempt.abort(new RouterError('WORKER_TIMEOUT', `attempt on worker ${worker} ran past its last-resort limit of ${options.attemptTimeoutMs} ms`, { worker }));
      });
    }
    // A 1.1 worker reports progress at most every progressMs: never wait less than twice that.
    const idleFloor = 2 * progressMs;
    if (watched) {
      // The listener goes with the attempt's state; nothing to remove.
      attempt.onProgress(() => {
        if (learned && ctx.stream) {
          const now = ctx.clock.now();
          if (phase === 'idle' && now - lastTokenAt > longestGap) longestGap = now - lastTokenAt;
          lastTokenAt = now;
        }
        if (phase === 'first') {
          phase = 'idle';
          arm(idle, idleFloor);
        } else if (cutByDeadline) {
          // The timer already ends at the deadline, which does not move.
        } else if (cutByReserve || left() < limit) {
          // The retry reserve shrinks with the deadline, or the deadline is now the tighter bound.
          arm(idle, idleFloor);
        } else {
          // The same duration re-arms the same timer: no allocation per chunk.
          timer?.restart();
        }
      });
    }
    try {
      await next();
      // A successful attempt teaches the worker's pace (the prompt's own allowance taken out).
      if (learned && attempt.firstTokenAt !== undefined && ctx.worker) {
        learned.observeTtft(worker, model, Math.max(0, attempt.firstTokenAt - startedAt - promptAllowance));
        if (ctx.stream && attempt.chunks > 1) learned.observeGap(worker, model, longestGap);
      }
    } finally {
      timer?.cancel();
      cap?.cancel();
    }
  };
}
