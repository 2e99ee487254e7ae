import type { Middleware, RouteContext } from '../src/context';
import { defineMiddleware } from '../src/define';
import { RouterError } from '../src/errors';

export interface TimeoutOptions {
  /** Limit of one buffered attempt (ms, default 10000). */
  attemptTimeoutMs: number;
  /** Streams: time to first chunk of one attempt (ms, default 10000). */
  firstChunkTimeoutMs: number;
  /** Streams: longest gap between chunks after the first (ms, default 30000). */
  idleTimeoutMs: number;
}

/**
 * timeout: arms the attempt's limits and aborts `ctx.attempt.signal` with WORKER_TIMEOUT when one
 * passes; dispatch then stops listening and sends the worker a cancel. Buffered attempts get
 * `attemptTimeoutMs`; streams get `firstChunkTimeoutMs` until their first chunk, then
 * `idleTimeoutMs` between chunks. Every limit is cut to what the request has left. The timer is
 * cleared in `finally`, whatever happens.
 */
export const timeout = defineMiddleware<TimeoutOptions, object>({
  name: 'timeout',
  defaults: { attemptTimeoutMs: 10000, firstChunkTimeoutMs: 10000, idleTimeoutMs: 30000 },
  fromConfig: (c) => ({
    attemptTimeoutMs: c.cluster.requestRouting.attemptTimeoutMs,
    firstChunkTimeoutMs: c.cluster.requestRouting.firstChunkTimeoutMs,
    idleTimeoutMs: c.cluster.requestRouting.idleTimeoutMs,
  }),
  factory: timeoutMiddleware,
});

function timeoutMiddleware(options: TimeoutOptions): Middleware {
  return async function timeout(ctx: RouteContext, next): Promise<void> {
    const attempt = ctx.attempt;
    const worker = ctx.worker?.id ?? 'unknown';
    const left = (): number => Math.max(0, ctx.deadline - ctx.clock.now());
    const configured = ctx.stream ? options.firstChunkTimeoutMs : options.attemptTimeoutMs;
    const first = Math.min(configured, left());
    // When the request's deadline is the shorter limit, that deadline is what passed.
    const cutByDeadline = first < configured;
    let phase: 'first' | 'idle' = 'first';
    let limit = first;
    const fire = (): void => {
      const what = !ctx.stream ? 'answer' : phase === 'first' ? 'send its first chunk' : 'send the next chunk';
      // Each deadline has its own code: the idle one can only fire after the stream committed.
      const code = phase === 'idle' ? 'STREAM_IDLE_TIMEOUT' : cutByDeadline ? 'REQUEST_TIMEOUT' : 'WORKER_TIMEOUT';
      attempt.abort(new RouterError(code, `worker ${worker} did not ${what} within ${Math.round(limit)} ms${cutByDeadline && phase === 'first' ? ' (the request deadline)' : ''}`, { worker }));
    };
    const timer = ctx.clock.timer(first, fire);
    // The listener goes with the attempt's state; nothing to remove.
    if (ctx.stream) {
      attempt.onProgress(() => {
        if (phase === 'first') {
          phase = 'idle';
          limit = Math.min(options.idleTimeoutMs, left());
          timer.restart(limit);
        } else {
          // The same duration re-arms the same timer: no allocation per chunk.
          timer.restart();
        }
      });
    }
    try {
      await next();
    } finally {
      timer.cancel();
    }
  };
}
