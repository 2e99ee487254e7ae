/**
 * WebSocket streaming: `GET /v1/stream`. Each text message from the client is one chat request
 * (the same JSON as POST /v1/chat/completions; `stream` is implied). The server answers with one
 * message per `chat.completion.chunk`, then exactly one `{"type":"done"}` or `{"type":"error"}`.
 * One request at a time per socket; the same guarantees as SSE (commit point, resume, honest
 * endings, buffer cap, cancel on close).
 */
import websocket from '@fastify/websocket';
import type { FastifyInstance } from 'fastify';
import type { WebSocket } from 'ws';
import { isRouterError, RouterError, toRouterError } from '../errors';
import { newId } from '../ids';
import type { FinishReason, Usage } from '../protocol';
import { checkModel, executeChat, routingHeaders, type ChatEnv, type ChatSink } from './chat';
import { validateChatRequest } from './validate';

class WsSink implements ChatSink {
  private isCommitted = false;
  private closed = false;
  private text = '';

  constructor(
    private readonly socket: WebSocket,
    private readonly base: { id: string; object: 'chat.completion.chunk'; created: number; model: string },
    private readonly options: { maxBufferedBytes: number; keepText: boolean; requestId: string; headers: () => Record<string, string>; onCommit: () => void },
  ) {}

  get committed(): boolean {
    return this.isCommitted;
  }

  get streamed(): string {
    return this.text;
  }

  write(text: string): boolean {
    if (this.closed || this.socket.readyState !== this.socket.OPEN) return false;
    if (!this.isCommitted) {
      this.isCommitted = true;
      this.options.onCommit();
      this.send({ ...this.base, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }], routing: this.options.headers() });
    }
    if (this.options.keepText) this.text += text;
    this.send({ ...this.base, choices: [{ index: 0, delta: { content: text }, finish_reason: null }] });
    return this.socket.bufferedAmount <= this.options.maxBufferedBytes;
  }

  finish(finishReason: FinishReason, usage: Usage | undefined, includeUsage: boolean, metadata: Record<string, unknown>): void {
    if (this.closed) return;
    this.send({ ...this.base, choices: [{ index: 0, delta: {}, finish_reason: finishReason }] });
    if (includeUsage && usage) this.send({ ...this.base, choices: [], usage });
    this.send({ type: 'done', request_id: this.options.requestId, finish_reason: finishReason, usage, metadata });
    this.closed = true;
  }

  fail(err: RouterError): void {
    if (this.closed) return;
    sendError(this.socket, err, this.options.requestId);
    this.closed = true;
  }

  private send(value: unknown): void {
    if (this.socket.readyState === this.socket.OPEN) this.socket.send(JSON.stringify(value));
  }
}

function sendError(socket: WebSocket, err: RouterError, requestId?: string): void {
  if (socket.readyState !== socket.OPEN) return;
  const body = err.toJSON();
  socket.send(JSON.stringify({ type: 'error', ...(requestId ? { request_id: requestId } : {}), status: err.status, ...body }));
}

export function registerWebSocket(app: FastifyInstance, env: ChatEnv): void {
  const { config, deps } = env;
  void app.register(websocket, { options: { maxPayload: config.controller.bodyLimitBytes } });
  void app.register(async function streamRoute(instance) {
    instance.get('/v1/stream', { websocket: true }, (socket, req) => {
      let busy = false;
      const goneCallbacks = new Set<() => void>();
      socket.on('close', () => {
        for (const cb of goneCallbacks) cb();
      });
      // A broken socket emits 'error' then 'close': without a listener the error would throw.
      socket.on('error', (err) => req.log.debug({ err }, 'websocket error'));
      socket.on('message', (data, isBinary) => {
        if (busy) {
          sendError(socket, new RouterError('REQUEST_VALIDATION_FAILED', 'one request at a time per socket: wait for done or error'));
          return;
        }
        let chat;
        try {
          let body: unknown;
          try {
            body = JSON.parse(isBinary ? Buffer.from(data as Buffer).toString('utf8') : String(data));
          } catch (e) {
            throw new RouterError('REQUEST_VALIDATION_FAILED', `message is not valid JSON: ${(e as Error).message}`, { param: 'body' });
          }
          if (typeof body === 'object' && body !== null && !Array.isArray(body)) (body as Record<string, unknown>).stream = true;
          chat = validateChatRequest(body);
          checkModel(deps, chat.request.model);
        } catch (e) {
          sendError(socket, isRouterError(e) ? e : toRouterError(e));
          return;
        }
        busy = true;
        const requestId = newId('req');
        const created = Math.floor(Date.now() / 1000);
        const base = { id: `chatcmpl-${requestId}`, object: 'chat.completion.chunk' as const, created, model: chat.request.model };
        void executeChat(env, {
          requestId,
          chat,
          headers: req.headers as Record<string, string | undefined>,
          onClientGone: (cb) => {
            goneCallbacks.add(cb);
            return () => goneCallbacks.delete(cb);
          },
          sink: (ctx) =>
            new WsSink(socket, base, {
              maxBufferedBytes: config.cluster.streaming.maxBufferedBytes,
              keepText: config.cluster.streaming.resume,
              requestId,
              headers: () => routingHeaders(ctx),
              onCommit: () => deps.metrics.ttft.observe((deps.clock.now() - ctx.startedAt) / 1000),
            }),
        }).finally(() => {
          busy = false;
        });
      });
    });
  });
}
