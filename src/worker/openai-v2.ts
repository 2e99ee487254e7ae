/**
 * Protocol v2 on an OpenAI-compatible engine: the client's body goes to the engine as sent (the
 * same endpoint), and the engine's answer comes back whole: buffered choices and top-level fields
 * as they are, stream choices as deltas, usage with its details.
 */
import { estimateTokens, type FinishReason, type Usage, type WireRequest } from '../protocol';
import { finishMessage, mergeDelta, type ChoiceDelta, type Endpoint } from '../protocol-v2';
import type { EngineResult } from './engine';
import { promptTokens } from './synthetic';

/** Continuation modes, as in openai-engine.ts (repeated here to keep this module a leaf). */
type Continuation = 'off' | 'vllm' | 'prefill';

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The engine path for an endpoint, after the base URL's /v1. */
export function endpointPath(endpoint: Endpoint | undefined): string {
  return endpoint === 'completions' ? '/completions' : endpoint === 'embeddings' ? '/embeddings' : '/chat/completions';
}

/**
 * The body sent to the engine for a v2 request: the client's body, with `stream` as routed,
 * usage always asked for on streams, and a resume's partial answer appended as the engine's
 * continuation mode says (max tokens reduced by what was already delivered, estimated).
 */
export function engineBodyV2(request: WireRequest, continuation: Continuation = 'off'): Record<string, unknown> {
  const body: Record<string, unknown> = { ...(request.body ?? {}) };
  if (request.endpoint === 'embeddings') return body;
  body.stream = request.stream;
  if (request.stream) body.stream_options = { ...(isObject(body.stream_options) ? body.stream_options : {}), include_usage: true };
  else delete body.stream_options;
  const resuming = request.continuation !== undefined && continuation !== 'off';
  if (resuming && Array.isArray(body.messages)) {
    const done = request.continuation as string;
    body.messages = [...body.messages, { role: 'assistant', content: done }];
    if (continuation === 'vllm') Object.assign(body, { continue_final_message: true, add_generation_prompt: false });
    for (const key of ['max_completion_tokens', 'max_tokens']) {
      if (typeof body[key] === 'number') body[key] = Math.max(1, (body[key] as number) - estimateTokens(done));
    }
  }
  return body;
}

/** The engine's usage kept whole (details included) when its counts are sound; else undefined. */
export function readUsageV2(value: unknown, endpoint: Endpoint | undefined): Usage | undefined {
  if (!isObject(value)) return undefined;
  const count = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0;
  const completion = endpoint === 'embeddings' && value.completion_tokens === undefined ? 0 : value.completion_tokens;
  if (!count(value.prompt_tokens) || !count(completion)) return undefined;
  const total = count(value.total_tokens) ? value.total_tokens : value.prompt_tokens + completion;
  return { ...value, prompt_tokens: value.prompt_tokens, completion_tokens: completion, total_tokens: total };
}

/** A stream choice (`delta`, or a legacy completion's `text`) as a relayed delta. */
export function choiceDelta(choice: unknown): ChoiceDelta | undefined {
  if (!isObject(choice)) return undefined;
  const index = typeof choice.index === 'number' ? choice.index : 0;
  const delta = isObject(choice.delta) ? choice.delta : typeof choice.text === 'string' ? { text: choice.text } : {};
  const finish = typeof choice.finish_reason === 'string' ? choice.finish_reason : null;
  return { index, delta, ...(choice.logprobs !== undefined && choice.logprobs !== null ? { logprobs: choice.logprobs } : {}), finish_reason: finish };
}

/** Top-level fields of an answer the router does not set itself. */
export function extraFields(answer: Record<string, unknown>): Record<string, unknown> | undefined {
  const { id: _id, object: _object, created: _created, model: _model, choices: _choices, usage: _usage, ...rest } = answer;
  return Object.keys(rest).length > 0 ? rest : undefined;
}

/** The engine's finish reason as ours: its own word when it is a string, else stop. */
export function finishOf(finish: unknown): FinishReason {
  return typeof finish === 'string' && finish.length > 0 ? (finish as FinishReason) : 'stop';
}

/** A v2 result: reported usage (estimated when absent or after a resume), choices and fields whole. */
export function resultV2(request: WireRequest, text: string, finish: unknown, usage: unknown, extra: Partial<EngineResult> = {}): EngineResult {
  const finishReason = finishOf(finish);
  const reported = readUsageV2(usage, request.endpoint);
  if (reported && request.continuation) {
    const completion = reported.completion_tokens + estimateTokens(request.continuation);
    return { ...extra, finishReason, usage: { ...reported, completion_tokens: completion, total_tokens: reported.prompt_tokens + completion }, usageEstimated: true };
  }
  if (reported) return { ...extra, finishReason, usage: reported };
  const prompt = promptTokens(request);
  const completion = estimateTokens(text);
  return { ...extra, finishReason, usage: { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }, usageEstimated: true };
}

/** A buffered answer's text: choice 0's message content or legacy `text`. */
export function answerText(choice: unknown): string {
  if (!isObject(choice)) return '';
  if (typeof choice.text === 'string') return choice.text;
  const content = isObject(choice.message) ? choice.message.content : undefined;
  return typeof content === 'string' ? content : '';
}

/** Keys of a stream choice the assembler reads itself; any other key is the engine's own, kept. */
const CHOICE_KEYS = new Set(['index', 'delta', 'text', 'logprobs', 'finish_reason', 'message']);

interface AssembledChoice {
  message: Record<string, unknown>;
  text: string;
  logprobs?: Record<string, unknown>;
  finish?: unknown;
  extra: Record<string, unknown>;
}

/**
 * A buffered v2 answer rebuilt from the engine's stream (the worker streams from the engine even
 * when the client asked for a buffered answer, so it sees every token): each choice's message is
 * assembled as OpenAI's SDKs assemble a stream (content and refusal appended, tool calls merged by
 * index with their arguments joined), logprobs lists joined, the last finish_reason kept, and the
 * engine's own per-choice and top-level fields kept (their latest non-null value). Chat choices come
 * out as `{index, message, logprobs, finish_reason}`, legacy completions as `{index, text, ...}`.
 */
export class StreamAssembler {
  private readonly choices = new Map<number, AssembledChoice>();
  private extra: Record<string, unknown> = {};

  constructor(private readonly endpoint: Endpoint | undefined) {}

  /** One parsed stream event (a `chat.completion.chunk` or a `text_completion` chunk). */
  chunk(chunk: Record<string, unknown>): void {
    const rest = extraFields(chunk);
    if (rest) for (const [k, v] of Object.entries(rest)) if (v !== null || !(k in this.extra)) this.extra[k] = v;
    for (const raw of Array.isArray(chunk.choices) ? chunk.choices : []) {
      if (!isObject(raw)) continue;
      const index = typeof raw.index === 'number' && Number.isInteger(raw.index) && raw.index >= 0 ? raw.index : 0;
      let c = this.choices.get(index);
      if (!c) this.choices.set(index, (c = { message: {}, text: '', extra: {} }));
      if (isObject(raw.delta)) mergeDelta(c.message, raw.delta);
      if (typeof raw.text === 'string') c.text += raw.text;
      if (isObject(raw.logprobs)) {
        c.logprobs ??= {};
        for (const [k, v] of Object.entries(raw.logprobs)) {
          const prev = c.logprobs[k];
          c.logprobs[k] = Array.isArray(v) && Array.isArray(prev) ? [...prev, ...v] : v === null && prev !== undefined ? prev : v;
        }
      }
      if (typeof raw.finish_reason === 'string') c.finish = raw.finish_reason;
      for (const [k, v] of Object.entries(raw)) if (!CHOICE_KEYS.has(k) && (v !== null || !(k in c.extra))) c.extra[k] = v;
    }
  }

  /** The engine's top-level fields beside id, object, created, model, choices and usage. */
  fields(): Record<string, unknown> | undefined {
    return Object.keys(this.extra).length > 0 ? { ...this.extra } : undefined;
  }

  /** The assembled choices, by index; `fallback` is the finish reason of a choice that got none. */
  result(fallback: unknown): Array<Record<string, unknown>> {
    if (this.choices.size === 0) this.choices.set(0, { message: {}, text: '', extra: {} });
    return [...this.choices.entries()]
      .sort(([a], [b]) => a - b)
      .map(([index, c]) => {
        const finish_reason = typeof c.finish === 'string' ? c.finish : finishOf(fallback);
        const logprobs = c.logprobs ?? null;
        if (this.endpoint === 'completions') return { index, text: c.text, logprobs, finish_reason, ...c.extra };
        return { index, message: finishMessage({ role: 'assistant', ...c.message }), logprobs, finish_reason, ...c.extra };
      });
  }
}
