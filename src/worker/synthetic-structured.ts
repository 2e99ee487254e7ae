/**
 * The synthetic engine's v2 answers, as deterministic as its text: tool calls (with `tools` and
 * `tool_choice` "required" or a named function) whose arguments are valid for the function's
 * JSON schema and stream in several fragments; JSON mode (`response_format` json_object or
 * json_schema); `seed` (another seed, another text, the same every time); `n` choices, each
 * different; and embeddings. Everything depends only on the request, never on the worker.
 */
import type { Clock } from '../clock';
import { estimateTokens, type WireRequest } from '../protocol';
import type { ChoiceDelta } from '../protocol-v2';
import { embeddingInputs } from './request-v2';
import { EngineError, type DeltaSink, type Engine, type EngineResult } from './engine';
import { fnv1a, naturalLength, promptSeed, promptTokens, syntheticEngine, syntheticToken, type SyntheticOptions } from './synthetic';

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A 32-bit mix of two numbers (a different constant than the text's, so choices differ). */
function mix(a: number, b: number): number {
  let h = Math.imul(a ^ (b + 0x7f4a7c15), 0x9e3779b1) >>> 0;
  h = Math.imul(h ^ (h >>> 15), 0x85ebca77) >>> 0;
  return (h ^ (h >>> 13)) >>> 0;
}

interface Tool {
  name: string;
  parameters: unknown;
}

function toolsOf(body: Record<string, unknown>): Tool[] {
  if (!Array.isArray(body.tools)) return [];
  return body.tools
    .map((t) => (isObject(t) && isObject(t.function) && typeof t.function.name === 'string' ? { name: t.function.name, parameters: t.function.parameters } : undefined))
    .filter((t): t is Tool => t !== undefined);
}

/** The tool to call, or undefined for a text answer ("auto" answers in text: deterministic). */
function chosenTool(body: Record<string, unknown>, seed: number): Tool | undefined {
  const tools = toolsOf(body);
  const choice = body.tool_choice;
  if (tools.length === 0 || choice === undefined || choice === null || choice === 'none' || choice === 'auto') return undefined;
  if (choice === 'required') return tools[seed % tools.length];
  const name = isObject(choice) && isObject(choice.function) ? choice.function.name : undefined;
  const tool = tools.find((t) => t.name === name);
  if (!tool) throw new EngineError('REQUEST_VALIDATION_FAILED', `tool_choice names function '${String(name)}', which is not in tools`);
  return tool;
}

/** True when a v2 request needs this module (anything beyond a plain text answer). */
export function isStructured(request: WireRequest): boolean {
  const body = request.body;
  if (!body) return false;
  const format = isObject(body.response_format) ? body.response_format.type : undefined;
  const tools = toolsOf(body).length > 0 && body.tool_choice !== undefined && body.tool_choice !== 'auto' && body.tool_choice !== 'none';
  return tools || format === 'json_object' || format === 'json_schema' || typeof body.seed === 'number' || (typeof body.n === 'number' && body.n > 1);
}

const WORDS = ['alpha', 'bravo', 'cluster', 'delta', 'engine', 'falcon', 'gamma', 'harbor', 'island', 'juniper', 'kepler', 'lumen'];

/** A value valid for a JSON schema (the common subset: type, properties, required, enum, const, items, anyOf). */
export function valueForSchema(schema: unknown, seed: number, depth = 0): unknown {
  if (!isObject(schema) || depth > 8) return WORDS[seed % WORDS.length];
  if (schema.const !== undefined) return schema.const;
  if (Array.isArray(schema.enum) && schema.enum.length > 0) return schema.enum[seed % schema.enum.length];
  const options = Array.isArray(schema.anyOf) ? schema.anyOf : Array.isArray(schema.oneOf) ? schema.oneOf : undefined;
  if (options && options.length > 0) return valueForSchema(options[0], seed, depth + 1);
  const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== 'null') : schema.type;
  switch (type) {
    case 'object': {
      const out: Record<string, unknown> = {};
      const props = isObject(schema.properties) ? schema.properties : {};
      for (const [i, [key, sub]] of Object.entries(props).entries()) out[key] = valueForSchema(sub, mix(seed, i + 1), depth + 1);
      return out;
    }
    case 'array': {
      const min = typeof schema.minItems === 'number' ? schema.minItems : 1;
      const count = Math.max(min, Math.min(2, typeof schema.maxItems === 'number' ? schema.maxItems : 2));
      return Array.from({ length: count }, (_, i) => valueForSchema(schema.items, mix(seed, i + 11), depth + 1));
    }
    case 'integer':
    case 'number': {
      const min = typeof schema.minimum === 'number' ? Math.ceil(schema.minimum) : 0;
      const max = typeof schema.maximum === 'number' ? Math.floor(schema.maximum) : min + 100;
      return max >= min ? min + (seed % (max - min + 1)) : min;
    }
    case 'boolean':
      return seed % 2 === 0;
    case 'null':
      return null;
    default:
      return `${WORDS[seed % WORDS.length]} ${WORDS[(seed >>> 8) % WORDS.length]}`;
  }
}

/** Splits a string into `parts` fragments (at least one character each while it lasts). */
function fragments(text: string, parts: number): string[] {
  const size = Math.max(1, Math.ceil(text.length / parts));
  const out: string[] = [];
  for (let i = 0; i < text.length; i += size) out.push(text.slice(i, i + size));
  return out.length > 0 ? out : [''];
}

/** The deltas of one choice, in order, with its finish reason and completion tokens. */
function choiceDeltas(request: WireRequest, index: number, seed: number): { deltas: Array<Record<string, unknown>>; finish: string; tokens: number } {
  const body = request.body ?? {};
  const tool = chosenTool(body, seed);
  if (tool) {
    const args = JSON.stringify(valueForSchema(tool.parameters ?? { type: 'object' }, seed));
    const id = `call_${fnv1a(`${tool.name}:${args}`, seed).toString(16).padStart(8, '0')}${index}`;
    const head = { role: 'assistant', content: null, tool_calls: [{ index: 0, id, type: 'function', function: { name: tool.name, arguments: '' } }] };
    const tail = fragments(args, 4).map((a) => ({ tool_calls: [{ index: 0, function: { arguments: a } }] }));
    return { deltas: [head, ...tail], finish: 'tool_calls', tokens: estimateTokens(args) };
  }
  const format = isObject(body.response_format) ? body.response_format : undefined;
  if (format?.type === 'json_object' || format?.type === 'json_schema') {
    const schema = isObject(format.json_schema) ? format.json_schema.schema : undefined;
    const words = Array.from({ length: 6 }, (_, i) => syntheticToken(seed, i)).join('');
    const value = schema !== undefined ? valueForSchema(schema, seed) : { answer: words, seed: seed % 1000 };
    const json = JSON.stringify(value);
    return { deltas: fragments(json, 4).map((content) => ({ content })), finish: 'stop', tokens: estimateTokens(json) };
  }
  const total = request.max_tokens ?? naturalLength(seed);
  const stops = request.stop ?? [];
  const deltas: Array<Record<string, unknown>> = [];
  let text = '';
  for (let i = 0; i < total; i++) {
    const next = text + syntheticToken(seed, i);
    const cut = stops.reduce((best, s) => {
      const at = s ? next.indexOf(s) : -1;
      return at >= 0 && (best < 0 || at < best) ? at : best;
    }, -1);
    if (cut >= 0) {
      if (cut > text.length) deltas.push({ content: next.slice(text.length, cut) });
      return { deltas, finish: 'stop', tokens: i + 1 };
    }
    deltas.push({ content: next.slice(text.length) });
    text = next;
  }
  return { deltas, finish: request.max_tokens !== undefined ? 'length' : 'stop', tokens: total };
}

/** Drops the continuation (text choice 0 already delivered) from the front of its deltas. */
function skipDelivered(deltas: Array<Record<string, unknown>>, delivered: string): Array<Record<string, unknown>> {
  let left = delivered;
  const out: Array<Record<string, unknown>> = [];
  for (const d of deltas) {
    const piece = typeof d.content === 'string' ? d.content : undefined;
    if (left.length === 0) out.push(d);
    else if (piece !== undefined && left.startsWith(piece)) left = left.slice(piece.length);
    else if (piece !== undefined && piece.startsWith(left)) {
      out.push({ ...d, content: piece.slice(left.length) });
      left = '';
    } else {
      throw new EngineError('WORKER_ERROR', 'synthetic engine: the delivered text is not a prefix of this answer; it cannot be continued exactly');
    }
  }
  return out;
}

export interface StructuredOptions {
  clock: Clock;
  /** Delay between deltas (ms); 0 emits at once. */
  tokenMs: number;
}

/** Generates a structured v2 answer through `onDelta`, choice after choice. */
export async function generateStructured(request: WireRequest, options: StructuredOptions, onDelta: DeltaSink, signal: AbortSignal): Promise<EngineResult> {
  const body = request.body ?? {};
  const n = typeof body.n === 'number' && Number.isInteger(body.n) && body.n > 1 ? body.n : 1;
  const base = typeof body.seed === 'number' ? mix(promptSeed(request), Math.floor(body.seed) >>> 0) : promptSeed(request);
  let completion = 0;
  let first = 'stop';
  const finishes = [];
  let sent = 0;
  for (let index = 0; index < n; index++) {
    const choice = choiceDeltas(request, index, index === 0 ? base : mix(base, index));
    const deltas = index === 0 && request.continuation ? skipDelivered(choice.deltas, request.continuation) : choice.deltas;
    for (const delta of deltas) {
      if (sent++ > 0 && options.tokenMs > 0) await options.clock.sleep(options.tokenMs, signal);
      if (signal.aborted) throw signal.reason;
      const d: ChoiceDelta = { index, delta };
      onDelta(d);
    }
    completion += choice.tokens;
    if (index === 0) first = choice.finish;
    finishes.push({ index, finish_reason: choice.finish });
  }
  const prompt = promptTokens(request);
  return {
    finishReason: first as EngineResult['finishReason'],
    usage: { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion },
    finishes,
  };
}

/** Deterministic unit vectors (64 dimensions unless `dimensions` says otherwise), one per input. */
export function syntheticEmbeddings(request: WireRequest): EngineResult {
  const body = request.body ?? {};
  const inputs = embeddingInputs(body.input);
  if (inputs.length === 0) throw new EngineError('REQUEST_VALIDATION_FAILED', 'input must be a string or a list of strings');
  const dims = typeof body.dimensions === 'number' && Number.isInteger(body.dimensions) && body.dimensions > 0 ? Math.min(body.dimensions, 4096) : 64;
  const data = inputs.map((text, index) => {
    const h = fnv1a(`${request.model}\u0000${text}`);
    const raw = Array.from({ length: dims }, (_, j) => (mix(h, j) / 0xffffffff) * 2 - 1);
    const norm = Math.sqrt(raw.reduce((s, v) => s + v * v, 0)) || 1;
    const vector = raw.map((v) => v / norm);
    const embedding = body.encoding_format === 'base64' ? Buffer.from(new Float32Array(vector).buffer).toString('base64') : vector;
    return { object: 'embedding', index, embedding };
  });
  const prompt = inputs.reduce((s, t) => s + estimateTokens(t), 0);
  return { finishReason: 'stop', usage: { prompt_tokens: prompt, completion_tokens: 0, total_tokens: prompt }, extra: { object: 'list', data } };
}

/**
 * The synthetic engine with its v2 answers: plain text requests go to `syntheticEngine` as they
 * always did; structured ones (tools, JSON mode, seed, n) and embeddings are answered here, after
 * the same time to first token and the same injected failures.
 */
export function syntheticEngineV2(options: SyntheticOptions): Engine {
  const text = syntheticEngine(options);
  const random = options.random ?? Math.random;
  return {
    ...text,
    capabilities: () => ['chat', 'completions', 'embeddings', 'tools'],
    async generate(request, onText, signal, onDelta): Promise<EngineResult> {
      const embeddings = request.endpoint === 'embeddings';
      if (!request.body || !onDelta || !(embeddings || isStructured(request))) return text.generate(request, onText, signal, onDelta);
      if (options.ttftMs > 0) await options.clock.sleep(options.ttftMs, signal);
      if (signal.aborted) throw signal.reason;
      if (options.failRate > 0 && random() < options.failRate) throw new EngineError('WORKER_ERROR', 'synthetic engine: injected failure');
      return embeddings ? syntheticEmbeddings(request) : generateStructured(request, options, onDelta, signal);
    },
  };
}
