/**
 * The worker's reading of a v2 request: the client's body stays whole in `request.body` for the
 * engine; the fields a worker and the synthetic engine act on (model, text of the messages, max
 * tokens, stop, stream) are read next to it. Only what the worker itself needs is checked here:
 * semantics of everything else are the engine's to judge.
 */
import { contentText, ENDPOINTS, isWireRequestV2, type Endpoint } from '../protocol-v2';
import type { ChatMessage, WireRequest } from '../protocol';

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A legacy completions prompt (string, list of strings) as text; token-id prompts read as ''. */
export function promptText(prompt: unknown): string {
  if (typeof prompt === 'string') return prompt;
  if (Array.isArray(prompt)) return prompt.filter((p): p is string => typeof p === 'string').join('\n');
  return '';
}

/** Embedding inputs as texts (token-id inputs become their JSON). */
export function embeddingInputs(input: unknown): string[] {
  if (typeof input === 'string') return [input];
  if (Array.isArray(input) && input.every((i) => typeof i === 'string')) return input as string[];
  if (Array.isArray(input) && input.length > 0 && input.every((i) => typeof i === 'number')) return [JSON.stringify(input)];
  if (Array.isArray(input)) return input.map((i) => (typeof i === 'string' ? i : JSON.stringify(i)));
  return [];
}

/** The messages' text view (role + text of the content), for engines that work on text. */
function textView(endpoint: Endpoint, body: Record<string, unknown>): ChatMessage[] | string {
  if (endpoint === 'completions') return [{ role: 'user', content: promptText(body.prompt) }];
  if (endpoint === 'embeddings') return embeddingInputs(body.input).map((content) => ({ role: 'user', content }));
  if (!Array.isArray(body.messages) || body.messages.length === 0) return 'messages must be a non-empty array';
  const out: ChatMessage[] = [];
  for (const [i, m] of body.messages.entries()) {
    if (!isObject(m) || typeof m.role !== 'string') return `messages[${i}] must be an object with a string role`;
    out.push({ role: m.role, content: contentText(m.content) });
  }
  return out;
}

/** Reads a v2 request into the worker's WireRequest (body kept whole), or a message naming the bad field. */
export function readWireRequestV2(value: unknown): WireRequest | string {
  if (!isWireRequestV2(value)) return 'not a v2 request';
  const endpoint = value.endpoint ?? 'chat.completions';
  if (!ENDPOINTS.includes(endpoint)) return `endpoint must be one of ${ENDPOINTS.join(', ')}`;
  const body = value.body;
  if (!isObject(body)) return 'body must be a JSON object';
  if (typeof body.model !== 'string' || body.model.length === 0) return 'body.model must be a non-empty string';
  const messages = textView(endpoint, body);
  if (typeof messages === 'string') return messages;
  const maxTokens = body.max_completion_tokens ?? body.max_tokens;
  if (maxTokens !== undefined && maxTokens !== null && (!Number.isInteger(maxTokens) || (maxTokens as number) < 1)) {
    return 'max_tokens must be a positive integer';
  }
  if (body.n !== undefined && body.n !== null && (!Number.isInteger(body.n) || (body.n as number) < 1 || (body.n as number) > 128)) {
    return 'n must be an integer from 1 to 128';
  }
  const stop = typeof body.stop === 'string' ? [body.stop] : Array.isArray(body.stop) ? body.stop.filter((s): s is string => typeof s === 'string') : undefined;
  if (value.continuation !== undefined && typeof value.continuation !== 'string') return 'continuation must be a string';
  return {
    model: body.model,
    messages,
    stream: endpoint !== 'embeddings' && body.stream === true,
    body,
    endpoint,
    ...(typeof maxTokens === 'number' ? { max_tokens: maxTokens } : {}),
    ...(typeof body.temperature === 'number' ? { temperature: body.temperature } : {}),
    ...(stop !== undefined && stop.length > 0 ? { stop } : {}),
    ...(typeof value.continuation === 'string' && value.continuation.length > 0 ? { continuation: value.continuation } : {}),
  };
}
