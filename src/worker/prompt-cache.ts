/**
 * The synthetic engine's model of an inference server's prompt cache and prefill, so prefix-aware
 * routing can be measured without a GPU. It follows mlx_lm.server: an LRU of at most `size` token
 * sequences (`--prompt-cache-size`, 10 there too); a prompt reuses the longest prefix it shares
 * with any entry (at least one token is always computed); after an answer the prompt plus the
 * answer is stored, replacing entries that were a prefix of it. Prefill runs one prompt at a time
 * per worker, as on one GPU: time to first token is the base TTFT plus the prefill work queued
 * ahead plus this prompt's uncached tokens × the prefill time per token. Everything is a pure
 * function of the order of requests: no randomness.
 */
import type { Clock } from '../clock';
import { PrefixLru } from '../prefix-lru';
import type { ChatMessage } from '../protocol';

const START = '<|start|>';
const SEP = '<|sep|>';

/** Text in the synthetic tokenizer's pieces: 4 characters a token, as estimateTokens counts. */
export function textTokens(text: string, out: string[] = []): string[] {
  for (let i = 0; i < text.length; i += 4) out.push(text.slice(i, i + 4));
  return out;
}

/**
 * A chat prompt as tokens: per message a 3-token header (start, role, separator) and its content,
 * then the assistant's header (3 tokens). The answer's tokens follow that header, so the stored
 * "prompt + answer" is exactly the prefix of the next turn's prompt. Its length is promptTokens().
 */
export function chatTokens(messages: readonly ChatMessage[]): string[] {
  const out: string[] = [];
  for (const m of messages) {
    out.push(START, m.role, SEP);
    textTokens(m.content, out);
  }
  // The assistant's header: PROMPT_TAIL_TOKENS (3) tokens.
  out.push(START, 'assistant', SEP);
  return out;
}

/** The engine's prompt cache: tokens in a PrefixLru of `size` entries. */
export class PromptCache {
  private readonly lru: PrefixLru<string>;

  constructor(readonly size: number) {
    this.lru = new PrefixLru<string>(size);
  }

  get length(): number {
    return this.lru.size;
  }

  /**
   * Tokens of `prompt` the cache holds: the longest prefix it shares with any entry, at most
   * `prompt.length - 1` (the last token is always computed, as mlx_lm does). The entry used
   * becomes the most recently used.
   */
  lookup(prompt: readonly string[]): number {
    const best = this.lru.match(prompt);
    this.lru.touch(best.at);
    return Math.min(best.length, Math.max(0, prompt.length - 1));
  }

  /** Stores prompt + answer; entries it extends go (mlx_lm extends the KV cache it reused). */
  insert(tokens: readonly string[]): void {
    if (this.size > 0) this.lru.insert(tokens);
  }

  clear(): void {
    this.lru.clear();
  }
}

/** Serial prefill: one prompt at a time, `usPerToken` microseconds a token. */
export class PrefillQueue {
  private busyUntil = 0;

  constructor(
    private readonly usPerToken: number,
    private readonly clock: Clock,
  ) {}

  /** Reserves the prefill of `tokens` behind what is queued; returns ms from now until it is done. */
  reserve(tokens: number): number {
    if (this.usPerToken <= 0 || tokens <= 0) return 0;
    const now = this.clock.now();
    this.busyUntil = Math.max(now, this.busyUntil) + (tokens * this.usPerToken) / 1000;
    return this.busyUntil - now;
  }
}
