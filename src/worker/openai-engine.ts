/**
 * The OpenAI-compatible HTTP engine: one adapter for mlx_lm.server, llama.cpp's llama-server, vLLM,
 * Ollama and LM Studio, which all serve `POST /v1/chat/completions` and `GET /v1/models`.
 * Generation is always streamed from the engine (buffered answers are assembled by the worker, which
 * so sees every token), forwarded with Node's fetch and the request's AbortSignal (a cancel or the deadline
 * closes the HTTP request at once); streams are read with eventsource-parser. A periodic
 * `GET /models` probe says whether the engine answers, without paying for tokens.
 */
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import type { Clock } from '../clock';
import { systemClock } from '../clock';
import type { Logger } from '../logger';
import { estimateTokens, type Usage, type WireRequest } from '../protocol';
import { formatTraceparent, nextTraceparent, parseTraceparent, passTracestate } from '../trace';
import type { ChoiceDelta } from '../protocol-v2';
import { EngineError, type DeltaSink, type Engine, type EngineResult, type GenerateContext } from './engine';
import { answerText, choiceDelta, endpointPath, engineBodyV2, extraFields, resultV2, StreamAssembler } from './openai-v2';
import { engineErrorText, httpError, inBandError, isConnectFailure, networkCode, networkError } from './openai-errors';
import { promptTokens } from './synthetic';

export interface OpenAIEngineOptions {
  /** Base URL with the version path, e.g. `http://127.0.0.1:8081/v1` (no default: config supplies it). */
  url: string;
  /** Bearer token for the engine; empty or absent sends no Authorization header. */
  apiKey?: string;
  /** Models to advertise; when non-empty the engine's own list is never read (default: read it). */
  models?: readonly string[];
  /** How often the advertised models are re-read from `GET /models`, on a probe (ms, default 60000). */
  modelsRefreshMs?: number;
  /** Period of the health probe `GET /models` (ms, default 5000). */
  probeIntervalMs?: number;
  /** A probe unanswered this long counts as a failure (ms, default 5000). */
  connectTimeoutMs?: number;
  /**
   * Stream resume (opt-in, default 'off'): how this engine continues a partial assistant message.
   * 'vllm' sends it as the final assistant message with `continue_final_message: true` and
   * `add_generation_prompt: false`; 'prefill' sends it as the final assistant message alone
   * (engines that treat that as a prefill, e.g. llama-server). Only switch it on after checking
   * on the real engine that the continuation neither repeats nor drops text at the seam.
   */
  continuation?: ContinuationMode;
  /** Entries of the engine's prompt cache (mlx_lm.server --prompt-cache-size), advertised; 0 or absent: none advertised. */
  promptCacheSize?: number;
  log?: Logger;
  clock?: Clock;
}

/** An Engine with the lifecycle of its probe, for the worker command and tests. */
export interface OpenAIEngine extends Engine {
  readonly url: string;
  healthy(): boolean;
  /** Probes once (reading the models when due), then every `probeIntervalMs`. */
  start(): Promise<void>;
  /** One probe now; resolves with the engine's health after it. */
  probe(): Promise<boolean>;
  close(): Promise<void>;
}

export type ContinuationMode = 'off' | 'vllm' | 'prefill';
export const CONTINUATION_MODES: readonly ContinuationMode[] = ['off', 'vllm', 'prefill'];

/** Largest single SSE event accepted from an engine (characters); beyond it the stream fails. */
const MAX_EVENT_CHARS = 1024 * 1024;

interface StreamState {
  text: string;
  finish?: unknown;
  usage?: unknown;
  /** `data: [DONE]` arrived: the engine says the answer is complete. */
  done: boolean;
  failure?: EngineError;
  /** v2 buffered, streamed from the engine: the answer rebuilt from its chunks. */
  assembler?: StreamAssembler;
}

/** A delta that shows generation (not only the role, or empty content): a token for progress. */
function showsToken(d: ChoiceDelta): boolean {
  if (d.logprobs !== undefined && d.logprobs !== null) return true;
  for (const [k, v] of Object.entries(d.delta)) {
    if (k === 'role' || v === null || v === undefined) continue;
    if (typeof v === 'string' ? v.length > 0 : !Array.isArray(v) || v.length > 0) return true;
  }
  return false;
}

/** The engine's usage if it is complete and numeric; otherwise undefined (then it is estimated). */
export function readUsage(value: unknown): Usage | undefined {
  if (!value || typeof value !== 'object') return undefined;
  const u = value as Record<string, unknown>;
  const count = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0;
  if (!count(u.prompt_tokens) || !count(u.completion_tokens)) return undefined;
  const total = count(u.total_tokens) ? u.total_tokens : u.prompt_tokens + u.completion_tokens;
  const usage: Usage = { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens, total_tokens: total };
  // Prefix reuse the engine reports (mlx_lm.server, vLLM, llama-server) passes through for routing.
  const details = u.prompt_tokens_details as Record<string, unknown> | null | undefined;
  const cached = details && typeof details === 'object' ? details.cached_tokens : undefined;
  if (count(cached) && cached <= u.prompt_tokens) usage.prompt_tokens_details = { cached_tokens: cached };
  return usage;
}

/** Reported usage, or a count (~4 characters a token) marked as estimated. */
function result(request: WireRequest, text: string, finish: unknown, usage: unknown): EngineResult {
  // Our protocol knows stop and length; tool_calls and content_filter also end the answer normally.
  const finishReason = finish === 'length' ? 'length' : 'stop';
  const reported = readUsage(usage);
  if (reported && request.continuation) {
    // The engine counted only what it added; the answer also holds the text another worker sent.
    const completion = reported.completion_tokens + estimateTokens(request.continuation);
    return { finishReason, usage: { ...reported, completion_tokens: completion, total_tokens: reported.prompt_tokens + completion }, usageEstimated: true };
  }
  if (reported) return { finishReason, usage: reported };
  const prompt = promptTokens(request);
  const completion = estimateTokens(text);
  return { finishReason, usage: { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }, usageEstimated: true };
}

/** The body sent to the engine: the protocol's fields only, usage always asked for on streams. */
export function engineBody(request: WireRequest, continuation: ContinuationMode = 'off'): Record<string, unknown> {
  const messages = request.messages.map((m) => ({ role: m.role, content: m.content }));
  const resuming = request.continuation !== undefined && continuation !== 'off';
  if (resuming) messages.push({ role: 'assistant', content: request.continuation as string });
  // max_tokens bounds the whole answer; the engine only sees what is left of it (estimated).
  const maxTokens =
    request.max_tokens !== undefined && resuming ? Math.max(1, request.max_tokens - estimateTokens(request.continuation as string)) : request.max_tokens;
  return {
    model: request.model,
    messages,
    stream: request.stream,
    ...(resuming && continuation === 'vllm' ? { continue_final_message: true, add_generation_prompt: false } : {}),
    ...(request.stream ? { stream_options: { include_usage: true } } : {}),
    ...(maxTokens !== undefined ? { max_tokens: maxTokens } : {}),
    ...(request.temperature !== undefined ? { temperature: request.temperature } : {}),
    ...(request.stop !== undefined && request.stop.length > 0 ? { stop: request.stop } : {}),
  };
}

function onStreamEvent(ev: EventSourceMessage, state: StreamState, onText: (text: string) => void, onDelta?: DeltaSink): void {
  // One feed may hold several events; nothing after the end or a failure counts.
  if (state.done || state.failure) return;
  if (ev.data === '[DONE]') {
    state.done = true;
    return;
  }
  let chunk: { error?: unknown; usage?: unknown; choices?: Array<{ delta?: { content?: unknown }; finish_reason?: unknown }> };
  try {
    chunk = JSON.parse(ev.data) as typeof chunk;
  } catch {
    state.failure = new EngineError('WORKER_ERROR', `engine sent an unreadable stream event: ${engineErrorText(ev.data)}`);
    return;
  }
  if (ev.event === 'error' || (chunk && typeof chunk === 'object' && chunk.error !== undefined)) {
    state.failure = inBandError(ev.data);
    return;
  }
  if (onDelta) {
    if (state.assembler && chunk && typeof chunk === 'object') state.assembler.chunk(chunk as Record<string, unknown>);
    // v2: every choice's delta whole; choice 0 also keeps the text and finish for the result.
    for (const raw of Array.isArray(chunk?.choices) ? chunk.choices : []) {
      const d = choiceDelta(raw);
      if (!d) continue;
      // Rebuilding a buffered answer: the worker hears only of deltas that show a token.
      if (state.assembler && !showsToken(d)) {
        if (d.index === 0 && d.finish_reason) state.finish = d.finish_reason;
        continue;
      }
      if (d.index === 0) {
        const piece = d.delta.content ?? d.delta.text;
        if (typeof piece === 'string') state.text += piece;
        if (d.finish_reason) state.finish = d.finish_reason;
      }
      onDelta(d);
    }
    if (chunk?.usage) state.usage = chunk.usage;
    return;
  }
  const choice = Array.isArray(chunk?.choices) ? chunk.choices[0] : undefined;
  const piece = choice?.delta?.content;
  if (typeof piece === 'string' && piece.length > 0) {
    state.text += piece;
    onText(piece);
  }
  if (choice?.finish_reason) state.finish = choice.finish_reason;
  if (chunk?.usage) state.usage = chunk.usage;
}

async function readStream(
  res: Response,
  request: WireRequest,
  onText: (text: string) => void,
  signal: AbortSignal,
  onDelta?: DeltaSink,
  assembler?: StreamAssembler,
): Promise<EngineResult> {
  const reader = res.body?.getReader();
  if (!reader) throw new EngineError('WORKER_ERROR', 'engine answered a stream request without a body');
  const state: StreamState = { text: '', done: false, assembler };
  const parser = createParser({
    maxBufferSize: MAX_EVENT_CHARS,
    onEvent: (ev) => onStreamEvent(ev, state, onText, onDelta),
    onError: (err) => {
      // llama-server has written `error: {...}` lines, which are not an SSE field.
      if (err.type === 'unknown-field' && err.field === 'error') state.failure ??= inBandError(err.value ?? '');
      else if (err.type === 'max-buffer-size-exceeded') state.failure ??= new EngineError('WORKER_ERROR', 'engine sent a stream event over 1 MiB');
    },
  });
  const decoder = new TextDecoder();
  try {
    // With finish_reason and usage both in, nothing more is expected even if [DONE] never comes.
    while (!state.done && !state.failure && !(state.finish !== undefined && state.usage !== undefined)) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.feed(decoder.decode(value, { stream: true }));
    }
  } catch (err) {
    if (signal.aborted) throw signal.reason;
    throw networkError(err, `engine stream broke after ${state.text.length} characters`);
  } finally {
    // Releases (or closes) the connection when we stop before the engine's end of body.
    reader.cancel().catch(() => undefined);
  }
  if (state.failure) throw state.failure;
  // A connection that closes without [DONE] or finish_reason is a cut answer, never a clean end.
  if (!state.done && state.finish === undefined) {
    throw new EngineError('WORKER_ERROR', `engine stream ended after ${state.text.length} characters without finish_reason or [DONE]`);
  }
  if (assembler) return resultV2(request, state.text, state.finish, state.usage, { choices: assembler.result(state.finish), extra: assembler.fields() });
  return onDelta ? resultV2(request, state.text, state.finish, state.usage) : result(request, state.text, state.finish, state.usage);
}

async function readBuffered(res: Response, request: WireRequest, onText: (text: string) => void, signal: AbortSignal, v2 = false): Promise<EngineResult> {
  let body: string;
  try {
    body = await res.text();
  } catch (err) {
    if (signal.aborted) throw signal.reason;
    throw networkError(err, 'engine connection broke before the answer was complete');
  }
  let answer: { error?: unknown; usage?: unknown; choices?: Array<{ message?: { content?: unknown }; finish_reason?: unknown }> };
  try {
    answer = JSON.parse(body) as typeof answer;
  } catch {
    throw new EngineError('WORKER_ERROR', `engine sent an unreadable answer: ${engineErrorText(body)}`);
  }
  if (answer?.error !== undefined) throw inBandError(body);
  if (v2 && request.endpoint === 'embeddings') {
    if (!Array.isArray((answer as { data?: unknown })?.data)) throw new EngineError('WORKER_ERROR', 'engine embeddings answer has no data');
    return resultV2(request, '', 'stop', answer.usage, { extra: extraFields(answer as Record<string, unknown>) });
  }
  if (v2) {
    // v2: the answer's choices and fields whole, as the engine gave them.
    if (!Array.isArray(answer?.choices) || answer.choices.length === 0) throw new EngineError('WORKER_ERROR', 'engine answer has no choices');
    const first = answer.choices[0];
    return resultV2(request, answerText(first), first?.finish_reason, answer.usage, {
      choices: answer.choices as Array<Record<string, unknown>>,
      extra: extraFields(answer as Record<string, unknown>),
    });
  }
  const choice = Array.isArray(answer?.choices) ? answer.choices[0] : undefined;
  if (!choice) throw new EngineError('WORKER_ERROR', 'engine answer has no choices');
  const content = choice.message?.content;
  const text = typeof content === 'string' ? content : '';
  if (text.length > 0) onText(text);
  return result(request, text, choice.finish_reason, answer.usage);
}

/** The ids in an OpenAI `GET /models` answer (`{data: [{id}]}`), or undefined if it is not one. */
export function modelIds(body: string): string[] | undefined {
  try {
    const data = (JSON.parse(body) as { data?: unknown })?.data;
    if (!Array.isArray(data)) return undefined;
    return data.map((m) => (m as { id?: unknown })?.id).filter((id): id is string => typeof id === 'string' && id.length > 0);
  } catch {
    return undefined;
  }
}

/**
 * An engine fronting an OpenAI-compatible server at `options.url`. Call `start()` before serving
 * (first probe, first model list) and `close()` when done (stops the probe).
 * @example openaiEngine({ url: 'http://127.0.0.1:8081/v1', models: ['mlx-community/Llama-3.2-3B-Instruct-4bit'] })
 */
/**
 * The engine call joins the request's trace. The worker records no span of its own, so it passes
 * the attempt's context on unchanged (W3C: a hop that does not participate forwards it); the
 * engine's spans then hang under the controller's attempt span. A malformed one starts a new trace.
 */
function traceHeaders(context: GenerateContext | undefined): Record<string, string> {
  if (!context?.traceparent) return {};
  const parsed = parseTraceparent(context.traceparent);
  const tracestate = parsed ? passTracestate(context.tracestate) : undefined;
  return { traceparent: parsed ? formatTraceparent(parsed) : nextTraceparent(undefined), ...(tracestate ? { tracestate } : {}) };
}

export function openaiEngine(options: OpenAIEngineOptions): OpenAIEngine {
  const base = options.url.replace(/\/+$/, '');
  const configured = options.models !== undefined && options.models.length > 0 ? [...options.models] : undefined;
  const refreshMs = options.modelsRefreshMs ?? 60_000;
  const probeIntervalMs = options.probeIntervalMs ?? 5_000;
  const probeTimeoutMs = options.connectTimeoutMs ?? 5_000;
  const clock = options.clock ?? systemClock;
  const log = options.log;
  const continuation = options.continuation ?? 'off';
  const lifetime = new AbortController();
  let models: readonly string[] = configured ?? [];
  let modelsAt = Number.NEGATIVE_INFINITY;
  // Unknown until the first probe; optimistic, so an engine used without start() still serves.
  let healthy = true;
  let timer: NodeJS.Timeout | undefined;
  let probing: Promise<boolean> | undefined;

  const headers = (accept: string): Record<string, string> => ({
    accept,
    'content-type': 'application/json',
    ...(options.apiKey ? { authorization: `Bearer ${options.apiKey}` } : {}),
  });

  const setHealthy = (ok: boolean, reason: string): void => {
    if (ok === healthy) return;
    healthy = ok;
    if (ok) log?.info({ engine: base }, 'engine answers again: worker ready');
    else log?.warn({ engine: base, reason }, 'engine not answering: worker reports unhealthy');
  };

  const updateModels = (body: string): void => {
    // Stamped even when unreadable, so a bad list is retried (and logged) once per refresh period.
    modelsAt = clock.now();
    const ids = modelIds(body);
    if (!ids) {
      log?.warn({ engine: base }, 'engine GET /models answer is not an OpenAI model list; keeping the models advertised');
      return;
    }
    if (ids.join('\n') !== models.join('\n')) log?.info({ engine: base, models: ids }, 'models from the engine');
    models = ids;
  };

  const probeOnce = async (): Promise<boolean> => {
    const timeout = new AbortController();
    const t = setTimeout(() => timeout.abort(new Error(`no answer within ${probeTimeoutMs} ms`)), probeTimeoutMs);
    // A listener removed in finally, not AbortSignal.any: a probe every few seconds for weeks
    // must not pile dependent signals onto the engine's lifetime signal.
    const onClose = (): void => timeout.abort(lifetime.signal.reason);
    lifetime.signal.addEventListener('abort', onClose, { once: true });
    try {
      const res = await fetch(`${base}/models`, { headers: headers('application/json'), signal: timeout.signal });
      const body = await res.text();
      if (!res.ok) {
        setHealthy(false, `GET /models answered ${res.status}`);
        return false;
      }
      if (!configured && clock.now() - modelsAt >= refreshMs) updateModels(body);
      setHealthy(true, 'probe answered');
      return true;
    } catch (err) {
      if (lifetime.signal.aborted) return healthy;
      setHealthy(false, timeout.signal.aborted ? `GET /models: no answer within ${probeTimeoutMs} ms` : `GET /models: ${networkCode(err) ?? (err as Error).message}`);
      return false;
    } finally {
      clearTimeout(t);
      lifetime.signal.removeEventListener('abort', onClose);
    }
  };

  // One probe at a time: a slow engine must not pile probes up.
  const probe = (): Promise<boolean> => (probing ??= probeOnce().finally(() => (probing = undefined)));

  return {
    name: 'openai',
    supportsContinuation: continuation !== 'off',
    ...(options.promptCacheSize ? { promptCacheSize: options.promptCacheSize } : {}),
    url: base,
    models: () => models,
    healthy: () => healthy,
    probe,

    async start(): Promise<void> {
      if (timer || lifetime.signal.aborted) return;
      await probe();
      if (!configured && models.length === 0) log?.warn({ engine: base }, 'engine lists no models yet; the worker advertises none until it does');
      timer = setInterval(() => void probe(), probeIntervalMs);
      // The NATS connection keeps a worker alive; a forgotten probe timer must not.
      timer.unref();
    },

    async close(): Promise<void> {
      if (timer) clearInterval(timer);
      timer = undefined;
      lifetime.abort();
      await probing;
    },

    // Generation always streams from the engine (tokens show); embeddings have no tokens to show.
    reportsTokens: (request) => request.endpoint !== 'embeddings',

    // An OpenAI-compatible server judges what its model supports; a 400 from it reaches the client.
    capabilities: () => ['chat', 'completions', 'embeddings', 'tools', 'vision'],

    async generate(request, onText, signal, onDelta, context): Promise<EngineResult> {
      // Without a continuation mode, resume is not advertised, so this is a protocol mistake.
      if (request.continuation !== undefined && continuation === 'off') {
        throw new EngineError('WORKER_ERROR', 'this engine is not configured to continue a partial answer (worker.openai.continuation)');
      }
      signal.throwIfAborted();
      const v2 = request.body !== undefined;
      // Always streamed from the engine, even for a buffered answer: the worker sees every token,
      // so it can tell the controller it is making progress (and the TTFT and idle limits apply).
      // A v2 buffered answer is rebuilt from the stream whole (StreamAssembler). Embeddings are
      // not generated: they go as sent.
      const upstream: WireRequest = request.stream || (v2 && request.endpoint === 'embeddings') ? request : { ...request, stream: true };
      let res: Response;
      try {
        // The signal bounds every phase, connect included: a cancel or the deadline aborts at once.
        res = await fetch(`${base}${v2 ? endpointPath(request.endpoint) : '/chat/completions'}`, {
          method: 'POST',
          headers: { ...headers(upstream.stream ? 'text/event-stream' : 'application/json'), ...traceHeaders(context) },
          body: JSON.stringify(v2 ? engineBodyV2(upstream, continuation) : engineBody(upstream, continuation)),
          signal,
        });
      } catch (err) {
        if (signal.aborted) throw signal.reason;
        // Down for this request means down for the next: stop being selected before the next probe.
        if (isConnectFailure(err)) setHealthy(false, `POST /chat/completions: ${networkCode(err)}`);
        throw networkError(err, `engine at ${base} did not take the request`);
      }
      if (!res.ok) {
        const body = await res.text().catch(() => '');
        if (signal.aborted) throw signal.reason;
        const err = httpError(res.status, body, res.headers.get('retry-after'));
        if (err.code === 'MODEL_NOT_FOUND' && !configured) {
          // The engine dropped the model: re-read its list now rather than at the next refresh.
          modelsAt = Number.NEGATIVE_INFINITY;
          void probe();
        }
        throw err;
      }
      // An engine that ignores `stream` and answers with one JSON body is read as such.
      const json = (res.headers.get('content-type') ?? '').includes('application/json');
      if (v2) {
        const sink = onDelta ?? ((d: ChoiceDelta) => onText(String(d.delta.content ?? d.delta.text ?? '')));
        if (request.stream) return readStream(res, request, onText, signal, sink);
        if (!upstream.stream || json) return readBuffered(res, request, onText, signal, true);
        return readStream(res, request, onText, signal, sink, new StreamAssembler(request.endpoint));
      }
      return json ? readBuffered(res, request, onText, signal) : readStream(res, request, onText, signal);
    },
  };
}
