/**
 * The synthetic engine: deterministic text for tests, demos and benchmarks. The same model,
 * messages, max_tokens and stop give the same tokens on any worker, buffered or streamed, because
 * token i depends only on a hash of (model, messages) and i.
 */
import type { Clock } from '../clock';
import { messageTokens, PROMPT_TAIL_TOKENS, type WireRequest } from '../protocol';
import { EngineError, type Engine, type EngineResult } from './engine';
import { chatTokens, PrefillQueue, PromptCache, textTokens } from './prompt-cache';

export interface SyntheticOptions {
  /** Models advertised. */
  models: readonly string[];
  /** Time to first token (ms); 0 answers at once. */
  ttftMs: number;
  /** Delay between tokens (ms); 0 emits all tokens at once. */
  tokenMs: number;
  /** Share of requests (0..1) that fail before the first token with WORKER_ERROR. */
  failRate: number;
  clock: Clock;
  /** Random source for failure injection (default Math.random). */
  random?: () => number;
  /** Prompt cache entries (0: no cache); see prompt-cache.ts. Default 0. */
  promptCacheSize?: number;
  /** Prefill time of one uncached prompt token (µs), on a serial prefill queue. Default 0. */
  prefillUsPerToken?: number;
}

const VOCAB = [
  'the', 'router', 'sends', 'each', 'request', 'to', 'a', 'worker', 'that', 'answers', 'quickly', 'and',
  'cluster', 'stays', 'healthy', 'when', 'one', 'machine', 'fails', 'another', 'takes', 'over', 'with',
  'no', 'visible', 'error', 'tokens', 'flow', 'in', 'order', 'every', 'stream', 'ends', 'honestly', 'model',
  'weights', 'live', 'on', 'apple', 'silicon', 'memory', 'is', 'shared', 'between', 'cpu', 'gpu', 'so',
  'inference', 'runs', 'well', 'here', 'latency', 'matters', 'more', 'than', 'throughput', 'for', 'chat',
];

/** FNV-1a, 32 bit: small, fast and stable across platforms. */
export function fnv1a(text: string, seed = 0x811c9dc5): number {
  let h = seed >>> 0;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

function mix(a: number, b: number): number {
  let h = (a ^ Math.imul(b + 0x9e3779b9, 0x85ebca6b)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d) >>> 0;
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/** The i-th token of the answer for `seed`, with its leading space. */
export function syntheticToken(seed: number, i: number): string {
  const word = VOCAB[mix(seed, i) % VOCAB.length];
  return i === 0 ? word.charAt(0).toUpperCase() + word.slice(1) : ' ' + word;
}

/** Natural answer length (tokens) before finish_reason "stop": 8..64. */
export function naturalLength(seed: number): number {
  return 8 + (seed % 57);
}

export function promptSeed(request: Pick<WireRequest, 'model' | 'messages'>): number {
  return fnv1a(request.model + '\u0000' + request.messages.map((m) => `${m.role}:${m.content}`).join('\u0000'));
}

export function promptTokens(request: Pick<WireRequest, 'messages'>): number {
  // Chat templates add a few tokens per message; 3 is what OpenAI's cookbook counts.
  return request.messages.reduce((sum, m) => sum + messageTokens(m), PROMPT_TAIL_TOKENS);
}

/** Tokens in a synthetic answer prefix: every token after the first starts with one space. */
export function countSyntheticTokens(text: string): number {
  return text.length === 0 ? 0 : text.split(' ').length;
}

/**
 * Answer length: exactly `max_tokens` when given (finish_reason "length"), else the prompt's
 * natural length (finish_reason "stop"). Long answers on demand let tests and benchmarks stream
 * as much as they need.
 */
export function syntheticEngine(options: SyntheticOptions): Engine {
  const random = options.random ?? Math.random;
  const cacheSize = options.promptCacheSize ?? 0;
  const cache = cacheSize > 0 ? new PromptCache(cacheSize) : undefined;
  const prefill = new PrefillQueue(options.prefillUsPerToken ?? 0, options.clock);
  return {
    name: 'synthetic',
    supportsContinuation: true,
    ...(cache ? { promptCacheSize: cacheSize } : {}),
    models: () => options.models,
    async generate(request, onText, signal): Promise<EngineResult> {
      const { clock } = options;
      const tokens = cache || options.prefillUsPerToken ? chatTokens(request.messages) : undefined;
      const cached = tokens && cache ? cache.lookup(tokens) : 0;
      const ttft = options.ttftMs + prefill.reserve((tokens?.length ?? 0) - cached);
      if (ttft > 0) await clock.sleep(ttft, signal);
      if (signal.aborted) throw signal.reason;
      if (options.failRate > 0 && random() < options.failRate) {
        throw new EngineError('WORKER_ERROR', 'synthetic engine: injected failure');
      }
      const seed = promptSeed(request);
      const total = request.max_tokens ?? naturalLength(seed);
      const stops = request.stop ?? [];
      // A continuation resumes the same answer: token i depends only on (seed, i).
      let text = request.continuation ?? '';
      const first = countSyntheticTokens(text);
      let emitted = first;
      let finishReason: EngineResult['finishReason'] = request.max_tokens !== undefined ? 'length' : 'stop';
      for (let i = first; i < total; i++) {
        if (i > first && options.tokenMs > 0) await clock.sleep(options.tokenMs, signal);
        // Without a token delay, still yield now and then so cancels and other requests get a turn.
        else if (options.tokenMs === 0 && i > first && (i - first) % 256 === 0) await new Promise((r) => setImmediate(r));
        if (signal.aborted) throw signal.reason;
        let piece = syntheticToken(seed, i);
        const cut = firstStop(text + piece, stops, text.length);
        if (cut >= 0) {
          // A stop that began in text already sent cannot be taken back: send nothing more.
          piece = piece.slice(0, Math.max(0, cut - text.length));
          if (piece) onText(piece);
          emitted++;
          finishReason = 'stop';
          break;
        }
        onText(piece);
        text += piece;
        emitted++;
      }
      if (tokens && cache) cache.insert(textTokens(text, tokens));
      const prompt = promptTokens(request);
      const details = cache ? { prompt_tokens_details: { cached_tokens: cached } } : {};
      return { finishReason, usage: { prompt_tokens: prompt, completion_tokens: emitted, total_tokens: prompt + emitted, ...details } };
    },
  };
}

/** Index where the earliest stop sequence starts in `text`, searching from near `from`; -1 if none. */
function firstStop(text: string, stops: readonly string[], from: number): number {
  let best = -1;
  for (const s of stops) {
    if (!s) continue;
    const at = text.indexOf(s, Math.max(0, from - s.length + 1));
    if (at >= 0 && (best < 0 || at < best)) best = at;
  }
  return best;
}
