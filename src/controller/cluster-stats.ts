/**
 * ClusterStats: the recent history the cluster API and the dashboard show, built from the event
 * bus's attempt and request observations. Per worker: the last samples of TTFT and tokens/s, and
 * attempt counts by outcome class. For the controller: fixed time buckets (default 5 s over 10
 * minutes) of request count, errors, and latency and TTFT samples for p50/p99. Bounded memory:
 * samples per bucket and per worker are capped; forgotten workers are dropped.
 */
import type { ClusterEvent, EventBus } from './events';

export interface WorkerStats {
  /** Median of the last TTFT samples (ms), null before the first streamed attempt. */
  ttftMs: number | null;
  /** Median of the last tokens/s samples, null before the first answer with usage. */
  tokensPerSecond: number | null;
  /** Attempts by outcome class, `success` included. */
  outcomes: Record<string, number>;
  /** Failed attempts by error code. */
  errors: Record<string, number>;
}

export interface SeriesPoint {
  /** Bucket start (epoch ms). */
  t: number;
  requests: number;
  errors: number;
  p50Ms: number | null;
  p99Ms: number | null;
  ttftP50Ms: number | null;
  ttftP99Ms: number | null;
}

/** The last `cap` values added (in no particular order: only quantiles are read). */
class Recent {
  readonly values: number[] = [];
  private next = 0;

  constructor(private readonly cap: number) {}

  /** Adds `v`; once full, it replaces the oldest value in place (no array shift per sample). */
  add(v: number): void {
    if (this.values.length < this.cap) {
      this.values.push(v);
      return;
    }
    this.values[this.next] = v;
    this.next = (this.next + 1) % this.cap;
  }
}

interface Bucket {
  t: number;
  requests: number;
  errors: number;
  durations: Recent;
  ttfts: Recent;
}

interface WorkerRecord {
  ttft: Recent;
  tps: Recent;
  outcomes: Record<string, number>;
  errors: Record<string, number>;
}

const SAMPLES_PER_WORKER = 50;
const SAMPLES_PER_BUCKET = 2000;

export function quantile(values: number[], q: number): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return Math.round(sorted[i] * 100) / 100;
}

export interface ClusterStatsOptions {
  /** Bucket width (ms, default 5000). */
  bucketMs?: number;
  /** How much history to keep (ms, default 600000). */
  historyMs?: number;
  /** Wall clock (ms). */
  now?: () => number;
}

export class ClusterStats {
  private readonly workers = new Map<string, WorkerRecord>();
  private readonly buckets: Bucket[] = [];
  private readonly bucketMs: number;
  private readonly historyMs: number;
  private readonly now: () => number;
  private readonly unsubscribe: () => void;

  constructor(bus: EventBus, options: ClusterStatsOptions = {}) {
    this.bucketMs = options.bucketMs ?? 5000;
    this.historyMs = options.historyMs ?? 600_000;
    this.now = options.now ?? Date.now;
    this.unsubscribe = bus.subscribe((e) => this.observe(e));
  }

  close(): void {
    this.unsubscribe();
  }

  worker(id: string): WorkerStats {
    const r = this.workers.get(id);
    return {
      ttftMs: r ? quantile(r.ttft.values, 0.5) : null,
      tokensPerSecond: r ? quantile(r.tps.values, 0.5) : null,
      outcomes: { ...(r?.outcomes ?? {}) },
      errors: { ...(r?.errors ?? {}) },
    };
  }

  /** Drops a worker's history (the registry forgot it). */
  forget(id: string): void {
    this.workers.delete(id);
  }

  /** Buckets over the last `windowMs` (at most the history kept), oldest first, empty ones included. */
  series(windowMs: number = this.historyMs): SeriesPoint[] {
    const now = this.now();
    const first = this.bucketStart(now - Math.min(windowMs, this.historyMs));
    const byStart = new Map(this.buckets.map((b) => [b.t, b]));
    const out: SeriesPoint[] = [];
    for (let t = first; t <= now; t += this.bucketMs) {
      const b = byStart.get(t);
      out.push({
        t,
        requests: b?.requests ?? 0,
        errors: b?.errors ?? 0,
        p50Ms: b ? quantile(b.durations.values, 0.5) : null,
        p99Ms: b ? quantile(b.durations.values, 0.99) : null,
        ttftP50Ms: b ? quantile(b.ttfts.values, 0.5) : null,
        ttftP99Ms: b ? quantile(b.ttfts.values, 0.99) : null,
      });
    }
    return out;
  }

  private bucketStart(t: number): number {
    return Math.floor(t / this.bucketMs) * this.bucketMs;
  }

  private observe(e: ClusterEvent): void {
    if (e.type === 'attempt') {
      if (!e.worker) return;
      let r = this.workers.get(e.worker);
      if (!r) this.workers.set(e.worker, (r = { ttft: new Recent(SAMPLES_PER_WORKER), tps: new Recent(SAMPLES_PER_WORKER), outcomes: {}, errors: {} }));
      r.outcomes[e.outcome] = (r.outcomes[e.outcome] ?? 0) + 1;
      if (e.code) r.errors[e.code] = (r.errors[e.code] ?? 0) + 1;
      if (e.ttftMs !== undefined) r.ttft.add(e.ttftMs);
      if (e.outcome === 'success' && e.completionTokens && e.durationMs > 0) {
        // Generation rate: tokens over the time after the first token when known, else the whole attempt.
        const genMs = e.ttftMs !== undefined && e.durationMs - e.ttftMs > 0 ? e.durationMs - e.ttftMs : e.durationMs;
        r.tps.add(Math.round((e.completionTokens / genMs) * 1000 * 10) / 10);
      }
    } else if (e.type === 'request') {
      const t = this.bucketStart(e.time);
      let b = this.buckets[this.buckets.length - 1];
      if (!b || b.t !== t) {
        b = { t, requests: 0, errors: 0, durations: new Recent(SAMPLES_PER_BUCKET), ttfts: new Recent(SAMPLES_PER_BUCKET) };
        this.buckets.push(b);
        while (this.buckets.length > 0 && this.buckets[0].t < t - this.historyMs) this.buckets.shift();
      }
      b.requests++;
      if (e.status >= 500) b.errors++;
      b.durations.add(e.durationMs);
      if (e.ttftMs !== undefined) b.ttfts.add(e.ttftMs);
    }
  }
}
