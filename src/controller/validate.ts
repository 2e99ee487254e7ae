/**
 * Validates an OpenAI chat-completions body into the wire request. Every failure is a 400
 * REQUEST_VALIDATION_FAILED whose message and `param` name the field. Only what the router acts
 * on is checked (model, messages per role, max tokens, stream options, n, session); every other
 * field passes through to v2 workers in `request.body`, for the engine to judge.
 */
import { RouterError } from '../errors';
import type { ChatMessage, WireRequest } from '../protocol';
import { hasImagePart, type Capability } from '../protocol-v2';

export interface ValidatedChat {
  request: WireRequest;
  includeUsage: boolean;
  sessionId?: string;
}

const ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool']);

export function invalid(param: string, message: string): RouterError {
  return new RouterError('REQUEST_VALIDATION_FAILED', message, { param });
}

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * OpenAI content is a string, null or a list of typed parts. The text view (v1 workers, token
 * estimates) joins the text parts; other parts (images, audio, files) pass through to the engine.
 */
function messageContent(content: unknown, i: number): string {
  if (typeof content === 'string') return content;
  if (content === null || content === undefined) return '';
  if (Array.isArray(content)) {
    return content
      .map((part, j) => {
        if (!isObject(part) || typeof part.type !== 'string') {
          throw invalid(`messages[${i}].content[${j}]`, `messages[${i}].content[${j}] must be a content part ({"type":...})`);
        }
        if (part.type !== 'text') return '';
        if (typeof part.text !== 'string') throw invalid(`messages[${i}].content[${j}]`, `messages[${i}].content[${j}] is a text part without a string text`);
        return part.text;
      })
      .join('');
  }
  throw invalid(`messages[${i}].content`, `messages[${i}].content must be a string or a list of content parts`);
}

/** The largest integer OpenAI's API takes for a token count (a 32-bit int). */
export const MAX_TOKENS_LIMIT = 2_147_483_647;

/** Per role: what a message must carry for any engine to read it. */
function checkMessageShape(m: Record<string, unknown>, i: number): void {
  const hasCalls = Array.isArray(m.tool_calls) && m.tool_calls.length > 0;
  if (m.tool_calls !== undefined && m.tool_calls !== null && !Array.isArray(m.tool_calls)) {
    throw invalid(`messages[${i}].tool_calls`, `messages[${i}].tool_calls must be a list`);
  }
  if (hasCalls && m.role !== 'assistant') throw invalid(`messages[${i}].tool_calls`, `messages[${i}].tool_calls is only for assistant messages`);
  if ((m.content === undefined || m.content === null) && m.role !== 'assistant') {
    throw invalid(`messages[${i}].content`, `messages[${i}].content is required for role ${String(m.role)}`);
  }
  if (m.role === 'tool' && typeof m.tool_call_id !== 'string') {
    throw invalid(`messages[${i}].tool_call_id`, `messages[${i}].tool_call_id is required for role tool (the id of the call it answers)`);
  }
}

/** Capabilities a worker needs for this body beyond chat: tools, vision. */
function needsOf(body: Record<string, unknown>, messages: unknown[]): Capability[] {
  const needs: Capability[] = ['chat'];
  if (body.tools !== undefined && body.tools !== null) {
    if (!Array.isArray(body.tools)) throw invalid('tools', 'tools must be a list');
    if (body.tools.length > 0) needs.push('tools');
  }
  if (hasImagePart(messages)) needs.push('vision');
  return needs;
}

export function positiveInt(body: Record<string, unknown>, key: string): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > MAX_TOKENS_LIMIT) {
    throw invalid(key, `${key} must be an integer from 1 to ${MAX_TOKENS_LIMIT}`);
  }
  return v;
}

/**
 * OpenAI's numeric sampling fields, each with the range OpenAI accepts. The router checks them
 * so a client learns of a bad value at once, as OpenAI would tell it, whatever engine answers.
 */
const NUMBER_RANGES: Array<{ key: string; min: number; max: number; integer?: boolean }> = [
  { key: 'top_p', min: 0, max: 1 },
  { key: 'frequency_penalty', min: -2, max: 2 },
  { key: 'presence_penalty', min: -2, max: 2 },
  { key: 'top_logprobs', min: 0, max: 20, integer: true },
  { key: 'seed', min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER, integer: true },
];

function checkNumberRanges(body: Record<string, unknown>): void {
  for (const { key, min, max, integer } of NUMBER_RANGES) {
    const v = body[key];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !(v >= min && v <= max) || (integer && !Number.isInteger(v))) {
      throw invalid(key, `${key} must be ${integer ? 'an integer' : 'a number'} from ${min} to ${max}`);
    }
  }
  if (body.logprobs !== undefined && body.logprobs !== null && typeof body.logprobs !== 'boolean') throw invalid('logprobs', 'logprobs must be a boolean');
  if (body.logit_bias !== undefined && body.logit_bias !== null) {
    if (!isObject(body.logit_bias)) throw invalid('logit_bias', 'logit_bias must be an object of token ids to numbers from -100 to 100');
    for (const [token, bias] of Object.entries(body.logit_bias)) {
      if (typeof bias !== 'number' || !(bias >= -100 && bias <= 100)) throw invalid(`logit_bias.${token}`, `logit_bias.${token} must be a number from -100 to 100`);
    }
  }
}

/** `stream_options.include_usage`, checked. */
export function includeUsageOf(body: Record<string, unknown>): boolean {
  if (body.stream_options === undefined || body.stream_options === null) return false;
  if (!isObject(body.stream_options)) throw invalid('stream_options', 'stream_options must be an object');
  const iu = body.stream_options.include_usage;
  if (iu !== undefined && typeof iu !== 'boolean') throw invalid('stream_options.include_usage', 'stream_options.include_usage must be a boolean');
  return iu === true;
}

/** The body's `session_id` (the router's own field), checked. */
export function sessionOf(body: Record<string, unknown>): string | undefined {
  if (body.session_id === undefined || body.session_id === null) return undefined;
  if (typeof body.session_id !== 'string' || body.session_id.length === 0 || body.session_id.length > 256) {
    throw invalid('session_id', 'session_id must be a string of 1 to 256 characters');
  }
  return body.session_id;
}

export function validateChatRequest(body: unknown): ValidatedChat {
  if (!isObject(body)) throw invalid('body', 'request body must be a JSON object');
  if (typeof body.model !== 'string' || body.model.trim() === '') throw invalid('model', 'model is required and must be a non-empty string');
  if (!Array.isArray(body.messages)) throw invalid('messages', 'messages is required and must be an array');
  if (body.messages.length === 0) throw invalid('messages', 'messages must not be empty');
  const messages: ChatMessage[] = body.messages.map((m, i) => {
    if (!isObject(m)) throw invalid(`messages[${i}]`, `messages[${i}] must be an object`);
    if (typeof m.role !== 'string' || !ROLES.has(m.role)) {
      throw invalid(`messages[${i}].role`, `messages[${i}].role must be one of ${[...ROLES].join(', ')}`);
    }
    checkMessageShape(m, i);
    return { role: m.role, content: messageContent(m.content, i) };
  });
  if (body.stream !== undefined && body.stream !== null && typeof body.stream !== 'boolean') throw invalid('stream', 'stream must be a boolean');
  // Both are checked, whichever is used.
  const maxCompletionTokens = positiveInt(body, 'max_completion_tokens');
  const maxTokens = maxCompletionTokens ?? positiveInt(body, 'max_tokens');
  if (maxCompletionTokens !== undefined) positiveInt(body, 'max_tokens');
  checkNumberRanges(body);
  let temperature: number | undefined;
  if (body.temperature !== undefined && body.temperature !== null) {
    if (typeof body.temperature !== 'number' || !(body.temperature >= 0 && body.temperature <= 2)) {
      throw invalid('temperature', 'temperature must be a number from 0 to 2');
    }
    temperature = body.temperature;
  }
  let stop: string[] | undefined;
  if (body.stop !== undefined && body.stop !== null) {
    if (typeof body.stop === 'string') stop = [body.stop];
    else if (Array.isArray(body.stop) && body.stop.length <= 4 && body.stop.every((s) => typeof s === 'string')) stop = body.stop as string[];
    else throw invalid('stop', 'stop must be a string or a list of at most 4 strings');
  }
  if (body.n !== undefined && body.n !== null && (typeof body.n !== 'number' || !Number.isInteger(body.n) || body.n < 1 || body.n > 128)) {
    throw invalid('n', 'n must be an integer from 1 to 128');
  }
  const includeUsage = includeUsageOf(body);
  const sessionId = sessionOf(body);
  const request: WireRequest = {
    model: body.model,
    messages,
    stream: body.stream === true,
    ...(maxTokens !== undefined ? { max_tokens: maxTokens } : {}),
    ...(temperature !== undefined ? { temperature } : {}),
    ...(stop !== undefined ? { stop } : {}),
    body,
    endpoint: 'chat.completions',
    needs: needsOf(body, body.messages),
  };
  return { request, includeUsage, sessionId };
}
