/**
 * Server-sent events in OpenAI's chat.completion.chunk format. The first chunk written is the
 * commit point: headers go out with it. A failure after commit ends the stream with an
 * `event: error` and no `data: [DONE]`, so a broken stream never looks finished.
 */
import type { ServerResponse } from 'node:http';
import type { RouterError } from '../errors';
import type { FinishReason, Usage } from '../protocol';
import type { ChoiceDelta, ChoiceFinish } from '../protocol-v2';
import { SinkCore, type SinkCoreOptions } from './sink';

export interface SseSinkOptions extends SinkCoreOptions {
  res: ServerResponse;
  completionId: string;
  model: string;
  created: number;
  /** `chat.completion.chunk` (default), or legacy `text_completion` chunks (`choices[].text`). */
  object?: 'chat.completion.chunk' | 'text_completion';
  /**
   * After the stream ended, a client that still leaves it unread loses the socket after this
   * long (ms), so its buffer and socket are released (default: no bound).
   */
  stalledTimeoutMs?: number;
}

/** SSE's byte writer over the shared sink core. */
export class SseSink extends SinkCore {
  private corked = false;
  private readonly head: string;
  private readonly prefix: string;
  private readonly suffix: string;
  private readonly legacy: boolean;

  constructor(private readonly options: SseSinkOptions) {
    super(options);
    this.legacy = options.object === 'text_completion';
    // Every content chunk shares this prefix: build it once, not a JSON object per token.
    this.head =
      `data: {"id":${JSON.stringify(options.completionId)},"object":"${options.object ?? 'chat.completion.chunk'}","created":${options.created},` +
      `"model":${JSON.stringify(options.model)},`;
    this.prefix = this.head + (this.legacy ? '"choices":[{"index":0,"text":' : '"choices":[{"index":0,"delta":{"content":');
    this.suffix = this.legacy ? ',"logprobs":null,"finish_reason":null}]}\n\n' : '},"finish_reason":null}]}\n\n';
  }

  protected isOpen(): boolean {
    return !this.options.res.destroyed;
  }

  protected bufferedBytes(): number {
    return this.options.res.writableLength;
  }

  protected commitsOnFinish(): boolean {
    return true;
  }

  protected override beforeWrite(): void {
    this.batch();
  }

  protected writeChunk(text: string): void {
    this.options.res.write(this.prefix + JSON.stringify(text) + this.suffix);
  }

  protected writeChoice(c: ChoiceDelta): void {
    const logprobs = c.logprobs !== undefined ? { logprobs: c.logprobs } : {};
    const choice = this.legacy
      ? { index: c.index, text: String(c.delta.text ?? c.delta.content ?? ''), logprobs: c.logprobs ?? null, finish_reason: null }
      : { index: c.index, delta: c.delta, ...logprobs, finish_reason: null };
    this.options.res.write(`${this.head}"choices":[${JSON.stringify(choice)}]}\n\n`);
  }

  /** Final chunk with every choice's finish_reason, optional usage chunk, metadata, `[DONE]`. */
  protected writeFinish(_finishReason: FinishReason, usageChunk: Usage | undefined, _usage: Usage | undefined, metadata: Record<string, unknown>, finishes: ChoiceFinish[]): void {
    const base = { id: this.options.completionId, object: this.options.object ?? 'chat.completion.chunk', created: this.options.created, model: this.options.model };
    const choices = finishes.map((f) =>
      this.legacy ? { index: f.index, text: '', logprobs: null, finish_reason: f.finish_reason } : { index: f.index, delta: {}, finish_reason: f.finish_reason },
    );
    this.send({ ...base, choices, metadata });
    if (usageChunk) this.send({ ...base, choices: [], usage: usageChunk });
    this.end('data: [DONE]\n\n');
  }

  /** A plain JSON error before commit, an SSE error event after it. Never `[DONE]`. */
  protected writeFailure(err: RouterError, headers: Record<string, string>, committed: boolean): void {
    const res = this.options.res;
    if (!committed) {
      res.writeHead(err.status, { ...headers, 'content-type': 'application/json; charset=utf-8' });
      this.end(JSON.stringify(err.toJSON()));
    } else {
      this.end(`event: error\ndata: ${JSON.stringify(err.toJSON())}\n\n`);
    }
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
    const res = this.options.res;
    res.end(last);
    const ms = this.options.stalledTimeoutMs;
    if (ms === undefined || res.writableFinished || res.destroyed) return;
    // The client is not reading what is left: release socket and buffer after a bounded time.
    const timer = setTimeout(() => res.destroy(), ms);
    timer.unref();
    const clear = (): void => clearTimeout(timer);
    res.once('finish', clear);
    res.once('close', clear);
  }

  protected writeCommit(headers: Record<string, string>): void {
    this.options.res.writeHead(200, {
      ...headers,
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      // No connection header: Node answers keep-alive, or close when the client asked for it.
      'x-accel-buffering': 'no',
    });
    // Legacy text completions have no role chunk.
    if (this.legacy) return;
    this.send({
      id: this.options.completionId,
      object: 'chat.completion.chunk',
      created: this.options.created,
      model: this.options.model,
      choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }],
    });
  }

  private send(value: unknown): void {
    this.options.res.write(`data: ${JSON.stringify(value)}\n\n`);
  }
}
