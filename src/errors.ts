/**
 * The one error catalogue. Every failure a request can meet is a RouterError with a
 * stable code, an outcome class, an HTTP status and an OpenAI-shaped body. The class, never the
 * message text, decides retries, breaker accounting and the final answer.
 */

/** Outcome classes (docs/errors.md); each attempt ends in exactly one. */
export type OutcomeClass =
  | 'success'
  | 'not_delivered' // no responders, worker gone: retry at once elsewhere, mark offline
  | 'rejected' // overloaded before any work: retry with backoff, does not count against the worker
  | 'ambiguous' // timeout or disconnect before the first chunk: retry after cancel, counts
  | 'worker_failure' // engine error before the first chunk: retry, counts
  | 'committed' // failure after the first chunk reached the client: never retried blindly
  | 'caller' // the request itself is wrong: never retried, never counted
  | 'no_capacity' // nothing to route to: fail fast with Retry-After
  | 'cancelled'; // the client went away: nobody is waiting for an answer

export const OUTCOME_CLASSES: readonly OutcomeClass[] = [
  'success', 'not_delivered', 'rejected', 'ambiguous', 'worker_failure', 'committed', 'caller', 'no_capacity', 'cancelled',
];

interface CatalogueEntry {
  status: number;
  /** OpenAI's `error.type`: `invalid_request_error` for 4xx, `server_error` for 5xx (what OpenAI itself sends). */
  type: string;
  /**
   * OpenAI's `error.code` for the same situation, lower case, which clients and SDK wrappers switch
   * on (`model_not_found`, `context_length_exceeded`, ...); where OpenAI has none, our code in
   * lower snake case. Our stable code travels beside it as `error.router_code`.
   */
  openaiCode: string;
  /** `error.param` when the error itself does not name one (OpenAI names `messages` for a too-long prompt). */
  param?: string;
  outcome: OutcomeClass;
}

/**
 * Stable codes; docs/errors.md lists each with its meaning. The one table from our codes to the
 * HTTP status, OpenAI's `type` and `code`, and the outcome class.
 */
export const ERROR_CATALOGUE = {
  REQUEST_VALIDATION_FAILED: { status: 400, type: 'invalid_request_error', openaiCode: 'request_validation_failed', outcome: 'caller' },
  CONTEXT_LENGTH_EXCEEDED: { status: 400, type: 'invalid_request_error', openaiCode: 'context_length_exceeded', param: 'messages', outcome: 'caller' },
  MODEL_NOT_FOUND: { status: 404, type: 'invalid_request_error', openaiCode: 'model_not_found', param: 'model', outcome: 'caller' },
  NOT_FOUND: { status: 404, type: 'invalid_request_error', openaiCode: 'unknown_url', outcome: 'caller' },
  ADMIN_UNAUTHORIZED: { status: 401, type: 'invalid_request_error', openaiCode: 'admin_unauthorized', outcome: 'caller' },
  ADMIN_FORBIDDEN: { status: 403, type: 'invalid_request_error', openaiCode: 'admin_forbidden', outcome: 'caller' },
  // Client API keys (cluster.auth.keys): no key, an unknown key, a model the key may not use.
  // OpenAI answers 401 and 403 with type invalid_request_error too; clients switch on `code`.
  MISSING_API_KEY: { status: 401, type: 'invalid_request_error', openaiCode: 'missing_api_key', outcome: 'caller' },
  INVALID_API_KEY: { status: 401, type: 'invalid_request_error', openaiCode: 'invalid_api_key', outcome: 'caller' },
  MODEL_NOT_ALLOWED: { status: 403, type: 'invalid_request_error', openaiCode: 'model_not_allowed', param: 'model', outcome: 'caller' },
  REQUEST_TOO_LARGE: { status: 413, type: 'invalid_request_error', openaiCode: 'request_too_large', outcome: 'caller' },
  // A per-key limit (requests or tokens per minute, requests at once): come back after Retry-After.
  // OpenAI's own 429s carry type `requests` (or `tokens`) and code rate_limit_exceeded.
  RATE_LIMIT_EXCEEDED: { status: 429, type: 'requests', openaiCode: 'rate_limit_exceeded', outcome: 'caller' },
  CLIENT_CLOSED_REQUEST: { status: 499, type: 'invalid_request_error', openaiCode: 'client_closed_request', outcome: 'cancelled' },
  // A hedged attempt that lost the race to the first token: cancelled, never counted, never sent to a client.
  HEDGE_LOST: { status: 499, type: 'invalid_request_error', openaiCode: 'hedge_lost', outcome: 'cancelled' },
  INTERNAL_ERROR: { status: 500, type: 'server_error', openaiCode: 'server_error', outcome: 'worker_failure' },
  WORKER_ERROR: { status: 502, type: 'server_error', openaiCode: 'worker_error', outcome: 'worker_failure' },
  ALL_RETRIES_EXHAUSTED: { status: 502, type: 'server_error', openaiCode: 'all_retries_exhausted', outcome: 'worker_failure' },
  STREAM_INTERRUPTED: { status: 502, type: 'server_error', openaiCode: 'stream_interrupted', outcome: 'committed' },
  WORKER_UNAVAILABLE: { status: 503, type: 'server_error', openaiCode: 'worker_unavailable', outcome: 'not_delivered' },
  WORKER_OVERLOADED: { status: 503, type: 'server_error', openaiCode: 'worker_overloaded', outcome: 'rejected' },
  // The controller's own NATS link dropped: says nothing about the worker, so never counted.
  NATS_DISCONNECTED: { status: 503, type: 'server_error', openaiCode: 'nats_disconnected', outcome: 'rejected' },
  NO_WORKERS_AVAILABLE: { status: 503, type: 'server_error', openaiCode: 'no_workers_available', outcome: 'no_capacity' },
  CIRCUIT_BREAKER_OPEN: { status: 503, type: 'server_error', openaiCode: 'circuit_breaker_open', outcome: 'no_capacity' },
  RETRY_BUDGET_EXHAUSTED: { status: 503, type: 'server_error', openaiCode: 'retry_budget_exhausted', outcome: 'no_capacity' },
  // An HTTP connection cap (controller.maxConnections, maxConnectionsPerClient): nothing was routed.
  TOO_MANY_CONNECTIONS: { status: 503, type: 'server_error', openaiCode: 'too_many_connections', outcome: 'no_capacity' },
  WORKER_TIMEOUT: { status: 504, type: 'server_error', openaiCode: 'worker_timeout', outcome: 'ambiguous' },
  STREAM_IDLE_TIMEOUT: { status: 504, type: 'server_error', openaiCode: 'stream_idle_timeout', outcome: 'ambiguous' },
  REQUEST_TIMEOUT: { status: 504, type: 'server_error', openaiCode: 'request_timeout', outcome: 'ambiguous' },
} as const satisfies Record<string, CatalogueEntry>;

/** The header that carries the stable code on every error answer (beside `error.router_code`). */
export const ERROR_CODE_HEADER = 'x-mlx-error-code';

export type ErrorCode = keyof typeof ERROR_CATALOGUE;

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.prototype.hasOwnProperty.call(ERROR_CATALOGUE, code);
}

/** One attempt as the client sees it in ALL_RETRIES_EXHAUSTED and in `metadata.attempts`. */
export interface AttemptRecord {
  attempt: number;
  worker: string | null;
  outcome: OutcomeClass;
  code: ErrorCode | null;
  durationMs: number;
  /** Set on an attempt the `hedge` middleware started beside a slow one (not a retry). */
  hedge?: true;
}

export interface RouterErrorOptions {
  /** Defaults to the catalogue's class; a worker may report another (its own wire error). */
  outcome?: OutcomeClass;
  param?: string | null;
  /** When the client should come back; becomes a `Retry-After` header (whole seconds, rounded up). */
  retryAfterMs?: number;
  worker?: string;
  /** The worker itself said so (a wire error reply), as opposed to the router or NATS. */
  fromWorker?: boolean;
  attempts?: AttemptRecord[];
  cause?: unknown;
}

const BRAND = Symbol.for('mlx-router.RouterError');

export class RouterError extends Error {
  readonly [BRAND] = true;
  readonly code: ErrorCode;
  readonly outcome: OutcomeClass;
  readonly status: number;
  readonly type: string;
  /** OpenAI's lower-case `error.code` for this error (the catalogue's `openaiCode`). */
  readonly openaiCode: string;
  readonly param: string | null;
  readonly retryAfterMs?: number;
  readonly worker?: string;
  readonly fromWorker: boolean;
  attempts?: AttemptRecord[];

  constructor(code: ErrorCode, message: string, options: RouterErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    const entry = ERROR_CATALOGUE[code];
    this.name = 'RouterError';
    this.code = code;
    this.outcome = options.outcome ?? entry.outcome;
    this.status = entry.status;
    this.type = entry.type;
    this.openaiCode = entry.openaiCode;
    this.param = options.param ?? ('param' in entry ? entry.param : null);
    this.retryAfterMs = options.retryAfterMs;
    this.worker = options.worker;
    this.fromWorker = options.fromWorker ?? false;
    this.attempts = options.attempts;
  }

  /**
   * The OpenAI-shaped body: `{"error": {"message", "type", "param", "code", "router_code"}}`
   * (+ attempts): `code` is OpenAI's lower-case code, `router_code` our stable one.
   */
  toJSON(): { error: Record<string, unknown> } {
    const error: Record<string, unknown> = {
      message: this.message,
      type: this.type,
      param: this.param,
      code: this.openaiCode,
      router_code: this.code,
    };
    if (this.attempts && this.attempts.length > 0) error.attempts = this.attempts;
    return { error };
  }

  /** Header value in whole seconds, or undefined when the client need not wait. */
  retryAfterSeconds(): number | undefined {
    if (this.retryAfterMs === undefined) return undefined;
    return Math.max(1, Math.ceil(this.retryAfterMs / 1000));
  }
}

/** Brand check: safer than `instanceof` across module copies (cockatiel style). */
export function isRouterError(err: unknown): err is RouterError {
  return typeof err === 'object' && err !== null && (err as Record<symbol, unknown>)[BRAND] === true;
}

/** Anything thrown becomes a RouterError; unknown throwables are internal errors, cause kept. */
export function toRouterError(err: unknown): RouterError {
  if (isRouterError(err)) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new RouterError('INTERNAL_ERROR', `internal error: ${message}`, { cause: err });
}

/** Classes after which another attempt may help. */
export function isRetryableOutcome(outcome: OutcomeClass): boolean {
  return outcome === 'not_delivered' || outcome === 'rejected' || outcome === 'ambiguous' || outcome === 'worker_failure';
}

/**
 * Classes that count against the worker's breaker. `not_delivered` does not: the
 * worker is marked offline instead, and its breaker should not punish it when it comes back.
 */
export function countsAgainstWorker(outcome: OutcomeClass): boolean {
  return outcome === 'ambiguous' || outcome === 'worker_failure' || outcome === 'committed';
}
