/**
 * Adaptive limits: the time to first token and the longest gap between tokens, learned per worker
 * and model from recent successful attempts. A limit is a high percentile of the recent
 * observations times a factor, kept between a floor and the configured limit (the ceiling), so a
 * 20 ms-TTFT cluster detects a hang in about a second while a 5 s-TTFT cluster is judged by its
 * own pace. Until enough observations exist, the configured limit applies.
 */

export interface AdaptiveOptions {
  /** Learn limits at all (default true). */
  enabled: boolean;
  /** Multiple of the observed percentile (default 4). */
  factor: number;
  /** No learned limit is shorter than this (ms, default 1000). */
  floorMs: number;
  /** Observations needed before a learned limit applies (default 20). */
  minSamples: number;
  /** Percentile of the recent observations, 0..1 (default 0.99). */
  percentile?: number;
  /** Recent observations kept per worker and model (default 64). */
  window?: number;
  /** Worker+model pairs remembered, least recently updated forgotten first (default 1024). */
  maxKeys?: number;
}

/** A fixed-size ring of the most recent observations. */
class Ring {
  private readonly values: Float64Array;
  private readonly sorted: Float64Array;
  private dirty = false;
  private next = 0;
  count = 0;

  constructor(size: number) {
    this.values = new Float64Array(size);
    this.sorted = new Float64Array(size);
  }

  push(v: number): void {
    this.dirty = true;
    this.values[this.next] = v;
    this.next = (this.next + 1) % this.values.length;
    this.count = Math.min(this.count + 1, this.values.length);
  }

  /**
   * The p-quantile of the observations. Sorted in a scratch typed array (numeric order, no boxing,
   * no comparator calls) and only when an observation came since the last call: the limits are
   * read on every attempt, and a copy sorted with a comparator per read was a visible share of the
   * controller's CPU per request.
   */
  percentile(p: number): number {
    if (this.dirty) {
      this.sorted.set(this.values.subarray(0, this.count));
      this.sorted.subarray(0, this.count).sort();
      this.dirty = false;
    }
    return this.sorted[Math.min(this.count - 1, Math.floor(p * this.count))];
  }
}

interface Entry {
  ttft: Ring;
  gap: Ring;
}

export class AdaptiveLimits {
  /**
   * By worker, then model: read on every attempt, so no key is built per read (a concatenated key
   * had to be flattened and hashed each time).
   */
  private readonly byWorker = new Map<string, Map<string, Entry>>();
  /** Every entry, least recently updated first: the first is the one to forget. */
  private readonly order = new Map<Entry, { worker: string; model: string }>();

  constructor(private readonly options: AdaptiveOptions) {}

  private entry(worker: string, model: string, create: boolean): Entry | undefined {
    let models = this.byWorker.get(worker);
    let e = models?.get(model);
    if (!create) return e;
    if (e) {
      const where = this.order.get(e)!;
      this.order.delete(e);
      this.order.set(e, where);
      return e;
    }
    const size = this.options.window ?? 64;
    e = { ttft: new Ring(size), gap: new Ring(size) };
    if (!models) this.byWorker.set(worker, (models = new Map()));
    models.set(model, e);
    this.order.set(e, { worker, model });
    if (this.order.size > (this.options.maxKeys ?? 1024)) {
      const [oldest, where] = this.order.entries().next().value as [Entry, { worker: string; model: string }];
      this.order.delete(oldest);
      const of = this.byWorker.get(where.worker);
      of?.delete(where.model);
      if (of?.size === 0) this.byWorker.delete(where.worker);
    }
    return e;
  }

  /** A successful attempt's time to first token (ms), prompt allowance already taken out. */
  observeTtft(worker: string, model: string, ms: number): void {
    if (this.options.enabled && Number.isFinite(ms) && ms >= 0) this.entry(worker, model, true)!.ttft.push(ms);
  }

  /** A successful streamed attempt's longest gap between two chunks (ms). */
  observeGap(worker: string, model: string, ms: number): void {
    if (this.options.enabled && Number.isFinite(ms) && ms >= 0) this.entry(worker, model, true)!.gap.push(ms);
  }

  /** The time-to-first-token limit for this worker and model: learned, or `ceiling`. */
  ttftLimit(worker: string, model: string, ceiling: number): number {
    return this.limit(this.entry(worker, model, false)?.ttft, ceiling);
  }

  /**
   * The `p`-th percentile (0..1) of this worker and model's recent times to first token, once at
   * least `minSamples` are known (the `hedge` middleware's hedge point); else undefined.
   */
  ttftPercentile(worker: string, model: string, p: number, minSamples: number): number | undefined {
    const ring = this.entry(worker, model, false)?.ttft;
    return ring && ring.count >= Math.max(1, minSamples) ? ring.percentile(p) : undefined;
  }

  /** The idle limit between tokens for this worker and model: learned, or `ceiling`. */
  idleLimit(worker: string, model: string, ceiling: number): number {
    return this.limit(this.entry(worker, model, false)?.gap, ceiling);
  }

  private limit(ring: Ring | undefined, ceiling: number): number {
    const { enabled, minSamples, factor, floorMs } = this.options;
    if (!enabled || !ring || ring.count < Math.max(1, minSamples)) return ceiling;
    const learned = ring.percentile(this.options.percentile ?? 0.99) * factor;
    return Math.min(ceiling, Math.max(floorMs, learned));
  }
}
