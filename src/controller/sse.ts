/**
 * Server-sent events in OpenAI's chat.completion.chunk format. The first chunk written is the
 * commit point: headers go out with it. A failure after commit ends the stream with an
 * `event: error` and no `data: [DONE]`, so a broken stream never looks finished.
 */
import type { ServerResponse } from 'node:http';
import type { StreamSink } from '../context';
import type { RouterError } from '../errors';
import type { FinishReason, Usage } from '../protocol';

export interface SseSinkOptions {
  res: ServerResponse;
  completionId: string;
  model: string;
  created: number;
  /** Bytes the client may leave unread before the stream is cancelled. */
  maxBufferedBytes: number;
  /** Headers to send at commit (worker, retries: known only then). */
  headers: () => Record<string, string>;
  /** Called once, at the commit point. */
  onCommit?: () => void;
  /** Keep the delivered text, so a broken stream can be resumed elsewhere (default false). */
  keepText?: boolean;
}

export class SseSink implements StreamSink {
  private isCommitted = false;
  private closed = false;
  private text = '';
  private corked = false;
  private readonly prefix: string;
  private readonly suffix = '},"finish_reason":null}]}\n\n';

  constructor(private readonly options: SseSinkOptions) {
    // Every content chunk shares this prefix: build it once, not a JSON object per token.
    this.prefix =
      `data: {"id":${JSON.stringify(options.completionId)},"object":"chat.completion.chunk","created":${options.created},` +
      `"model":${JSON.stringify(options.model)},"choices":[{"index":0,"delta":{"content":`;
  }

  get committed(): boolean {
    return this.isCommitted;
  }

  get streamed(): string {
    return this.text;
  }

  /** The client is gone or the stream ended: nothing more can be written. */
  get done(): boolean {
    return this.closed || this.options.res.destroyed;
  }

  write(text: string): boolean {
    if (this.done) return false;
    this.batch();
    if (!this.isCommitted) this.commit();
    if (this.options.keepText) this.text += text;
    this.options.res.write(this.prefix + JSON.stringify(text) + this.suffix);
    return this.options.res.writableLength <= this.options.maxBufferedBytes;
  }

  /** Clean end: final chunk with finish_reason, optional usage chunk, metadata, `[DONE]`. */
  finish(finishReason: FinishReason, usage: Usage | undefined, includeUsage: boolean, metadata: Record<string, unknown>): void {
    if (this.done) return;
    if (!this.isCommitted) this.commit();
    const base = { id: this.options.completionId, object: 'chat.completion.chunk', created: this.options.created, model: this.options.model };
    this.send({ ...base, choices: [{ index: 0, delta: {}, finish_reason: finishReason }], metadata });
    if (includeUsage && usage) this.send({ ...base, choices: [], usage });
    this.end('data: [DONE]\n\n');
    this.closed = true;
  }

  /** Failure: a plain JSON error before commit, an SSE error event after it. Never `[DONE]`. */
  fail(err: RouterError, headers: Record<string, string>): void {
    if (this.done) return;
    const res = this.options.res;
    if (!this.isCommitted) {
      res.writeHead(err.status, { ...headers, 'content-type': 'application/json; charset=utf-8' });
      this.end(JSON.stringify(err.toJSON()));
    } else {
      this.end(`event: error\ndata: ${JSON.stringify(err.toJSON())}\n\n`);
    }
    this.closed = true;
  }

  /**
   * Chunks that arrive in one event-loop turn (one NATS read often carries several) leave in one
   * socket write: cork now, uncork once this turn's work is done.
   */
  private batch(): void {
    if (this.corked) return;
    this.corked = true;
    this.options.res.cork();
    process.nextTick(this.uncork);
  }

  private readonly uncork = (): void => {
    if (!this.corked) return;
    this.corked = false;
    this.options.res.uncork();
  };

  /**
   * Ends the response after flushing the batch. On Node 22, `end()` on a corked response writes the
   * chunked terminator ahead of the corked chunks: the client sees the body end before the finish
   * chunk and `[DONE]`, and they are lost. So the batch is always uncorked before `end()`.
   */
  private end(last: string): void {
    this.uncork();
    this.options.res.end(last);
  }

  private commit(): void {
    this.isCommitted = true;
    this.options.res.writeHead(200, {
      ...this.options.headers(),
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    this.send({
      id: this.options.completionId,
      object: 'chat.completion.chunk',
      created: this.options.created,
      model: this.options.model,
      choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }],
    });
    this.options.onCommit?.();
  }

  private send(value: unknown): void {
    this.options.res.write(`data: ${JSON.stringify(value)}\n\n`);
  }
}
