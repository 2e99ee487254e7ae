/**
 * Feeds the operator event bus from the router's attempt events (src/attempt.ts): every attempt's
 * end as an observation for ClusterStats and the trace exporter (with its time to first chunk,
 * tokens and traceparent), and every attempt after the first as a `retry`, or a `resume` when it
 * continued a broken stream, on the operator feed. Like the metrics middleware it only listens;
 * nothing in the chain knows of the bus.
 */
import type { RouterEvent } from '../attempt';
import type { Listeners } from '../listeners';
import type { EventBus } from './events';

/** Follows `routerEvents` into `bus`; returns the remover. */
export function observeAttempts(routerEvents: Listeners<RouterEvent>, bus: EventBus): () => void {
  return routerEvents.add((event) => {
    if (event.type !== 'attempt') return;
    const { ctx, record } = event;
    if (record.attempt > 1) {
      // The attempt before this one is the one that failed (and the worker it failed on).
      const before = ctx.attempts[ctx.attempts.length - 2];
      bus.emit({
        type: ctx.continuation !== undefined ? 'resume' : 'retry',
        requestId: ctx.requestId,
        attempt: record.attempt,
        worker: before?.worker ?? null,
        code: before?.code ?? null,
      });
    }
    const first = ctx.attempt.firstChunkAt;
    const usage = record.outcome === 'success' ? (ctx.result?.usage ?? ctx.end?.usage) : undefined;
    bus.emit({
      type: 'attempt',
      requestId: ctx.requestId,
      worker: record.worker,
      outcome: record.outcome,
      code: record.code,
      // Unrounded, and measured now: the bus stamps the event's end time on the same time base.
      durationMs: ctx.clock.now() - ctx.attempt.startedAt,
      ...(first !== undefined ? { ttftMs: Math.round((first - ctx.attempt.startedAt) * 100) / 100 } : {}),
      ...(usage ? { completionTokens: usage.completion_tokens } : {}),
      traceparent: ctx.attempt.traceparent,
      requestTraceparent: ctx.headers.traceparent,
      attempt: record.attempt,
    });
  });
}
