/**
 * The synthetic engine: deterministic text for tests, demos and benchmarks. The same model,
 * messages, max_tokens and stop give the same tokens on any worker, buffered or streamed, because
 * token i depends only on a hash of (model, messages) and i.
 */
import type { Clock } from '../clock';
import { estimateTokens, type WireRequest } from '../protocol';
import { EngineError, type Engine, type EngineResult } from './engine';

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
  return request.messages.reduce((sum, m) => sum + 3 + estimateTokens(m.content), 3);
}

export function syntheticEngine(options: SyntheticOptions): Engine {
  const random = options.random ?? Math.random;
  return {
    name: 'synthetic',
    models: () => options.models,
    async generate(request, onText, signal): Promise<EngineResult> {
      const { clock } = options;
      if (options.ttftMs > 0) await clock.sleep(options.ttftMs, signal);
      if (signal.aborted) throw signal.reason;
      if (options.failRate > 0 && random() < options.failRate) {
        throw new EngineError('WORKER_ERROR', 'synthetic engine: injected failure');
      }
      const seed = promptSeed(request);
      const natural = naturalLength(seed);
      const limit = request.max_tokens ?? Number.POSITIVE_INFINITY;
      const stops = request.stop ?? [];
      let text = '';
      let emitted = 0;
      let finishReason: EngineResult['finishReason'] = 'stop';
      for (let i = 0; i < natural; i++) {
        if (emitted >= limit) {
          finishReason = 'length';
          break;
        }
        if (i > 0 && options.tokenMs > 0) await clock.sleep(options.tokenMs, signal);
        if (signal.aborted) throw signal.reason;
        let piece = syntheticToken(seed, i);
        const cut = firstStop(text + piece, stops, text.length);
        if (cut >= 0) {
          piece = piece.slice(0, cut - text.length);
          if (piece) onText(piece);
          text += piece;
          emitted++;
          finishReason = 'stop';
          break;
        }
        onText(piece);
        text += piece;
        emitted++;
        if (emitted >= limit && i + 1 < natural) {
          finishReason = 'length';
          break;
        }
      }
      const prompt = promptTokens(request);
      return { finishReason, usage: { prompt_tokens: prompt, completion_tokens: emitted, total_tokens: prompt + emitted } };
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
