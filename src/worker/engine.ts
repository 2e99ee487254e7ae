import type { FinishReason, Usage, WireRequest } from '../protocol';
import type { Capability, ChoiceDelta, ChoiceFinish } from '../protocol-v2';

/** What travels with a request besides its body: the W3C trace context of the attempt. */
export interface GenerateContext {
  traceparent?: string;
  tracestate?: string;
}

/** What an engine returns once generation ends. */
export interface EngineResult {
  finishReason: FinishReason;
  usage: Usage;
  /** True when the engine did not report usage and it was counted (estimateTokens) instead. */
  usageEstimated?: boolean;
  /** v2 buffered: the engine's choices whole (else the worker assembles them from deltas). */
  choices?: Array<Record<string, unknown>>;
  /** v2: the engine's other top-level answer fields (system_fingerprint; embeddings: data). */
  extra?: Record<string, unknown>;
  /** v2, n > 1: each choice's finish reason. */
  finishes?: ChoiceFinish[];
}

/** v2 output: engines that produce more than text call this instead of `onText`. */
export type DeltaSink = (delta: ChoiceDelta) => void;

/**
 * An inference engine behind a worker. `generate` calls `onText` for each piece of text in order
 * and resolves when generation ends; it rejects with an EngineError on failure and stops promptly
 * (rejecting with the signal's reason) when `signal` aborts.
 */
export interface Engine {
  readonly name: string;
  /** Where the engine answers, for engines behind HTTP (named in the worker's logs). */
  readonly url?: string;
  /** True when the engine honours `continuation` (stream resume); advertised in heartbeats. */
  readonly supportsContinuation?: boolean;
  /** Entries of the engine's prompt cache (conversations it keeps), advertised in heartbeats; absent: unknown. */
  readonly promptCacheSize?: number;
  models(): readonly string[];
  /**
   * `onDelta` is given for v2 requests (`request.body` set): an engine may then report whole
   * deltas (tool calls, several choices, logprobs) through it instead of text through `onText`.
   */
  generate(request: WireRequest, onText: (text: string) => void, signal: AbortSignal, onDelta?: DeltaSink, context?: GenerateContext): Promise<EngineResult>;
  /**
   * Whether `generate` reports this request's tokens as they come (through `onText`/`onDelta`);
   * absent means always. When it does not, a buffered request that asked for progress gets
   * keep-alive progress (no tokens) from the worker instead, so the controller sees it is alive.
   */
  reportsTokens?(request: WireRequest): boolean;
  /** v2: capabilities per model (default: `chat` for every model). */
  capabilities?(model: string): readonly Capability[];
  close?(): Promise<void>;
  /**
   * False while the engine behind is known to be down (an HTTP engine's probe fails): the worker
   * then says `unhealthy` in its heartbeats and refuses requests. Absent means always healthy.
   */
  healthy?(): boolean;
}

/** An engine failure with a protocol error code (its outcome class decides what the controller does). */
export class EngineError extends Error {
  constructor(
    readonly code: 'WORKER_ERROR' | 'CONTEXT_LENGTH_EXCEEDED' | 'REQUEST_VALIDATION_FAILED' | 'WORKER_OVERLOADED' | 'MODEL_NOT_FOUND',
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = 'EngineError';
  }
}
