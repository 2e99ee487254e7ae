/**
 * Protocol v2 on an OpenAI-compatible engine: the client's body goes to the engine as sent (the
 * same endpoint), and the engine's answer comes back whole: buffered choices and top-level fields
 * as they are, stream choices as deltas, usage with its details.
 */
import { estimateTokens, type FinishReason, type Usage, type WireRequest } from '../protocol';
import type { ChoiceDelta, Endpoint } from '../protocol-v2';
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
