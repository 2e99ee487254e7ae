/**
 * How an OpenAI-compatible engine's failures become EngineErrors, so that the controller treats
 * them by outcome class: the engine's HTTP status first, its message text only to tell
 * "context too long" and "unknown model" apart from other 400s, since engines do not share codes.
 */
import { EngineError } from './engine';

/** Longest piece of an engine's error text quoted back (characters). */
const MAX_QUOTE = 300;

// vLLM: "This model's maximum context length is 4096 tokens"; llama-server: "exceeds the available
// context size" / type exceed_context_size_error; OpenAI: code context_length_exceeded;
// mlx_lm.server (a 500): "Prompt exceeds max prompt token limit".
const CONTEXT_TOO_LONG = /context[ _-]?(length|window|size)|maximum context|max_model_len|n_ctx|prompt is too long|prompt exceeds|too many tokens/i;
// vLLM: "The model `x` does not exist."; Ollama: 'model "x" not found, try pulling it first'.
const UNKNOWN_MODEL = /model[^.]{0,120}?(not found|does not exist|is not (loaded|available))|unknown model|model_not_found/i;

/** Connection-level failures: the engine is not there at all (as opposed to answering badly). */
const CONNECT_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'UND_ERR_CONNECT_TIMEOUT']);

/**
 * A `Retry-After` header value in ms: delta-seconds or an HTTP date (RFC 9110 §10.2.3); undefined
 * when absent or unreadable. `nowMs` is wall-clock time, because an HTTP date is.
 */
export function parseRetryAfter(value: string | null | undefined, nowMs: number = Date.now()): number | undefined {
  const v = value?.trim();
  if (!v) return undefined;
  if (/^\d+(\.\d+)?$/.test(v)) return Math.round(Number(v) * 1000);
  // Every HTTP date form starts with the day's name; Date.parse alone takes "-5" for a year.
  if (!/^[A-Za-z]{3,9},? /.test(v)) return undefined;
  const at = Date.parse(v);
  return Number.isFinite(at) ? Math.max(0, at - nowMs) : undefined;
}

/** The message and code of an engine's error body: OpenAI `{error: {message, code, type}}`, `{error: "..."}`, `{detail}` or text. */
export function engineErrorText(body: string): string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    return quote(body);
  }
  const o = parsed as { error?: unknown; detail?: unknown; message?: unknown };
  const e = o?.error;
  if (typeof e === 'string') return quote(e);
  if (e && typeof e === 'object') {
    const { message, code, type } = e as Record<string, unknown>;
    const tags = [code, type].filter((t) => typeof t === 'string' && t.length > 0).join(', ');
    return quote(`${typeof message === 'string' ? message : JSON.stringify(e)}${tags ? ` (${tags})` : ''}`);
  }
  if (typeof o?.detail === 'string') return quote(o.detail);
  if (typeof o?.message === 'string') return quote(o.message);
  return quote(body);
}

function quote(text: string): string {
  const t = text.trim().replace(/\s+/g, ' ');
  return t.length > MAX_QUOTE ? `${t.slice(0, MAX_QUOTE)}...` : t || '(no message)';
}

/**
 * An engine's non-2xx answer as an EngineError: 429/503 overloaded (with its Retry-After), 404
 * unknown model, 400-class caller errors (context length told apart), anything else a worker
 * failure (401/403 are the worker's misconfiguration, not the caller's fault).
 */
export function httpError(status: number, body: string, retryAfter: string | null): EngineError {
  const text = engineErrorText(body);
  const message = `engine answered ${status}: ${text}`;
  if (status === 429 || status === 503) return new EngineError('WORKER_OVERLOADED', message, parseRetryAfter(retryAfter));
  if (status === 404) return new EngineError('MODEL_NOT_FOUND', message);
  const callerStatus = status === 400 || status === 413 || status === 422;
  // Some engines answer a too-long prompt with a 500; another worker would refuse it too.
  if ((callerStatus || status >= 500) && CONTEXT_TOO_LONG.test(text)) return new EngineError('CONTEXT_LENGTH_EXCEEDED', message);
  if (callerStatus) return new EngineError(UNKNOWN_MODEL.test(text) ? 'MODEL_NOT_FOUND' : 'REQUEST_VALIDATION_FAILED', message);
  return new EngineError('WORKER_ERROR', message);
}

/** An error the engine put inside a stream (`data: {"error": ...}`) as an EngineError. */
export function inBandError(payload: string): EngineError {
  const text = engineErrorText(payload);
  return new EngineError(CONTEXT_TOO_LONG.test(text) ? 'CONTEXT_LENGTH_EXCEEDED' : 'WORKER_ERROR', `engine reported in its stream: ${text}`);
}

/** The network error code under fetch's `TypeError: fetch failed` (undici puts it in `cause`). */
export function networkCode(err: unknown): string | undefined {
  let e: unknown = err;
  for (let depth = 0; depth < 4 && e && typeof e === 'object'; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    // Happy eyeballs (localhost → ::1 and 127.0.0.1) fails with an AggregateError of both.
    const inner = (e as { errors?: unknown[] }).errors;
    e = Array.isArray(inner) && inner.length > 0 ? inner[0] : (e as { cause?: unknown }).cause;
  }
  return undefined;
}

/** True when fetch failed before any connection existed: the engine is down or unreachable. */
export function isConnectFailure(err: unknown): boolean {
  const code = networkCode(err);
  return code !== undefined && CONNECT_CODES.has(code);
}

/** A failed fetch or body read (not an abort) as a retryable worker failure naming the cause. */
export function networkError(err: unknown, what: string): EngineError {
  const code = networkCode(err);
  const detail = code ?? ((err as Error)?.message || String(err));
  return new EngineError('WORKER_ERROR', `${what}: ${detail}`);
}
