/**
 * BreakerBook: one circuit breaker per worker. State is a discriminated union; the
 * open → half-open step is taken by the clock on every read, so a breaker is half-open the moment
 * its open time ends, whether or not a call arrives. Half-open admits exactly `halfOpenPermits`
 * probes at a time; `successThreshold` successes close it, one failure reopens it for longer.
 */
import type { Clock } from '../clock';
import { countsAgainstWorker, type OutcomeClass } from '../errors';
import { TIMEOUT_CODES } from '../attempt';
import type { BreakerPermit, Breakers, FailureDetail } from '../types';

export type BreakerState =
  | { kind: 'closed'; failures: number }
  | { kind: 'open'; until: number; trips: number }
  | { kind: 'half-open'; inUse: number; successes: number; trips: number };

export type BreakerKind = BreakerState['kind'];

export interface BreakerOptions {
  /** Consecutive counted failures that open a breaker (default 5). */
  failureThreshold: number;
  /** Half-open successes that close it (default 2). */
  successThreshold: number;
  /** Open time after the first trip (ms); doubles per repeated trip. */
  timeoutMs: number;
  /** Cap of the open time (ms). */
  maxTimeoutMs: number;
  /** Probes admitted at once while half-open (default 1; never unlimited). */
  halfOpenPermits: number;
  clock: Clock;
  /** Jitter source in [0, 1) (default Math.random). */
  random?: () => number;
  /**
   * Called on every state change, for logs and metrics; `cause` is `peer` when another
   * controller's evidence made it (peerOpened, peerClosed), so it is not shared back.
   */
  onTransition?: (worker: string, from: BreakerKind, to: BreakerKind, cause: 'local' | 'peer') => void;
}

/** A half-open outcome whose permit came from another period says nothing about this one. */
function isStale(now: BreakerState, ticket: BreakerState | undefined): boolean {
  return ticket !== undefined && now.kind === 'half-open' && now !== ticket;
}

export class BreakerBook implements Breakers {
  private readonly breakers = new Map<string, BreakerState>();
  private readonly random: () => number;

  constructor(private readonly options: BreakerOptions) {
    this.random = options.random ?? Math.random;
  }

  /** The state now, after applying the clock. */
  state(worker: string): BreakerState {
    const s = this.breakers.get(worker);
    if (!s) {
      // Stored, not a fresh object per read: failure() counts on the object it gets back.
      const fresh: BreakerState = { kind: 'closed', failures: 0 };
      this.breakers.set(worker, fresh);
      return fresh;
    }
    if (s.kind === 'open' && this.options.clock.now() >= s.until) {
      return this.move(worker, s, { kind: 'half-open', inUse: 0, successes: 0, trips: s.trips });
    }
    return s;
  }

  /** True when the worker may be offered traffic now (closed, or half-open with a free permit). */
  allows(worker: string): boolean {
    const s = this.state(worker);
    return s.kind === 'closed' || (s.kind === 'half-open' && s.inUse < this.options.halfOpenPermits);
  }

  /**
   * Takes the right to send one request: always granted when closed, one permit when half-open.
   * Every granted acquire must be followed by exactly one of success, failure or release.
   */
  acquire(worker: string): boolean {
    const s = this.state(worker);
    if (s.kind === 'closed') return true;
    if (s.kind === 'half-open' && s.inUse < this.options.halfOpenPermits) {
      s.inUse++;
      return true;
    }
    return false;
  }

  /**
   * allow → acquire → record in one place (the `execute` shape of a breaker policy): takes the
   * right to send one attempt and returns the permit its outcome is recorded with, or undefined
   * when the breaker refuses now. Success counts towards closing; failures that count against a
   * worker (timeouts, worker failures, broken streams) towards opening; anything else (caller
   * errors, overload rejections, cancellations, not delivered) only frees a half-open permit.
   */
  admit(worker: string): BreakerPermit | undefined {
    const ticket = this.state(worker);
    if (!this.acquire(worker)) return undefined;
    return new Permit(this, worker, ticket);
  }


  /**
   * The state object a permit was taken from: pass it back with the outcome so that a probe
   * admitted in an earlier half-open period cannot free a permit of (or close) a later one.
   */
  ticket(worker: string): BreakerState {
    return this.state(worker);
  }

  /** The attempt succeeded. */
  success(worker: string, ticket?: BreakerState): void {
    const s = this.state(worker);
    if (isStale(s, ticket)) return;
    if (s.kind === 'closed') {
      if (s.failures !== 0) s.failures = 0;
    } else if (s.kind === 'half-open') {
      s.inUse = Math.max(0, s.inUse - 1);
      s.successes++;
      if (s.successes >= this.options.successThreshold) this.move(worker, s, { kind: 'closed', failures: 0 });
    }
  }

  /** The attempt failed in a way that counts against the worker. Returns true when this tripped it. */
  failure(worker: string, ticket?: BreakerState): boolean {
    const s = this.state(worker);
    if (isStale(s, ticket)) return false;
    if (s.kind === 'closed') {
      s.failures++;
      if (s.failures >= this.options.failureThreshold) {
        this.move(worker, s, this.opened(1));
        return true;
      }
      return false;
    }
    if (s.kind === 'half-open') {
      this.move(worker, s, this.opened(s.trips + 1));
      return true;
    }
    return false;
  }

  /** The attempt ended in a way that says nothing about the worker: frees a half-open permit. */
  release(worker: string, ticket?: BreakerState): void {
    const s = this.state(worker);
    if (isStale(s, ticket)) return;
    if (s.kind === 'half-open') s.inUse = Math.max(0, s.inUse - 1);
  }

  /** Time until the first of these workers turns half-open (ms), or undefined if none is open. */
  retryAfterMs(workers: Iterable<string>): number | undefined {
    const now = this.options.clock.now();
    let best: number | undefined;
    for (const w of workers) {
      const s = this.state(w);
      const wait = s.kind === 'open' ? s.until - now : s.kind === 'half-open' ? 0 : undefined;
      if (wait !== undefined && (best === undefined || wait < best)) best = wait;
    }
    return best;
  }

  /** Every worker with a breaker and its state kind, for metrics. */
  snapshot(): Array<[string, BreakerKind]> {
    return [...this.breakers.keys()].map((w) => [w, this.state(w).kind]);
  }

  /** An operator's reset: closed with no failures counted, whatever it was (a transition when it moves). */
  reset(worker: string): BreakerKind {
    const s = this.state(worker);
    this.move(worker, s, { kind: 'closed', failures: 0 });
    return s.kind;
  }

  /**
   * Another controller opened its breaker for `worker`: evidence, not a verdict. A closed breaker
   * here opens for `ms`, then half-opens by the clock and its own probes decide; an open or
   * half-open one is already under this controller's own judgement and is left alone.
   */
  peerOpened(worker: string, ms: number): void {
    const s = this.state(worker);
    if (s.kind !== 'closed' || !(ms > 0)) return;
    // trips 0: a failed probe then opens it as a first trip of its own (timeoutMs), not a repeat.
    this.move(worker, s, { kind: 'open', until: this.options.clock.now() + ms, trips: 0 }, 'peer');
  }

  /** Another controller closed its breaker for `worker`: an open one here half-opens now, to probe. */
  peerClosed(worker: string): void {
    const s = this.state(worker);
    if (s.kind === 'open') this.move(worker, s, { kind: 'half-open', inUse: 0, successes: 0, trips: s.trips }, 'peer');
  }

  forget(worker: string): void {
    this.breakers.delete(worker);
  }

  private opened(trips: number): BreakerState {
    const { timeoutMs, maxTimeoutMs, clock } = this.options;
    const base = Math.min(maxTimeoutMs, timeoutMs * 2 ** Math.min(trips - 1, 30));
    // ±10% jitter so breakers tripped together do not probe together.
    const duration = Math.min(maxTimeoutMs, base * (0.9 + 0.2 * this.random()));
    return { kind: 'open', until: clock.now() + duration, trips };
  }

  private move(worker: string, from: BreakerState, to: BreakerState, cause: 'local' | 'peer' = 'local'): BreakerState {
    this.breakers.set(worker, to);
    if (from.kind !== to.kind) this.options.onTransition?.(worker, from.kind, to.kind, cause);
    return to;
  }
}

/**
 * What counts against a worker: errors, disconnects, broken streams, and timeouts only when the
 * worker went quiet (no first token within its limit, silence mid-answer: `detail.stalled`). A
 * slow worker that keeps producing is never blamed for a deadline or a cap, and a request the
 * client cancelled never counts. Without a detail the outcome class alone decides.
 */
export function countsAgainst(outcome: OutcomeClass, detail?: FailureDetail): boolean {
  if (!countsAgainstWorker(outcome)) return false;
  return detail === undefined || !TIMEOUT_CODES.has(detail.code) || detail.stalled !== undefined;
}

/** One granted acquire; its outcome is recorded once. */
class Permit implements BreakerPermit {
  private recorded = false;

  constructor(
    private readonly book: BreakerBook,
    readonly worker: string,
    private readonly ticket: BreakerState,
  ) {}

  record(outcome: OutcomeClass | 'success', detail?: FailureDetail): boolean {
    if (this.recorded) return false;
    this.recorded = true;
    if (outcome === 'success') {
      this.book.success(this.worker, this.ticket);
      return false;
    }
    if (countsAgainst(outcome, detail)) return this.book.failure(this.worker, this.ticket);
    this.book.release(this.worker, this.ticket);
    return false;
  }
}
