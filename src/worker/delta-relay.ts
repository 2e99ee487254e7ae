/**
 * How a worker turns an engine's v2 output into replies. Streams: deltas produced within one
 * event-loop turn leave as one `chunk` message (its `choices` list keeps each delta whole and in
 * order; consecutive plain-text deltas of one choice are joined, which means the same to a client).
 * Buffered: the deltas are assembled into whole choices, as OpenAI's SDKs assemble a stream.
 * Finish reasons are held back for the `end` / `result` message.
 */
import { finishMessage, mergeDelta, type ChoiceDelta, type ChoiceFinish } from '../protocol-v2';

/** A chunk's choices are flushed once their JSON passes this size (well under 1 MiB). */
const MAX_CHUNK_CHARS = 64 * 1024;

function plainText(d: ChoiceDelta): string | undefined {
  const keys = Object.keys(d.delta);
  if (d.logprobs !== undefined && d.logprobs !== null) return undefined;
  if (keys.length !== 1 || keys[0] !== 'content' || typeof d.delta.content !== 'string') return undefined;
  return d.delta.content;
}

export class DeltaRelay {
  private pending: ChoiceDelta[] = [];
  private pendingChars = 0;
  private timer?: NodeJS.Immediate;
  private readonly finish = new Map<number, string>();
  private readonly assembled = new Map<number, { message: Record<string, unknown>; logprobs?: Record<string, unknown> }>();
  /** Choice 0's text so far (usage estimates). */
  text = '';

  /** `sendChunk` publishes one chunk; absent for buffered requests. */
  constructor(private readonly sendChunk?: (choices: ChoiceDelta[], text: string) => void) {}

  push(d: ChoiceDelta): void {
    const index = Number.isInteger(d.index) && d.index >= 0 ? d.index : 0;
    if (typeof d.finish_reason === 'string') this.finish.set(index, d.finish_reason);
    const delta = d.delta ?? {};
    const hasLogprobs = d.logprobs !== undefined && d.logprobs !== null;
    if (Object.keys(delta).length === 0 && !hasLogprobs) return;
    if (index === 0 && typeof delta.content === 'string') this.text += delta.content;
    const clean: ChoiceDelta = hasLogprobs ? { index, delta, logprobs: d.logprobs } : { index, delta };
    if (!this.sendChunk) {
      this.assemble(clean);
      return;
    }
    const last = this.pending[this.pending.length - 1];
    const piece = plainText(clean);
    const joined = last && last.index === index && piece !== undefined ? plainText(last) : undefined;
    if (joined !== undefined) last.delta = { content: joined + piece };
    else this.pending.push(clean);
    this.pendingChars += piece?.length ?? JSON.stringify(clean).length;
    if (this.pendingChars >= MAX_CHUNK_CHARS) this.flush();
    else this.timer ??= setImmediate(() => this.flush());
  }

  /** Sends what is pending now (also before an end or error message). */
  flush(): void {
    if (this.timer) clearImmediate(this.timer);
    this.timer = undefined;
    if (this.pending.length === 0 || !this.sendChunk) return;
    const choices = this.pending;
    this.pending = [];
    this.pendingChars = 0;
    this.sendChunk(choices, choices.map((c) => (c.index === 0 && typeof c.delta.content === 'string' ? c.delta.content : '')).join(''));
  }

  /** Stops the batching timer without sending (cancelled requests). */
  discard(): void {
    if (this.timer) clearImmediate(this.timer);
    this.timer = undefined;
    this.pending = [];
  }

  /** Every choice's finish reason; `fallback` for choices the engine gave none. */
  finishes(fallback: string, count = 1): ChoiceFinish[] {
    const indexes = new Set<number>([...this.finish.keys(), ...this.assembled.keys()]);
    for (let i = 0; i < count; i++) indexes.add(i);
    return [...indexes].sort((a, b) => a - b).map((index) => ({ index, finish_reason: this.finish.get(index) ?? fallback }));
  }

  /** Buffered: the assembled choices, in OpenAI's `chat.completion` shape. */
  choices(fallback: string, count = 1): Array<Record<string, unknown>> {
    return this.finishes(fallback, count).map(({ index, finish_reason }) => {
      const a = this.assembled.get(index);
      const message = finishMessage({ role: 'assistant', ...(a?.message ?? {}) });
      return { index, message, logprobs: a?.logprobs ?? null, finish_reason };
    });
  }

  private assemble(d: ChoiceDelta): void {
    let a = this.assembled.get(d.index);
    if (!a) this.assembled.set(d.index, (a = { message: {} }));
    mergeDelta(a.message, d.delta);
    const lp = d.logprobs as Record<string, unknown> | undefined;
    if (lp && typeof lp === 'object') {
      a.logprobs ??= {};
      for (const [k, v] of Object.entries(lp)) {
        const prev = a.logprobs[k];
        a.logprobs[k] = Array.isArray(v) && Array.isArray(prev) ? [...prev, ...v] : v;
      }
    }
  }
}
