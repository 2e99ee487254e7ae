/**
 * Prometheus metrics of one controller, on its own prom-client Registry (no global state, so
 * several controllers in one process, as in tests, do not collide).
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { BreakerBook, BreakerKind } from './breakers';
import type { WorkerRegistry } from './registry';
import type { RouterInstruments } from '../types';

const BREAKER_VALUE: Record<BreakerKind, number> = { closed: 0, 'half-open': 1, open: 2 };

export interface MetricsSources {
  registry: WorkerRegistry;
  breakers: BreakerBook;
  /** Pending NATS reply handlers (leak detector). */
  pendingReplies: () => number;
}

export class RouterMetrics implements RouterInstruments {
  readonly register = new Registry();
  readonly requests: Counter<'status' | 'code' | 'stream'>;
  readonly attempts: Counter<'outcome'>;
  readonly retries: Counter;
  readonly timeouts: Counter<'kind'>;
  readonly hedges: Counter<'outcome'>;
  readonly breakerTransitions: Counter<'worker' | 'from' | 'to'>;
  readonly duration: Histogram<'stream'>;
  readonly ttft: Histogram;
  readonly inFlight: Gauge;
  readonly prefixDecisions: Counter<'decision'>;
  readonly prefixRequests: Counter<'worker' | 'predicted' | 'reported'>;
  readonly prefixCachedTokens: Histogram<'worker'>;
  readonly prefixSavedTokens: Counter<'worker'>;
  readonly prefixDrops: Counter<'worker'>;
  readonly keyRequests: Counter<'key' | 'status'>;
  readonly keyTokens: Counter<'key'>;
  readonly rateLimited: Counter<'key' | 'limit'>;
  readonly queued: Gauge<'class'>;
  readonly shedEarly: Counter<'class'>;

  constructor(sources?: MetricsSources) {
    const registers = [this.register];
    this.requests = new Counter({ name: 'mlx_router_requests_total', help: 'Requests by final HTTP status and error code.', labelNames: ['status', 'code', 'stream'], registers });
    this.attempts = new Counter({ name: 'mlx_router_attempts_total', help: 'Attempts by outcome class.', labelNames: ['outcome'], registers });
    this.retries = new Counter({ name: 'mlx_router_retries_total', help: 'Attempts after the first.', registers });
    this.timeouts = new Counter({ name: 'mlx_router_timeouts_total', help: 'Attempt timeouts by kind.', labelNames: ['kind'], registers });
    this.hedges = new Counter({
      name: 'mlx_router_hedges_total',
      help: 'hedge middleware: hedge points reached, by outcome (won, lost, failed, skipped_budget, skipped_no_worker).',
      labelNames: ['outcome'],
      registers,
    });
    this.breakerTransitions = new Counter({ name: 'mlx_router_breaker_transitions_total', help: 'Breaker state changes.', labelNames: ['worker', 'from', 'to'], registers });
    this.duration = new Histogram({
      name: 'mlx_router_request_duration_seconds',
      help: 'Request duration, all attempts included.',
      labelNames: ['stream'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.ttft = new Histogram({
      name: 'mlx_router_ttft_seconds',
      help: 'Time to first streamed chunk, as the client sees it.',
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.inFlight = new Gauge({ name: 'mlx_router_in_flight_requests', help: 'Requests being handled now.', registers });
    this.prefixDecisions = new Counter({ name: 'mlx_router_prefix_decisions_total', help: 'prefix middleware: why each attempt went where it went.', labelNames: ['decision'], registers });
    this.prefixRequests = new Counter({
      name: 'mlx_router_prefix_requests_total',
      help: 'prefix middleware: answered attempts per worker, by predicted and reported prompt cache hit (hit ratios).',
      labelNames: ['worker', 'predicted', 'reported'],
      registers,
    });
    this.prefixCachedTokens = new Histogram({
      name: 'mlx_router_prefix_cached_tokens',
      help: 'prefix middleware: cached prompt tokens each answer reported, per worker.',
      labelNames: ['worker'],
      buckets: [0, 64, 256, 1024, 4096, 16384, 65536],
      registers,
    });
    this.prefixSavedTokens = new Counter({ name: 'mlx_router_prefix_prefill_tokens_saved_total', help: 'prefix middleware: prompt tokens not prefilled thanks to the prompt cache, per worker.', labelNames: ['worker'], registers });
    this.keyRequests = new Counter({ name: 'mlx_router_key_requests_total', help: 'Requests by client API key id (never the key) and final HTTP status.', labelNames: ['key', 'status'], registers });
    this.keyTokens = new Counter({ name: 'mlx_router_key_tokens_total', help: 'Tokens (prompt + completion, from usage) by client API key id.', labelNames: ['key'], registers });
    this.rateLimited = new Counter({ name: 'mlx_router_rate_limited_total', help: 'Requests refused 429 by a per-key limit, by key id and limit (rpm, tpm, concurrency).', labelNames: ['key', 'limit'], registers });
    this.queued = new Gauge({ name: 'mlx_router_queued_requests', help: 'priority middleware: requests waiting for a worker slot now, by priority class.', labelNames: ['class'], registers });
    this.shedEarly = new Counter({ name: 'mlx_router_shed_early_total', help: 'priority middleware: requests refused at once because their predicted wait exceeded what they could wait, by class.', labelNames: ['class'], registers });
    this.prefixDrops = new Counter({ name: 'mlx_router_prefix_index_drops_total', help: "prefix middleware: a predicted hit missed, so the worker's predicted entries were dropped.", labelNames: ['worker'], registers });
    if (sources) {
      new Gauge({
        name: 'mlx_router_breaker_state',
        help: 'Breaker state per worker: 0 closed, 1 half-open, 2 open.',
        labelNames: ['worker'],
        registers,
        collect() {
          this.reset();
          for (const [worker, kind] of sources.breakers.snapshot()) this.set({ worker }, BREAKER_VALUE[kind]);
        },
      });
      new Gauge({
        name: 'mlx_router_workers_online',
        help: 'Workers online now.',
        registers,
        collect() {
          this.set(sources.registry.online().length);
        },
      });
      new Gauge({
        name: 'mlx_router_pending_replies',
        help: 'NATS reply handlers waiting now.',
        registers,
        collect() {
          this.set(sources.pendingReplies());
        },
      });
    }
  }
}
