/**
 * Validation of the legacy text completions and the embeddings bodies: what the router routes on
 * (model, prompt or input present, max tokens, stream options, session), the rest left to the
 * engine. Each becomes a WireRequest whose text view is the prompt, with the body kept whole.
 */
import type { WireRequest } from '../protocol';
import { includeUsageOf, invalid, isObject, positiveInt, sessionOf, type ValidatedChat } from './validate';

/** A prompt or input: a string, a list of strings, a list of token ids, or a list of those. */
function checkTexts(value: unknown, param: string): string[] {
  const tokens = (v: unknown): boolean => Array.isArray(v) && v.length > 0 && v.every((t) => Number.isInteger(t));
  if (typeof value === 'string') return [value];
  if (Array.isArray(value) && value.length > 0) {
    if (value.every((v) => typeof v === 'string')) return value as string[];
    if (tokens(value)) return [''];
    if (value.every(tokens)) return value.map(() => '');
  }
  throw invalid(param, `${param} is required: a string, a list of strings, or token ids`);
}

function base(body: unknown): Record<string, unknown> & { model: string } {
  if (!isObject(body)) throw invalid('body', 'request body must be a JSON object');
  if (typeof body.model !== 'string' || body.model.trim() === '') throw invalid('model', 'model is required and must be a non-empty string');
  return body as Record<string, unknown> & { model: string };
}

/** POST /v1/completions: routed like chat, to workers serving `completions` for the model. */
export function validateCompletionRequest(raw: unknown): ValidatedChat {
  const body = base(raw);
  const prompt = checkTexts(body.prompt, 'prompt').join('\n');
  if (body.stream !== undefined && body.stream !== null && typeof body.stream !== 'boolean') throw invalid('stream', 'stream must be a boolean');
  const maxTokens = positiveInt(body, 'max_tokens');
  const request: WireRequest = {
    model: body.model,
    messages: [{ role: 'user', content: prompt }],
    stream: body.stream === true,
    ...(maxTokens !== undefined ? { max_tokens: maxTokens } : {}),
    body,
    endpoint: 'completions',
    needs: ['completions'],
  };
  return { request, includeUsage: includeUsageOf(body), sessionId: sessionOf(body) };
}

/** POST /v1/embeddings: buffered, to workers serving `embeddings` for the model. */
export function validateEmbeddingRequest(raw: unknown): ValidatedChat {
  const body = base(raw);
  const inputs = checkTexts(body.input, 'input');
  const request: WireRequest = {
    model: body.model,
    messages: inputs.map((content) => ({ role: 'user', content })),
    stream: false,
    body,
    endpoint: 'embeddings',
    needs: ['embeddings'],
  };
  return { request, includeUsage: false, sessionId: sessionOf(body) };
}
