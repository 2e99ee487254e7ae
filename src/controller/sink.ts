/**
 * The one streaming sink core behind SSE and WebSocket: commit point, delivered-text bookkeeping
 * for resume, the slow-client buffer cap, and exactly one ending (clean finish or failure). Each
 * transport supplies only its byte writer: how the commit, a chunk and the two endings look on its
 * wire, whether it is still open, and how many bytes wait unread.
 */
import type { RouterError } from '../errors';
import type { FinishReason, Usage } from '../protocol';
import { deltaBreaksResume, type ChoiceDelta, type ChoiceFinish } from '../protocol-v2';
import type { ChatSink } from './chat';

export interface SinkCoreOptions {
  /** Bytes the client may leave unread before the stream is cancelled. */
  maxBufferedBytes: number;
  /** Headers known at commit (worker, retries). */
  headers: () => Record<string, string>;
  /** Called once, at the commit point. */
  onCommit?: () => void;
  /** Keep the delivered text, so a broken stream can be resumed elsewhere (default false). */
  keepText?: boolean;
  /** Most characters kept for resume; beyond, the stream is no longer resumable (default: no bound). */
  maxKeptChars?: number;
}

export abstract class SinkCore implements ChatSink {
  private isCommitted = false;
  private closed = false;
  private text = '';
  private exact = true;
  private tooLong = false;

  protected constructor(private readonly core: SinkCoreOptions) {}

  /** True once the delivered text outgrew maxKeptChars: this stream can no longer be resumed. */
  get tooLongToResume(): boolean {
    return this.tooLong;
  }

  get committed(): boolean {
    return this.isCommitted;
  }

  get streamed(): string {
    return this.text;
  }

  /** The client is gone or the stream ended: nothing more can be written. */
  get done(): boolean {
    return this.closed || !this.isOpen();
  }

  write(text: string): boolean {
    if (this.done) return false;
    this.beforeWrite();
    if (!this.isCommitted) this.commit();
    if (this.core.keepText && !this.tooLong) {
      this.text += text;
      if (this.core.maxKeptChars !== undefined && this.text.length > this.core.maxKeptChars) {
        // Bounded memory per stream: past the bound resume is off, and the kept text is let go.
        this.tooLong = true;
        this.text = '';
      }
    }
    this.writeChunk(text);
    return this.bufferedBytes() <= this.core.maxBufferedBytes;
  }

  /**
   * False once the client got more than choice 0's plain text (a tool call, another choice): a
   * resume could not continue that exactly (docs/streaming.md).
   */
  get resumable(): boolean {
    return this.exact;
  }

  /** v2: the engine's deltas, each written whole as its own chunk. */
  writeChoices(choices: ChoiceDelta[]): boolean {
    if (this.done) return false;
    this.beforeWrite();
    if (!this.isCommitted) this.commit();
    for (const c of choices) {
      if (deltaBreaksResume(c)) this.exact = false;
      else if (this.core.keepText && typeof c.delta.content === 'string') this.text += c.delta.content;
      this.writeChoice(c);
    }
    return this.bufferedBytes() <= this.core.maxBufferedBytes;
  }

  /** Clean end: final chunk with finish_reason (each choice's, for n > 1), optional usage chunk, the transport's end marker. */
  finish(finishReason: FinishReason, usage: Usage | undefined, includeUsage: boolean, metadata: Record<string, unknown>, finishes?: ChoiceFinish[]): void {
    if (this.done) return;
    if (!this.isCommitted && this.commitsOnFinish()) this.commit();
    this.closed = true;
    const last = finishes && finishes.length > 0 ? finishes : [{ index: 0, finish_reason: finishReason }];
    this.writeFinish(finishReason, includeUsage ? usage : undefined, usage, metadata, last);
  }

  /** Failure: before commit a plain error answer, after it an in-band error; never a clean end. */
  fail(err: RouterError, headers: Record<string, string>): void {
    if (this.done) return;
    this.closed = true;
    this.writeFailure(err, headers, this.isCommitted);
  }

  private commit(): void {
    this.isCommitted = true;
    this.writeCommit(this.core.headers());
    this.core.onCommit?.();
  }

  /** The transport can still take bytes. */
  protected abstract isOpen(): boolean;
  /** Bytes written but not yet taken by the client. */
  protected abstract bufferedBytes(): number;
  /** Whether a stream that ends before any chunk still sends its commit (headers, role chunk). */
  protected abstract commitsOnFinish(): boolean;
  protected abstract writeCommit(headers: Record<string, string>): void;
  protected abstract writeChunk(text: string): void;
  /** v2: one engine delta as one chunk. */
  protected abstract writeChoice(choice: ChoiceDelta): void;
  /**
   * `usageChunk` is set when the client asked for a usage chunk; `usage` is always the answer's;
   * `finishes` holds every choice's finish reason (one entry unless n > 1).
   */
  protected abstract writeFinish(
    finishReason: FinishReason,
    usageChunk: Usage | undefined,
    usage: Usage | undefined,
    metadata: Record<string, unknown>,
    finishes: ChoiceFinish[],
  ): void;
  protected abstract writeFailure(err: RouterError, headers: Record<string, string>, committed: boolean): void;
  /** Called before every chunk (SSE batches the chunks of one event-loop turn). */
  protected beforeWrite(): void {}
}
