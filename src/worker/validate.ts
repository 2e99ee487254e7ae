import type { WireRequest } from '../protocol';

/**
 * Checks a request a worker received. Controllers validate the client's body already; this guards
 * workers against other peers on the bus. Returns the request, or a message naming the bad field.
 */
export function validateWireRequest(body: unknown): WireRequest | string {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return 'body must be a JSON object';
  const b = body as Record<string, unknown>;
  if (typeof b.model !== 'string' || b.model.length === 0) return 'model must be a non-empty string';
  if (!Array.isArray(b.messages) || b.messages.length === 0) return 'messages must be a non-empty array';
  for (const [i, m] of b.messages.entries()) {
    if (typeof m !== 'object' || m === null || typeof m.role !== 'string' || typeof m.content !== 'string') {
      return `messages[${i}] must have string role and content`;
    }
  }
  if (b.max_tokens !== undefined && (!Number.isInteger(b.max_tokens) || (b.max_tokens as number) < 1)) {
    return 'max_tokens must be a positive integer';
  }
  if (b.stop !== undefined && (!Array.isArray(b.stop) || b.stop.some((s) => typeof s !== 'string'))) {
    return 'stop must be a list of strings';
  }
  if (b.continuation !== undefined && typeof b.continuation !== 'string') return 'continuation must be a string';
  return {
    model: b.model,
    messages: b.messages as WireRequest['messages'],
    stream: b.stream === true,
    ...(b.max_tokens !== undefined ? { max_tokens: b.max_tokens as number } : {}),
    ...(typeof b.temperature === 'number' ? { temperature: b.temperature } : {}),
    ...(b.stop !== undefined ? { stop: b.stop as string[] } : {}),
    ...(typeof b.continuation === 'string' && b.continuation.length > 0 ? { continuation: b.continuation } : {}),
  };
}
