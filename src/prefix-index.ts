/**
 * PrefixIndex: what this controller believes each worker's engine has in its prompt cache, without
 * asking the engine (mlx_lm.server, llama-server and Ollama publish no cache events). A conversation
 * is a chain of hashes at message boundaries (hash i covers the model and messages 0..i), so two
 * requests sharing a system prompt, or a turn and the turn before it, share a prefix of the chain.
 * Per worker, an LRU of such chains (PrefixLru, the same rules as the synthetic engine's cache) with
 * the capacity the worker advertises. An answered request records its chain (the engine stores a
 * prompt once it has answered it, not before); an answer's reported `cached_tokens` corrects it (a predicted hit that the engine missed drops the worker's entries);
 * a new cache epoch (the worker or its engine restarted) empties it.
 *
 * Cache pressure: entries are stamped with a logical clock (one tick per routed request) when
 * stored, and the index learns how many requests pass between two turns of a conversation (the
 * reuse distance, from requests that continue a whole entry). A worker whose cache is full and
 * whose least recently used entry was stored fewer requests ago than that holds only live
 * conversations: a request that would add an entry there (rather than extend one) evicts a
 * conversation that is coming back. (A shared prefix reused by another conversation moves an entry
 * up the LRU, as in the engine, but does not make it younger.)
 */
import { createHash } from 'node:crypto';
import { PrefixLru } from './prefix-lru';
import { messageTokens, PROMPT_TAIL_TOKENS, type ChatMessage, type PromptCacheInfo } from './protocol';

export interface Conversation {
  /** Hash of the model and messages 0..i, for each message i. */
  hashes: string[];
  /** Estimated prompt tokens through message i (chat template included), for each message i. */
  tokens: number[];
  /** Estimated tokens of the whole prompt. */
  total: number;
}

/** A message's content as text: a string as is, anything else (content parts) as JSON. */
function contentText(m: ChatMessage): string {
  const c: unknown = m.content;
  return typeof c === 'string' ? c : (JSON.stringify(c) ?? '');
}

function link(previous: string, m: ChatMessage): string {
  return createHash('sha1').update(previous).update('\u0000').update(String(m.role)).update('\u0000').update(contentText(m)).digest('base64url').slice(0, 22);
}

/** The request's chain of boundary hashes and token counts. */
export function conversation(model: string, messages: readonly ChatMessage[]): Conversation {
  const hashes: string[] = [];
  const tokens: number[] = [];
  let h = createHash('sha1').update(model).digest('base64url').slice(0, 22);
  let count = 0;
  for (const m of messages) {
    h = link(h, m);
    count += messageTokens({ role: m.role, content: contentText(m) });
    hashes.push(h);
    tokens.push(count);
  }
  return { hashes, tokens, total: count + PROMPT_TAIL_TOKENS };
}

/** The chain once the answer is in: the next turn's prompt starts with it. */
export function withAnswer(conv: Conversation, answer: string): string[] {
  const last = conv.hashes[conv.hashes.length - 1];
  return last === undefined ? conv.hashes : [...conv.hashes, link(last, { role: 'assistant', content: answer })];
}

interface WorkerCache {
  lru: PrefixLru<string>;
  epoch?: string;
}

/** Weight of a new observation in the reuse distance's moving average. */
const REUSE_ALPHA = 0.2;

export class PrefixIndex {
  private readonly workers = new Map<string, WorkerCache>();
  /** Logical clock: requests routed so far. */
  private clock = 0;
  /** Moving average of requests routed between two turns of a conversation; undefined until one is seen. */
  private reuse: number | undefined;

  /** `defaultCapacity`: entries assumed for a worker that does not advertise its cache. */
  constructor(private readonly defaultCapacity: number) {}

  /**
   * Follows what the worker advertises: its capacity, and its epoch (a new one means the cache
   * started empty again, so every entry goes). Call before predicting for a worker.
   */
  sync(id: string, cache: PromptCacheInfo | undefined): void {
    let w = this.workers.get(id);
    if (!w) this.workers.set(id, (w = { lru: new PrefixLru<string>(this.defaultCapacity), epoch: cache?.epoch }));
    if (cache && w.epoch !== cache.epoch) {
      w.lru.clear();
      w.epoch = cache.epoch;
    }
    const capacity = cache ? cache.size : this.defaultCapacity;
    if (w.lru.capacity !== capacity) {
      w.lru.capacity = capacity;
      w.lru.trim();
    }
  }

  /** Prompt tokens of `conv` predicted to be in `id`'s cache (0: none). */
  predict(id: string, conv: Conversation): number {
    const w = this.workers.get(id);
    if (!w) return 0;
    const n = w.lru.match(conv.hashes).length;
    return n === 0 ? 0 : Math.min(conv.tokens[n - 1], conv.total - 1);
  }

  /**
   * Whether `conv` extends a whole entry of `id` (the next turn of a conversation held there):
   * routed there, it replaces that entry instead of taking a slot of its own.
   */
  continues(id: string, conv: Conversation): boolean {
    const w = this.workers.get(id);
    if (!w) return false;
    const m = w.lru.match(conv.hashes);
    return m.length > 0 && m.length === w.lru.lengthAt(m.at);
  }

  /**
   * Whether `id`'s cache is full of live conversations: full, and its least recently used entry
   * was stored fewer routed requests ago than conversations take between turns. False until a
   * reuse distance has been seen.
   */
  pressured(id: string): boolean {
    const w = this.workers.get(id);
    if (!w || this.reuse === undefined || w.lru.capacity <= 0 || w.lru.size < w.lru.capacity) return false;
    const tail = w.lru.stampAt(0);
    return tail !== undefined && this.clock - tail < this.reuse;
  }

  /** Requests routed between two turns of a conversation (moving average); undefined until seen. */
  get reuseDistance(): number | undefined {
    return this.reuse;
  }

  /**
   * A request with `chain` was routed to `id`: the clock advances; the entry it reuses becomes the
   * most recent (the engine's lookup does the same); when it continues a whole entry, the entry's
   * age is a reuse distance (unless `observe` is false: a retry). Nothing is stored yet: an engine
   * stores the prompt once it has answered, so a request sharing this prefix that comes before
   * then finds nothing there (see `record`).
   */
  route(id: string, chain: readonly string[], observe = true): void {
    this.clock++;
    const w = this.workers.get(id);
    if (!w || w.lru.capacity <= 0) return;
    const m = w.lru.match(chain);
    const stamp = w.lru.stampAt(m.at);
    if (observe && m.length > 0 && m.length === w.lru.lengthAt(m.at) && stamp !== undefined) {
      const age = this.clock - stamp;
      this.reuse = this.reuse === undefined ? age : this.reuse + REUSE_ALPHA * (age - this.reuse);
    }
    w.lru.touch(m.at);
  }

  /**
   * `id` has stored `chain` (an answered request: its prompt and answer): the entry it reused
   * becomes the most recent, then the chain is stored, replacing the entries it extends.
   */
  record(id: string, chain: readonly string[]): void {
    const w = this.workers.get(id);
    if (!w || w.lru.capacity <= 0) return;
    w.lru.touch(w.lru.match(chain).at);
    w.lru.insert(chain, this.clock);
  }

  /** Forgets everything predicted for `id` (a miss where a hit was predicted). */
  drop(id: string): void {
    this.workers.get(id)?.lru.clear();
  }

  /** Forgets workers not in `ids` (gone offline or forgotten: they lose their entries). */
  retain(ids: ReadonlySet<string>): void {
    for (const id of this.workers.keys()) if (!ids.has(id)) this.workers.delete(id);
  }

  /** Entries predicted for `id`. */
  entries(id: string): number {
    return this.workers.get(id)?.lru.size ?? 0;
  }
}
