/**
 * The controller's in-process event bus: what an operator wants to see happen (a worker comes or
 * goes, a breaker moves, a request is retried, resumed or shed, an admin acts, `up` restarts a
 * worker), plus per-attempt and per-request observations that feed ClusterStats. Emitting is
 * synchronous and cheap; a listener that throws is dropped from that one delivery, never the emitter.
 * The last `keep` operator events stay in a ring, so a new `GET /v1/cluster/events` client (or
 * one reconnecting with Last-Event-ID) sees what just happened.
 */
import type { OutcomeClass } from '../errors';

/** Events an operator sees (the SSE feed and the dashboard). */
export type OperatorEvent =
  | { type: 'worker.up'; worker: string }
  | { type: 'worker.down'; worker: string; reason: string }
  | { type: 'worker.state'; worker: string; state: string }
  | { type: 'breaker'; worker: string; from: string; to: string }
  | { type: 'retry'; requestId: string; attempt: number; worker: string | null; code: string | null }
  | { type: 'resume'; requestId: string; attempt: number; worker: string | null; code: string | null }
  | { type: 'shed'; requestId: string; code: string }
  | { type: 'admin'; action: string; target: string; result: string }
  | { type: 'worker.restart'; worker: string; restarts: number; backoffMs: number; exit: string };

/** One finished attempt (ClusterStats reads it; not on the operator feed). */
export interface AttemptObservation {
  type: 'attempt';
  requestId: string;
  worker: string | null;
  outcome: OutcomeClass;
  code: string | null;
  durationMs: number;
  /** Time to the attempt's first streamed chunk, when it had one. */
  ttftMs?: number;
  completionTokens?: number;
  /** The attempt's traceparent, and the request's (its parent span). */
  traceparent?: string;
  requestTraceparent?: string;
  attempt?: number;
}

/** One finished request, after all attempts (ClusterStats reads it; not on the operator feed). */
export interface RequestObservation {
  type: 'request';
  requestId: string;
  status: number;
  code: string | null;
  durationMs: number;
  /** Time to the first chunk the client got (streams). */
  ttftMs?: number;
  /** The request's own traceparent, and the client's (its parent span), when it sent one. */
  traceparent?: string;
  clientTraceparent?: string;
  model?: string;
  stream?: boolean;
}

export type ClusterEventBody = OperatorEvent | AttemptObservation | RequestObservation;
export type ClusterEvent = ClusterEventBody & { seq: number; time: number };

const OBSERVATIONS = new Set(['attempt', 'request']);

/** True for what belongs on the operator feed (not the per-attempt/request observations). */
export function isOperatorEvent(e: ClusterEvent): e is OperatorEvent & { seq: number; time: number } {
  return !OBSERVATIONS.has(e.type);
}

export type EventListener = (event: ClusterEvent) => void;

export class EventBus {
  private readonly listeners = new Set<EventListener>();
  private readonly ring: ClusterEvent[] = [];
  private seq = 0;

  /**
   * `keep`: operator events remembered for replay (default 200). `now`: wall clock (ms); the
   * default has sub-millisecond precision on the monotonic clock's base, so an observation's start
   * (its time less its duration) and its end order as they happened.
   */
  constructor(
    private readonly keep = 200,
    private readonly now: () => number = () => performance.timeOrigin + performance.now(),
  ) {}

  /**
   * Numbers, stamps and delivers `body`, which becomes the event (no copy per event: every caller
   * passes a fresh object). A listener added while an event is delivered may see that event; one
   * removed before its turn does not.
   */
  emit(body: ClusterEventBody): void {
    const event = body as ClusterEvent;
    event.seq = ++this.seq;
    event.time = this.now();
    if (isOperatorEvent(event)) {
      this.ring.push(event);
      if (this.ring.length > this.keep) this.ring.shift();
    }
    for (const fn of this.listeners) {
      try {
        fn(event);
      } catch {
        // A broken listener (a closed socket) must never break the path that emitted.
      }
    }
  }

  /** Calls `fn` for every event from now on; returns the function that stops it. */
  subscribe(fn: EventListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Remembered operator events with a sequence number above `afterSeq` (oldest first). */
  recent(afterSeq = 0): ClusterEvent[] {
    return this.ring.filter((e) => e.seq > afterSeq);
  }

  get listenerCount(): number {
    return this.listeners.size;
  }
}
