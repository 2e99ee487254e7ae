/**
 * Shared types with no owner of their own: the worker record every layer reads, and the narrow
 * views of the controller's shared objects that middleware use. Middleware depend on these
 * interfaces, never on the controller's classes, so the import graph has one direction:
 * middleware → src/types.ts ← src/controller.
 */
import type { Counter, Gauge, Histogram } from 'prom-client';
import type { OutcomeClass } from './errors';
import type { PromptCacheInfo } from './protocol';
import type { Capability } from './protocol-v2';

/** What the controller knows of one worker, from its heartbeats and this controller's traffic. */
export interface WorkerInfo {
  readonly id: string;
  models: string[];
  engine: string;
  maxConcurrent: number;
  /** In-flight count the worker reported in its last heartbeat (all controllers together). */
  reportedInFlight: number;
  /** Requests this controller has outstanding at the worker now. */
  outstanding: number;
  /**
   * Requests other controllers had at the worker at its last heartbeat: its reported in-flight
   * count less ours at that moment. Our own count is always current; theirs only this fresh.
   */
  foreignInFlight: number;
  /** Peak-EWMA latency of this controller's requests (ms); starts at 0 (unknown). */
  latencyMs: number;
  latencyAt: number;
  /** `unhealthy`: online, but its engine is down; never selected (forModel skips it). */
  state: 'ready' | 'draining' | 'unhealthy';
  lastSeen: number;
  /** Set by "no responders" or bye: offline until the next heartbeat. */
  gone: boolean;
  /** The worker's engine can continue a partial answer (stream resume). */
  continuation: boolean;
  /** The engine's prompt cache as the last heartbeat advertised it (size, epoch); absent: unknown. */
  promptCache?: PromptCacheInfo;
  /** Host and pid the worker reported (the registry sets empty / 0 when it did not). */
  host?: string;
  pid?: number;
  /** Models an operator took out of rotation on this worker (the registry always sets it). */
  drainingModels?: string[];
  /** Protocol 1.1: the worker sends progress for buffered requests at most this often (ms); 0: it does not. */
  progressMs: number;
  /** The worker's heartbeat period as it reports it (ms; 0 unknown): a late heartbeat triggers a probe. */
  heartbeatMs: number;
  /** Last time (controller clock) any reply of this worker reached this controller, or an attempt to it began. */
  lastActivityAt: number;
  /** Protocol version of its heartbeat: 1 gets the v1 request subset, 2 the client's body. */
  version: number;
  /** What each model is served for (v1 workers: chat only). */
  capabilities: Record<string, Capability[]>;
  /** The live worker process's instance id ('' when unknown): replies must carry it. */
  instance?: string;
}

/**
 * The client a request came from, recognised by its API key (cluster.auth.keys): its id (in logs,
 * metrics labels and answer metadata; never the key), what it may use and its limits.
 */
export interface ClientKey {
  readonly id: string;
  /** Models the key may use; undefined: every model. */
  readonly models?: readonly string[];
  /** Requests per minute; 0: no limit. */
  readonly rpm: number;
  /** Tokens per minute, counted from answers' usage; 0: no limit. */
  readonly tpm: number;
  /** Requests at once; 0: no limit. */
  readonly concurrency: number;
  /** Priority class when requests wait for a worker (cluster.auth.priorityWeights). */
  readonly priority: string;
  /** May read the operator endpoints and take admin actions. */
  readonly admin: boolean;
}

/** The worker registry as middleware see it. */
export interface WorkerDirectory {
  /** Online, ready workers serving the model. */
  forModel(model: string): WorkerInfo[];
  /** Every online worker, whatever its state or models. */
  online(): WorkerInfo[];
  /** Online workers that serve the model but report their engine unhealthy (so take no work). */
  unhealthyFor(model: string): WorkerInfo[];
  /** Some worker, online or not, has served the model (so waiting for one may help). */
  knowsModel(model: string): boolean;
  /** Some known worker for the model can continue a partial answer. */
  knowsContinuation(model: string): boolean;
  /** Resolves when a worker's state or load changed, after `ms`, or when `signal` aborts. */
  waitForChange(signal: AbortSignal, ms: number): Promise<void>;
  /** Takes a worker out of selection until its next heartbeat. */
  markOffline(id: string, reason: string): void;
  /** The worker said it is full (WORKER_OVERLOADED): count it saturated until its next heartbeat. */
  markFull?(id: string): void;
}

/**
 * What a failed attempt says beyond its outcome class: its error code, and whether the timeout
 * middleware ended it because the worker went quiet (`AttemptState.stalled`).
 */
export interface FailureDetail {
  code: string;
  stalled?: 'first' | 'idle';
}

/**
 * The right to send one attempt to a worker, granted by its circuit breaker. Exactly one
 * `record` per permit: the breaker decides from the outcome class (and, for timeouts, whether the
 * worker went quiet) whether it counts.
 */
export interface BreakerPermit {
  readonly worker: string;
  /** Records the attempt's outcome; returns true when this outcome opened the breaker. */
  record(outcome: OutcomeClass | 'success', detail?: FailureDetail): boolean;
}

/** Per-worker circuit breakers: allow → admit (take a permit) → record, one owner. */
export interface Breakers {
  /** The worker may be offered traffic now (closed, or half-open with a free permit). */
  allows(worker: string): boolean;
  /** Takes the permit to send one attempt, or undefined when the breaker refuses now. */
  admit(worker: string): BreakerPermit | undefined;
  /** Time until the first of these workers turns half-open (ms), or undefined if none is open. */
  retryAfterMs(workers: Iterable<string>): number | undefined;
}

/** The controller-wide retry budget (a token bucket): retries stop when it runs low. */
export interface RetryBudgetView {
  canRetry(): boolean;
  onSuccess(): void;
  onFailure(): void;
}

/** Session id → the worker that last answered it. */
/** Where a controller shares the session moves it makes, so that its peers follow them. */
export interface SessionMoveLog {
  record(session: string, worker: string): void;
}

export interface SessionStore {
  get(session: string): string | undefined;
  set(session: string, worker: string): void;
}

/** The controller's Prometheus instruments (prom-client), for the metrics middleware. */
export interface RouterInstruments {
  readonly requests: Counter<'status' | 'code' | 'stream'>;
  readonly attempts: Counter<'outcome'>;
  readonly retries: Counter;
  readonly timeouts: Counter<'kind'>;
  /** Hedge points reached, by outcome (the `hedge` middleware; optional for hand-built instruments). */
  readonly hedges?: Counter<'outcome'>;
  readonly duration: Histogram<'stream'>;
  readonly inFlight: Gauge;
  readonly prefixDecisions: Counter<'decision'>;
  readonly prefixRequests: Counter<'worker' | 'predicted' | 'reported'>;
  readonly prefixCachedTokens: Histogram<'worker'>;
  readonly prefixSavedTokens: Counter<'worker'>;
  readonly prefixDrops: Counter<'worker'>;
  /** Requests by client key id and final status (when API keys are on). */
  readonly keyRequests?: Counter<'key' | 'status'>;
  /** Tokens (usage) by client key id. */
  readonly keyTokens?: Counter<'key'>;
  /** Requests refused 429 by a per-key limit, by key id and limit (rpm, tpm, concurrency). */
  readonly rateLimited?: Counter<'key' | 'limit'>;
  /** Requests waiting for a worker slot now, by priority class. */
  readonly queued?: Gauge<'class'>;
  /** Requests refused at once because their predicted wait exceeded what they had left, by class. */
  readonly shedEarly?: Counter<'class'>;
}
