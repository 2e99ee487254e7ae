/**
 * Wire protocol v1 between controllers and workers over core NATS. docs/protocol.md is the
 * normative description; this module is its one TypeScript encoding. Bodies are JSON; request id,
 * attempt, remaining deadline and chunk sequence travel in headers.
 */
import { headers as natsHeaders, type MsgHdrs } from '@nats-io/transport-node';
import type { ErrorCode, OutcomeClass } from './errors';
import type { Capability, ChoiceDelta, ChoiceFinish, Endpoint } from './protocol-v2';

/** The version this worker speaks (heartbeat `version`); controllers still serve v1 workers. */
export const PROTOCOL_VERSION = 2;
export const DEFAULT_SUBJECT_PREFIX = 'mlx.v1';

export const HDR_REQUEST_ID = 'Mlx-Request-Id';
export const HDR_ATTEMPT = 'Mlx-Attempt';
/** Milliseconds the request has left when it is published; relative, so clocks need not agree. */
export const HDR_DEADLINE_MS = 'Mlx-Deadline-Ms';
export const HDR_STREAM = 'Mlx-Stream';
export const HDR_SEQ = 'Mlx-Seq';
/**
 * Protocol 1.1 (progress): present (`1`) on a buffered request when the controller wants
 * `progress` messages; a worker sends them only when asked, so 1.0 controllers never see one.
 */
export const HDR_PROGRESS = 'Mlx-Progress';

/** A worker id becomes one subject token, so it is restricted to safe characters. */
export const WORKER_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

export interface Subjects {
  /** Per-worker inference subject: request/reply, or streamed to the request's reply inbox. */
  infer(workerId: string): string;
  /** Per-worker cancel subject: `{request_id, attempt}`. */
  cancel(workerId: string): string;
  /** Per-worker admin control subject (request/reply): `{action: drain|undrain, model?}`. */
  control(workerId: string): string;
  /** Workers publish heartbeats here; controllers subscribe. */
  heartbeat: string;
  /** A worker says goodbye here when it shuts down. */
  bye: string;
  /** A controller publishes here on start; every worker answers with a heartbeat at once. */
  discover: string;
  /** Controllers share their breaker transitions here (`BreakerSignal`), as evidence for each other. */
  breaker: string;
  /**
   * Controllers announce themselves here (`ControllerHeartbeat`): peers learn each other and the
   * in-flight each holds per worker; workers learn which reply prefixes belong to live controllers.
   */
  controllerHeartbeat: string;
}

export function makeSubjects(prefix: string = DEFAULT_SUBJECT_PREFIX): Subjects {
  return {
    infer: (id) => `${prefix}.worker.${id}.infer`,
    cancel: (id) => `${prefix}.worker.${id}.cancel`,
    control: (id) => controlSubject(prefix, id),
    heartbeat: `${prefix}.heartbeat`,
    bye: `${prefix}.bye`,
    discover: `${prefix}.discover`,
    breaker: `${prefix}.controller.breaker`,
    controllerHeartbeat: `${prefix}.controller.heartbeat`,
  };
}

export interface ChatMessage {
  role: string;
  content: string;
}

export type FinishReason = 'stop' | 'length' | 'cancelled' | 'tool_calls' | 'content_filter' | 'function_call';

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** v2: as the engine reported them (`cached_tokens`, `reasoning_tokens`...). */
  prompt_tokens_details?: Record<string, unknown>;
  completion_tokens_details?: Record<string, unknown>;
}

/** The request body a worker receives: the validated subset of OpenAI's chat request. */
export interface WireRequest {
  model: string;
  messages: ChatMessage[];
  max_tokens?: number;
  temperature?: number;
  stop?: string[];
  stream: boolean;
  /**
   * Stream resume: the assistant text already delivered to the client by another worker. The
   * engine continues the same answer after it; usage counts the whole answer. Sent only to
   * workers whose heartbeat says `continuation: true`.
   */
  continuation?: string;
  /** v2 (controller side, never encoded as such): the client's body as sent; see protocol-v2.ts. */
  body?: Record<string, unknown>;
  /** v2: the endpoint the request came in on (default chat.completions). */
  endpoint?: Endpoint;
  /** v2: capabilities a worker must advertise for the model to be a candidate. */
  needs?: Capability[];
}

export interface WireResult {
  type: 'result';
  text: string;
  finish_reason: FinishReason;
  usage: Usage;
  /** Present (true) when the engine reported no usage and the worker counted it (~4 chars a token). */
  usage_estimated?: true;
  /** v2: the answer's choices as the engine gave them (message with tool_calls, logprobs...). */
  choices?: Array<Record<string, unknown>>;
  /** v2: the engine's other top-level answer fields (system_fingerprint...); embeddings: `data`. */
  extra?: Record<string, unknown>;
}
export interface WireChunk {
  type: 'chunk';
  seq: number;
  text: string;
  /** v2: the engine's chunk choices, `delta` whole, in order (finish_reason moved to `end`). */
  choices?: ChoiceDelta[];
}
export interface WireEnd {
  type: 'end';
  seq: number;
  finish_reason: FinishReason;
  usage: Usage;
  /** As in WireResult: present (true) only when usage was estimated. */
  usage_estimated?: true;
  /** v2: every choice's finish reason (n > 1). */
  choices?: ChoiceFinish[];
}
export interface WireError {
  type: 'error';
  code: ErrorCode | string;
  outcome: OutcomeClass;
  message: string;
  retry_after_ms?: number;
  seq?: number;
}
/**
 * Protocol 1.1: "still generating". Sent to a buffered request's reply subject when the request
 * carried `Mlx-Progress: 1`: at the first token at once, then at most every `progress_ms` while
 * tokens flow. Never part of a stream's sequence (streams show progress by their chunks).
 */
export interface WireProgress {
  type: 'progress';
  /**
   * Tokens (engine text pieces) produced so far in this attempt. 0: keep-alive from a worker whose
   * engine cannot show this answer's tokens (an OpenAI engine given a buffered v2 body), sent every
   * `progress_ms` while it works: the worker is alive, but no first token is claimed.
   */
  tokens: number;
}
export type WireReply = WireResult | WireChunk | WireEnd | WireError | WireProgress;

export interface Heartbeat {
  type: 'heartbeat';
  version: number;
  id: string;
  models: string[];
  engine: string;
  max_concurrent: number;
  in_flight: number;
  /**
   * `unhealthy`: the worker is up but its engine is not answering (probe failing); it refuses
   * requests with WORKER_UNAVAILABLE and controllers do not select it. Older controllers read any
   * state but `draining` as ready, and then get that refusal and retry elsewhere.
   */
  state: 'ready' | 'draining' | 'unhealthy';
  interval_ms: number;
  /** The engine can continue a partial answer (`continuation` in the request): stream resume. */
  continuation?: boolean;
  /** Host name and process id of the worker (operator view only). */
  host?: string;
  pid?: number;
  /** Models an operator took out of rotation on this worker: it refuses them, controllers skip it for them. */
  draining_models?: string[];
  /** This worker process's instance id (random, fixed at start; see HDR_INSTANCE). */
  instance?: string;
  /** v2: what each model is served for (absent: `chat` only). */
  capabilities?: Record<string, Capability[]>;
  /**
   * Protocol 1.1: the worker sends `progress` messages for buffered requests that ask for them,
   * at most this often (ms). Absent: a 1.0 worker; buffered attempts to it get only the
   * whole-attempt limit.
   */
  progress_ms?: number;
  /**
   * The engine's prompt cache, when it has one: `size` entries (conversations) at most, and an
   * `epoch` that changes whenever the cache starts empty again (worker start, engine restart), so
   * controllers forget what they predicted it holds. Prefix-aware routing reads it.
   */
  prompt_cache?: PromptCacheInfo;
}

/** An admin action sent to one worker on its control subject; every controller sees the result in heartbeats. */
export interface ControlMessage {
  /** drain / undrain: the whole worker, or only `model` when given. */
  action: 'drain' | 'undrain';
  model?: string;
}

/** The worker's answer to a ControlMessage. */
export interface ControlReply {
  ok: boolean;
  state: 'ready' | 'draining' | 'unhealthy';
  draining_models: string[];
  error?: string;
}

export interface PromptCacheInfo {
  size: number;
  epoch: string;
}

export interface Bye {
  type: 'bye';
  id: string;
  /** The instance saying goodbye: a bye from another instance is ignored. */
  instance?: string;
}

/** A controller's breaker for `worker` opened or closed by its own judgement. */
export interface BreakerSignal {
  type: 'breaker';
  /** The controller that saw it (each ignores its own). */
  controller: string;
  worker: string;
  state: 'open' | 'closed';
}

/**
 * A controller's periodic announcement on `Subjects.controllerHeartbeat`. A controller silent for
 * `expire_ms` is gone: its peers stop counting its in-flight requests, and workers cancel the
 * attempts whose reply subject starts with its `reply_prefix` (nobody reads those answers).
 */
export interface ControllerHeartbeat {
  type: 'controller';
  id: string;
  /** Every attempt of this controller has a reply subject `<reply_prefix>.<token>`. */
  reply_prefix: string;
  interval_ms: number;
  /** Silence this long (ms) means the controller is gone. */
  expire_ms: number;
  /** This controller's own in-flight attempts per worker id (workers with none are left out). */
  in_flight: Record<string, number>;
  /** Its HTTP address, for operators (`/v1/cluster`). */
  url?: string;
  /** Present (true) on the last heartbeat of a controller that stops cleanly: forget it now. */
  bye?: boolean;
}

export interface CancelMessage {
  request_id: string;
  attempt: number;
  /**
   * The reply subject of the attempt to cancel: unique per attempt, where request ids come from
   * clients and may repeat. Workers match it first, then request_id + attempt.
   */
  reply?: string;
  /** The attempt's token (HDR_TOKEN): a cancel without the right one is ignored. */
  token?: string;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encode(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

/** Decodes JSON, or returns undefined: a peer's garbage must never throw into a hot path. */
export function decode<T>(data: Uint8Array): T | undefined {
  try {
    return JSON.parse(decoder.decode(data)) as T;
  } catch {
    return undefined;
  }
}

export interface RequestHeaders {
  requestId: string;
  attempt: number;
  deadlineMs: number;
  stream: boolean;
  /** W3C trace context of the attempt (`traceparent`, `tracestate` NATS headers), when known. */
  traceparent?: string;
  tracestate?: string;
  /** Ask for `progress` messages (buffered requests to 1.1 workers). */
  progress?: boolean;
  /** The attempt's secret token (HDR_TOKEN); absent from requests of older controllers. */
  token?: string;
}

export function requestHeaders(h: RequestHeaders): MsgHdrs {
  // append, not set: the headers are new, and set() first searches them for the key to delete.
  const hdrs = natsHeaders();
  hdrs.append(HDR_REQUEST_ID, h.requestId);
  hdrs.append(HDR_ATTEMPT, String(h.attempt));
  hdrs.append(HDR_DEADLINE_MS, String(Math.max(0, Math.floor(h.deadlineMs))));
  if (h.stream) hdrs.append(HDR_STREAM, '1');
  if (h.traceparent) hdrs.append('traceparent', h.traceparent);
  if (h.tracestate) hdrs.append('tracestate', h.tracestate);
  if (h.progress && !h.stream) hdrs.append(HDR_PROGRESS, '1');
  if (h.token) hdrs.append(HDR_TOKEN, h.token);
  return hdrs;
}

/** Reads request headers leniently: a missing deadline means "no deadline known". */
export function readRequestHeaders(hdrs: MsgHdrs | undefined): RequestHeaders {
  // MsgHdrs.get returns '' for an absent header, and Number('') is 0: read '' as missing.
  const attempt = Number(hdrs?.get(HDR_ATTEMPT) || '1');
  const deadline = Number(hdrs?.get(HDR_DEADLINE_MS) || 'NaN');
  return {
    requestId: hdrs?.get(HDR_REQUEST_ID) || 'unknown',
    attempt: Number.isFinite(attempt) ? attempt : 1,
    deadlineMs: Number.isFinite(deadline) ? deadline : Number.POSITIVE_INFINITY,
    stream: hdrs?.get(HDR_STREAM) === '1',
    traceparent: hdrs?.get('traceparent') || undefined,
    tracestate: hdrs?.get('tracestate') || undefined,
    progress: hdrs?.get(HDR_PROGRESS) === '1',
    token: hdrs?.get(HDR_TOKEN) || undefined,
  };
}

/** A NATS "no responders" status: empty body with status 503 (the server's own answer). */
export function isNoResponders(msg: { data: Uint8Array; headers?: MsgHdrs }): boolean {
  return msg.data.length === 0 && msg.headers?.code === 503;
}

/** Rough token count used by the synthetic engine and for estimates: ~4 characters a token. */
export function estimateTokens(text: string): number {
  return text.length === 0 ? 0 : Math.max(1, Math.ceil(text.length / 4));
}

/** Tokens one chat message takes in a prompt: its content and 3 for the chat template (OpenAI's cookbook count). */
export function messageTokens(m: ChatMessage): number {
  return 3 + estimateTokens(m.content);
}

/** Tokens the chat template adds after the messages (the assistant's header). */
export const PROMPT_TAIL_TOKENS = 3;

// ---------------------------------------------------------------------------------------------
// Bus integrity (docs/security.md): what a message must carry to be believed. Controllers give
// every attempt a random token; the worker echoes it, with its instance id, on every message it
// publishes to the attempt's reply subject, and a cancel must name it. A worker instance id is
// random and fixed at process start, carried in heartbeats and byes: a controller believes those
// for a known worker id only from the instance it knows to be live.
// ---------------------------------------------------------------------------------------------

/** The attempt's secret token: request header (controller → worker), echoed on every reply message. */
export const HDR_TOKEN = 'Mlx-Token';
/** Reply header: the answering worker's instance id. */
export const HDR_INSTANCE = 'Mlx-Instance';
/** Instance ids and tokens: opaque, one header value, bounded. */
export const INSTANCE_ID_PATTERN = /^[A-Za-z0-9_-]{8,64}$/;

/** Per-worker control subject: controller → worker notices such as a refused duplicate id. */
export function controlSubject(prefix: string, workerId: string): string {
  return `${prefix}.worker.${workerId}.control`;
}

/** A controller tells a worker instance that its id is served by another live instance. */
export interface RefuseMessage {
  type: 'refuse';
  id: string;
  /** The refused instance: only that process stops. */
  instance: string;
  reason: string;
}
