/** The synthetic engine's prompt cache and prefill model: LRU, longest prefix, serial prefill, usage. */
import type { ChatMessage, WireRequest } from '../../src/protocol';
import { chatTokens, PrefillQueue, PromptCache, textTokens } from '../../src/worker/prompt-cache';
import { promptTokens, syntheticEngine } from '../../src/worker/synthetic';
import { FakeClock, InstantClock } from '../helpers/fake-clock';

const MODEL = 'm';
const SYSTEM: ChatMessage = { role: 'system', content: 'You are a careful assistant. '.repeat(40) };

function turn(history: ChatMessage[], user: string): ChatMessage[] {
  return [...history, { role: 'user', content: user }];
}

test('prompt cache - chatTokens counts what promptTokens counts', () => {
  const messages = [SYSTEM, { role: 'user', content: 'hello there' }, { role: 'assistant', content: 'x' }];
  expect(chatTokens(messages)).toHaveLength(promptTokens({ messages }));
});

test('prompt cache - the longest shared prefix is reused, never the whole prompt', () => {
  const cache = new PromptCache(10);
  const a = chatTokens(turn([SYSTEM], 'first question'));
  expect(cache.lookup(a)).toBe(0);
  cache.insert([...a, ...textTokens('an answer')]);
  // The same prompt again: all but the last token.
  expect(cache.lookup(a)).toBe(a.length - 1);
  // Another user with the same system prompt shares the system prompt and the next header.
  const b = chatTokens(turn([SYSTEM], 'other question'));
  const shared = chatTokens([SYSTEM]).length - 3 + 3; // system message, then "<start> user <sep>"
  expect(cache.lookup(b)).toBe(shared);
});

test('prompt cache - the next turn reuses the previous prompt and its answer', () => {
  const cache = new PromptCache(10);
  const first = turn([SYSTEM], 'q1');
  const tokens = chatTokens(first);
  cache.insert([...tokens, ...textTokens('the answer')]);
  const second = chatTokens(turn([...first, { role: 'assistant', content: 'the answer' }], 'q2'));
  expect(cache.lookup(second)).toBe(tokens.length + textTokens('the answer').length);
  // Storing the longer sequence replaces the entry it extends.
  cache.insert(second);
  expect(cache.length).toBe(1);
});

test('prompt cache - the least recently used entry is evicted; a lookup refreshes its entry', () => {
  const cache = new PromptCache(2);
  const p = (s: string) => chatTokens([{ role: 'user', content: s.repeat(80) }]);
  cache.insert(p('a'));
  cache.insert(p('b'));
  expect(cache.lookup(p('a'))).toBeGreaterThan(10); // refreshes a
  cache.insert(p('c')); // evicts b, the least recently used
  expect(cache.length).toBe(2);
  expect(cache.lookup(p('b'))).toBeLessThan(10);
  expect(cache.lookup(p('a'))).toBeGreaterThan(10);
  expect(cache.lookup(p('c'))).toBeGreaterThan(10);
});

test('prefill queue - one prompt at a time: each waits for the work ahead', async () => {
  const clock = new FakeClock(0);
  const q = new PrefillQueue(50, clock); // 50 µs a token
  expect(q.reserve(1000)).toBe(50);
  expect(q.reserve(1000)).toBe(100);
  await clock.advance(100);
  expect(q.reserve(20)).toBe(1);
  expect(new PrefillQueue(0, clock).reserve(1000)).toBe(0);
});

describe('synthetic engine with a prompt cache', () => {
  const request = (messages: ChatMessage[]): WireRequest => ({ model: MODEL, messages, stream: false });
  async function run(e: ReturnType<typeof syntheticEngine>, messages: ChatMessage[]) {
    let text = '';
    const result = await e.generate(request(messages), (t) => (text += t), new AbortController().signal);
    return { text, usage: result.usage };
  }

  test('reports cached_tokens and pays prefill only for uncached tokens', async () => {
    const clock = new InstantClock(0);
    const e = syntheticEngine({ models: [MODEL], ttftMs: 10, tokenMs: 0, failRate: 0, clock, promptCacheSize: 10, prefillUsPerToken: 1000 });
    expect(e.promptCacheSize).toBe(10);
    const first = turn([SYSTEM], 'q1');
    const a = await run(e, first);
    const total = promptTokens({ messages: first });
    expect(a.usage.prompt_tokens_details).toEqual({ cached_tokens: 0 });
    expect(clock.sleeps[0]).toBe(10 + total); // 1 ms a token, nothing cached
    const second = turn([...first, { role: 'assistant', content: a.text }], 'q2');
    const b = await run(e, second);
    const cached = Number(b.usage.prompt_tokens_details?.cached_tokens ?? 0);
    expect(cached).toBe(total + textTokens(a.text).length);
    expect(clock.sleeps[clock.sleeps.length - 1]).toBe(10 + b.usage.prompt_tokens - cached);
    // The answer text does not depend on the cache.
    const cold = await run(syntheticEngine({ models: [MODEL], ttftMs: 0, tokenMs: 0, failRate: 0, clock }), second);
    expect(cold.text).toBe(b.text);
    expect(cold.usage.prompt_tokens_details).toBeUndefined();
  });

  test('two engines fed the same requests report the same usage (deterministic)', async () => {
    const make = () => syntheticEngine({ models: [MODEL], ttftMs: 0, tokenMs: 0, failRate: 0, clock: new InstantClock(0), promptCacheSize: 2 });
    const [x, y] = [make(), make()];
    for (const q of ['a', 'b', 'a', 'c', 'b', 'a']) {
      const [u, v] = [await run(x, turn([SYSTEM], q)), await run(y, turn([SYSTEM], q))];
      expect(v.usage).toEqual(u.usage);
    }
  });
});
