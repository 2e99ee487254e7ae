import { systemClock } from '../../src/clock';
import type { WireRequest } from '../../src/protocol';
import { syntheticEngine } from '../../src/worker/synthetic';
import { MODEL } from './cluster';

/**
 * What an uninterrupted synthetic worker answers to this request, the first time it sees the
 * prompt: text, finish reason, usage (with `cached_tokens: 0`, as a worker with the default
 * prompt cache reports it).
 */
export async function expectedAnswer(request: Partial<WireRequest> & { content?: string; max_tokens?: number }) {
  const engine = syntheticEngine({ models: [MODEL], ttftMs: 0, tokenMs: 0, failRate: 0, clock: systemClock, promptCacheSize: 10 });
  let text = '';
  const wire: WireRequest = {
    model: request.model ?? MODEL,
    messages: request.messages ?? [{ role: 'user', content: request.content ?? 'Hello there' }],
    stream: true,
    ...(request.max_tokens !== undefined ? { max_tokens: request.max_tokens } : {}),
  };
  const result = await engine.generate(wire, (t) => (text += t), new AbortController().signal);
  return { text, finishReason: result.finishReason, usage: result.usage };
}
