/**
 * WebSocket streaming: `GET /v1/stream`. Each text message from the client is one chat request
 * (the same JSON as POST /v1/chat/completions; `stream` is implied). The server answers with one
 * message per `chat.completion.chunk`, then exactly one `{"type":"done"}` or `{"type":"error"}`.
 * One request at a time per socket; the same guarantees as SSE (commit point, resume, honest
 * endings, buffer cap, cancel on close).
 */
import websocket from '@fastify/websocket';
import type { FastifyInstance } from 'fastify';
import type { Duplex } from 'node:stream';
import type { WebSocket } from 'ws';
import { refuseSocket } from './http-guard';
import { isRouterError, RouterError, toRouterError } from '../errors';
import { newId } from '../ids';
import type { FinishReason, Usage } from '../protocol';
import type { ChoiceDelta, ChoiceFinish } from '../protocol-v2';
import { executeChat, routingHeaders, type ChatEnv } from './chat';
import { clientOf } from './auth';
import { SinkCore, type SinkCoreOptions } from './sink';
import { validateChatRequest } from './validate';

/** WebSocket's byte writer over the shared sink core: one JSON message per frame. */
class WsSink extends SinkCore {
  constructor(
    private readonly socket: WebSocket,
    private readonly base: { id: string; object: 'chat.completion.chunk'; created: number; model: string },
    private readonly requestId: string,
    options: SinkCoreOptions,
  ) {
    super(options);
  }

  protected isOpen(): boolean {
    return this.socket.readyState === this.socket.OPEN;
  }

  protected bufferedBytes(): number {
    return this.socket.bufferedAmount;
  }

  protected commitsOnFinish(): boolean {
    return false;
  }

  protected writeCommit(headers: Record<string, string>): void {
    this.send({ ...this.base, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }], routing: headers });
  }

  protected writeChunk(text: string): void {
    this.send({ ...this.base, choices: [{ index: 0, delta: { content: text }, finish_reason: null }] });
  }

  protected writeChoice(c: ChoiceDelta): void {
    const logprobs = c.logprobs !== undefined ? { logprobs: c.logprobs } : {};
    this.send({ ...this.base, choices: [{ index: c.index, delta: c.delta, ...logprobs, finish_reason: null }] });
  }

  protected writeFinish(finishReason: FinishReason, usageChunk: Usage | undefined, usage: Usage | undefined, metadata: Record<string, unknown>, finishes: ChoiceFinish[]): void {
    this.send({ ...this.base, choices: finishes.map((f) => ({ index: f.index, delta: {}, finish_reason: f.finish_reason })) });
    if (usageChunk) this.send({ ...this.base, choices: [], usage: usageChunk });
    this.send({ type: 'done', request_id: this.requestId, finish_reason: finishReason, usage, metadata });
  }

  protected writeFailure(err: RouterError): void {
    sendError(this.socket, err, this.requestId);
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
  // A failed handshake (bad key, version, method) is answered like every other error: OpenAI JSON.
  app.addHook('onReady', async () => {
    app.websocketServer.on('wsClientError', (err: Error, socket: Duplex) => {
      const version = /Version/.test(err.message) ? { 'sec-websocket-version': '13, 8' } : undefined;
      refuseSocket(socket, /method/i.test(err.message) ? 405 : 400, 'REQUEST_VALIDATION_FAILED', `WebSocket handshake failed: ${err.message}`, version);
    });
  });
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
          client: clientOf(req),
          headers: req.headers as Record<string, string | undefined>,
          onClientGone: (cb) => {
            goneCallbacks.add(cb);
            return () => goneCallbacks.delete(cb);
          },
          sink: (ctx) =>
            new WsSink(socket, base, requestId, {
              maxBufferedBytes: config.cluster.streaming.maxBufferedBytes,
              keepText: config.cluster.streaming.resume,
              maxKeptChars: config.cluster.streaming.maxResumeChars,
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
