/**
 * RouteContext: everything one request carries through the chain. Fixed fields are set
 * once by createContext; routing fields are reset for every attempt by the assembler; outputs are
 * filled by dispatch. Extensions go in `state`.
 */
import type { Clock } from './clock';
import type { AttemptRecord } from './errors';
import type { Logger } from './logger';
import type { ClientKey, WorkerInfo } from './types';
import type { Usage, WireEnd, WireRequest, WireResult } from './protocol';
import type { ChoiceDelta } from './protocol-v2';

/** A middleware: `(ctx, next)`, as in koa-compose. */
export type Next = () => Promise<void>;
export type Middleware = (ctx: RouteContext, next: Next) => Promise<void>;

/** Where a streamed answer goes. The first `write` is the commit point. */
export interface StreamSink {
  readonly committed: boolean;
  /** Text already delivered to the client (kept only when stream resume is on). */
  readonly streamed: string;
  /** True when the stream outgrew what is kept for resume (cluster.streaming.maxResumeChars). */
  readonly tooLongToResume?: boolean;
  /** Forwards one piece of text to the client; false when the client is too slow (over the cap). */
  write(text: string): boolean;
  /** v2: forwards engine deltas whole (tool calls, several choices, logprobs); as `write` otherwise. */
  writeChoices?(choices: ChoiceDelta[]): boolean;
  /**
   * False once the client got more than choice 0's plain text (a tool call, another choice): a
   * resume could not continue that exactly, so a break then ends the stream (docs/streaming.md).
   */
  readonly resumable?: boolean;
}

/** Per-attempt state: fresh for each attempt. */
export interface AttemptState {
  /** 1-based attempt number. */
  readonly number: number;
  readonly startedAt: number;
  /** Aborts when this attempt must end: its timeout, or the request's end. */
  readonly signal: AbortSignal;
  abort(reason: unknown): void;
  /**
   * Called by dispatch on every sign of generation: a streamed chunk, or a buffered attempt's
   * `progress` message (protocol 1.1). Tells every progress listener (the timeout middleware's
   * TTFT and idle limits).
   */
  progress(): void;
  /** Follows this attempt's progress (the timeout middleware's idle limit); returns the remover. */
  onProgress(listener: () => void): () => void;
  /** Chunks this attempt has delivered. */
  chunks: number;
  /** When this attempt's first token showed (a chunk or a progress message), on the clock. */
  firstTokenAt?: number;
  /**
   * Set by the timeout middleware when it ended the attempt because the worker went quiet: no
   * first token within its limit, or silence mid-answer. Only such timeouts count against a
   * worker's breaker (the breaker's permit reads it); a limit that cut a producing attempt (the
   * request deadline, the last-resort attempt cap) says nothing about the worker.
   */
  stalled?: 'first' | 'idle';
  /**
   * Checks the worker `select` chooses must pass, installed for this attempt by middleware before
   * `select` (the breaker takes its permit here). Fresh for each attempt.
   */
  readonly admissions: Admission[];
  /** When this attempt's first chunk arrived (clock ms; streams only). */
  firstChunkAt?: number;
  /** The W3C traceparent this attempt was sent with (its span in the request's trace). */
  traceparent?: string;
  /** Set by the `hedge` middleware on an attempt it started beside a slow one (not a retry). */
  hedge?: true;
}

/**
 * A say over which worker an attempt may go to. `allows` filters candidates (also those that come
 * online while `select` waits); `admit` is called once, for the chosen worker, and may refuse it
 * (a half-open breaker whose permits were taken meanwhile): `select` then picks another.
 */
export interface Admission {
  allows(worker: WorkerInfo): boolean;
  admit(worker: WorkerInfo): boolean;
}

/** Attempt state with its methods on the prototype: nothing allocated per attempt beyond the object. */
class Attempt implements AttemptState {
  chunks = 0;
  readonly admissions: Admission[] = [];
  firstChunkAt?: number;
  traceparent?: string;
  hedge?: true;
  private listeners: Array<() => void> | undefined;

  /** `controller`: the attempt's own; absent, one is made when first needed (see createContext). */
  constructor(
    readonly number: number,
    readonly startedAt: number,
    private controller?: AbortController,
  ) {}

  get signal(): AbortSignal {
    return (this.controller ??= new AbortController()).signal;
  }

  abort(reason: unknown): void {
    (this.controller ??= new AbortController()).abort(reason);
  }

  progress(): void {
    const listeners = this.listeners;
    if (listeners) for (let i = 0; i < listeners.length; i++) listeners[i]();
  }

  onProgress(listener: () => void): () => void {
    (this.listeners ??= []).push(listener);
    return () => {
      this.listeners = this.listeners?.filter((l) => l !== listener);
    };
  }
}

/** A fresh attempt state: `signal` and `abort` come from the attempt's own AbortController. */
export function newAttempt(number: number, startedAt: number, controller: AbortController): AttemptState {
  return new Attempt(number, startedAt, controller);
}

/** What `metadata.hedge` reports: a hedge was due (no first token by the hedge point). */
export interface HedgeReport {
  /** won / lost / failed, or skipped_budget / skipped_no_worker when none was started. */
  outcome: string;
  /** The worker the hedge went to (started hedges only). */
  worker?: string;
  /** The hedge point: ms after the first attempt's worker was chosen. */
  afterMs: number;
}

/** What the answer's `metadata` and headers report. */
export interface RequestMetrics {
  retryCount: number;
  /** Streams continued on another worker after breaking mid-answer. */
  resumes: number;
  circuitBreakerTrips: number;
  timeouts: number;
  /** Attempts the `hedge` middleware started beside slow ones (not counted in retryCount). */
  hedges?: number;
  /** The last hedge decision of the request, when one was due: its outcome and worker. */
  hedge?: HedgeReport;
  failedWorkers: string[];
  selectedWorker: string | null;
  totalDurationMs: number;
}

export interface RouteContext {
  readonly requestId: string;
  readonly request: WireRequest;
  readonly stream: boolean;
  /** Child logger with the request id on every line. */
  readonly log: Logger;
  readonly clock: Clock;
  /** Aborts when the request ends early: the client left or the request deadline passed. */
  readonly signal: AbortSignal;
  /** Absolute deadline of the whole request, on `clock`. */
  readonly deadline: number;
  readonly startedAt: number;
  /** Lower-cased request headers (session ids and extensions read them). */
  readonly headers: Readonly<Record<string, string | undefined>>;
  /** Session id from `x-session-id` or the body's `session_id`. */
  readonly sessionId?: string;
  /** The client's API key (its id, models, limits, priority), when cluster.auth.keys are on. */
  readonly client?: ClientKey;

  /** The session's sticky worker, when the session middleware found one. */
  stickyWorker?: string;
  /** Workers that may serve this attempt; reset per attempt, narrowed by middleware. */
  candidates: WorkerInfo[];
  /** The worker chosen for this attempt. */
  worker?: WorkerInfo;
  attempt: AttemptState;
  /** Every finished attempt, in order. */
  readonly attempts: AttemptRecord[];
  /** Stream resume: the text the next attempt must continue after (set by retry). */
  continuation?: string;
  /**
   * Set by `retry` before each attempt: how many more attempts may follow this one. The timeout
   * middleware keeps part of the deadline for them (cluster.requestRouting.deadlineShare).
   */
  retriesLeft?: number;

  /** Buffered answer. */
  result?: WireResult;
  /** Streamed answer's final message (finish reason and usage). */
  end?: WireEnd;
  /** Streaming only: where chunks go. */
  sink?: StreamSink;
  readonly metrics: RequestMetrics;
  /** Free space for custom middleware. */
  readonly state: Record<string, unknown>;
}

export interface ContextInit {
  requestId: string;
  request: WireRequest;
  log: Logger;
  clock: Clock;
  signal: AbortSignal;
  deadline: number;
  headers?: Record<string, string | undefined>;
  sessionId?: string;
  sink?: StreamSink;
  client?: ClientKey;
}


/** The one constructor of RouteContext. */
export function createContext(init: ContextInit): RouteContext {
  const now = init.clock.now();
  return {
    requestId: init.requestId,
    request: init.request,
    stream: init.request.stream,
    log: init.log,
    clock: init.clock,
    signal: init.signal,
    deadline: init.deadline,
    startedAt: now,
    headers: init.headers ?? {},
    sessionId: init.sessionId,
    client: init.client,
    candidates: [],
    // Attempt 0, before any runs: its AbortController (about 5 µs to make) only when something asks.
    attempt: new Attempt(0, now),
    attempts: [],
    sink: init.sink,
    metrics: { retryCount: 0, resumes: 0, circuitBreakerTrips: 0, timeouts: 0, failedWorkers: [], selectedWorker: null, totalDurationMs: 0 },
    state: {},
  };
}

/** Usage of the answer, buffered or streamed. */
export function answerUsage(ctx: RouteContext): Usage | undefined {
  return ctx.result?.usage ?? ctx.end?.usage;
}
