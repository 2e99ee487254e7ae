import type { FinishReason, Usage, WireRequest } from '../protocol';

/** What an engine returns once generation ends. */
export interface EngineResult {
  finishReason: FinishReason;
  usage: Usage;
  /** True when the engine did not report usage and it was counted (estimateTokens) instead. */
  usageEstimated?: boolean;
}

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
  generate(request: WireRequest, onText: (text: string) => void, signal: AbortSignal): Promise<EngineResult>;
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
