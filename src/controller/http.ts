/**
 * The HTTP front: OpenAI-compatible routes on fastify. It validates, builds the RouteContext with
 * the request's deadline and abort signal, runs the chain, and writes exactly one outcome: a
 * completion, a stream, or an OpenAI-shaped error. Nothing a client sends can crash the process.
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { RouterConfig } from '../config';
import { isRouterError, RouterError, toRouterError } from '../errors';
import { newId } from '../ids';
import type { Logger } from '../logger';
import type { Pipeline, RouterDeps } from '../pipeline';
import { clientErrorHandler, guardServer } from './http-guard';
import { checkModelAllowed, clientOf, registerAuth } from './auth';
import { mayUseModel } from '../api-keys';
import { answerMetadata, errorHeaders, executeChat, routingHeaders } from './chat';
import { registerClusterApi } from './cluster-api';
import { drainBody } from './body-limit';
import { SseSink } from './sse';
import { registerWebSocket } from './ws';
import { validateChatRequest, type ValidatedChat } from './validate';
import { CHAT, registerOpenAIEndpoints, type AnswerKind } from './endpoints';

export interface HttpOptions {
  config: RouterConfig;
  deps: RouterDeps;
  pipeline: Pipeline;
  log: Logger;
  /** True while the NATS connection is up (for /ready). */
  natsConnected: () => boolean;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

function sendError(reply: FastifyReply, err: RouterError, headers: Record<string, string> = {}): FastifyReply {
  return reply.code(err.status).headers({ ...headers, ...errorHeaders(err) }).send(err.toJSON());
}

/** Parses any body as JSON, whatever its content type (curl -d sends form encoding). */
function parseJson(_req: FastifyRequest, body: string, done: (err: Error | null, value?: unknown) => void): void {
  if (body.length === 0) {
    done(new RouterError('REQUEST_VALIDATION_FAILED', 'request body is empty; send a JSON object', { param: 'body' }));
    return;
  }
  try {
    done(null, JSON.parse(body));
  } catch (e) {
    done(new RouterError('REQUEST_VALIDATION_FAILED', `request body is not valid JSON: ${(e as Error).message}`, { param: 'body' }));
  }
}

/** Why /ready says 503, in words an operator can act on. */
function notReadyReason(nats: boolean, online: number, unhealthy: number): string {
  if (!nats) return 'not connected to NATS';
  if (online === 0) return 'no worker is online';
  if (unhealthy === online) return `${online} worker(s) online, but every one reports its engine unhealthy (down or not answering)`;
  if (unhealthy > 0) return `${online} worker(s) online: ${unhealthy} with an unhealthy engine, the others draining`;
  return `${online} worker(s) online, all draining`;
}

export function buildHttpServer(options: HttpOptions): FastifyInstance {
  const { config, deps, pipeline, log } = options;
  const app = Fastify({
    // pino's Logger is a FastifyBaseLogger; the cast keeps the default instance type.
    loggerInstance: log as unknown as FastifyBaseLogger,
    // The metrics middleware writes one line per request; fastify's own two would be noise.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: config.controller.bodyLimitBytes,
    // Slow senders cannot hold a socket: headers, then the whole request, each within a limit;
    // idle keep-alive sockets close (docs/security.md).
    http: { headersTimeout: config.controller.headersTimeoutMs, connectionsCheckingInterval: Math.max(100, Math.min(1000, config.controller.headersTimeoutMs / 2)) },
    requestTimeout: config.controller.requestTimeoutMs,
    keepAliveTimeout: config.controller.keepAliveTimeoutMs,
    clientErrorHandler,
    // Bad URLs and the like are ours to answer too: OpenAI-shaped, with x-request-id.
    frameworkErrors: (error, request, reply) =>
      void sendError(reply, new RouterError('REQUEST_VALIDATION_FAILED', error.message, { param: 'url' }), { 'x-request-id': String(request.id) }),
    // Ctrl-C must not wait for idle keep-alive sockets.
    forceCloseConnections: 'idle',
    return503OnClosing: true,
    // The client's x-request-id when it is sane, else ours: every answer, errors included, carries it.
    genReqId: (raw) => {
      const given = raw.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : newId('req');
    },
  });

  guardServer(app.server, { maxConnections: config.controller.maxConnections, maxConnectionsPerClient: config.controller.maxConnectionsPerClient });
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'string' }, parseJson);

  app.setErrorHandler(async (error: Error & { code?: string; statusCode?: number }, request, reply) => {
    let err: RouterError;
    if (isRouterError(error)) err = error;
    else if (error.code === 'FST_ERR_CTP_BODY_TOO_LARGE' || error.statusCode === 413) {
      err = new RouterError('REQUEST_TOO_LARGE', `request body is larger than ${config.controller.bodyLimitBytes} bytes (controller.bodyLimitBytes)`, { param: 'body' });
      // Let the client finish sending first, so it reads the 413 (and SDKs do not retry it).
      await drainBody(request.raw);
      return sendError(reply, err, { 'x-request-id': String(request.id), connection: 'close', 'x-should-retry': 'false' });
    } else if (error.statusCode && error.statusCode >= 400 && error.statusCode < 500) {
      err = new RouterError('REQUEST_VALIDATION_FAILED', error.message, { param: 'body' });
    } else {
      request.log.error({ err: error }, 'unhandled error');
      err = toRouterError(error);
    }
    return sendError(reply, err, { 'x-request-id': String(request.id) });
  });

  app.setNotFoundHandler((request, reply) =>
    sendError(reply, new RouterError('NOT_FOUND', `no route for ${request.method} ${request.url.split('?')[0]}`), { 'x-request-id': String(request.id) }),
  );

  // First of all: who is asking (before any body is read). A no-op without cluster.auth.keys.
  registerAuth(app, config);

  app.get('/health', async () => ({ status: 'ok' }));

  app.get('/ready', async (_req, reply) => {
    const nats = options.natsConnected();
    const online = deps.registry.online();
    const workersReady = online.filter((w) => w.state === 'ready').length;
    const enginesUnhealthy = online.filter((w) => w.state === 'unhealthy').length;
    const ready = nats && workersReady > 0;
    const body: Record<string, unknown> = {
      status: ready ? 'ready' : 'not ready',
      nats: nats ? 'connected' : 'disconnected',
      workersOnline: online.length,
      workersReady,
      enginesUnhealthy,
    };
    if (!ready) body.reason = notReadyReason(nats, online.length, enginesUnhealthy);
    return reply.code(ready ? 200 : 503).send(body);
  });

  // Only the models the client's key may use.
  app.get('/v1/models', async (req) => ({
    object: 'list',
    data: deps.registry
      .models()
      .filter((id) => mayUseModel(clientOf(req), id))
      .map((id) => ({ id, object: 'model', created: 0, owned_by: 'mlx-router' })),
  }));

  app.get('/metrics', async (_req, reply) => {
    const body = await deps.metrics.register.metrics();
    return reply.type(deps.metrics.register.contentType).send(body);
  });

  const env = { config, deps, pipeline, log };

  /**
   * One OpenAI request of any endpoint to its one outcome: a stream through the SSE sink, or the
   * buffered answer `render` builds from the worker's result.
   */
  const serve = async (req: FastifyRequest, reply: FastifyReply, chat: ValidatedChat, kind: AnswerKind): Promise<FastifyReply> => {
    const requestId = String(req.id);
    const created = Math.floor(Date.now() / 1000);
    const completionId = `${kind.idPrefix}${requestId}`;
    if (chat.request.stream) reply.hijack();
    const { ctx, error } = await executeChat(env, {
      requestId,
      chat,
      client: clientOf(req),
      headers: req.headers as Record<string, string | undefined>,
      onClientGone: (callback) => {
        const onClose = (): void => {
          if (!reply.raw.writableFinished) callback();
        };
        reply.raw.on('close', onClose);
        return () => reply.raw.off('close', onClose);
      },
      sink: (ctx) =>
        new SseSink({
          res: reply.raw,
          completionId,
          model: chat.request.model,
          created,
          maxBufferedBytes: config.cluster.streaming.maxBufferedBytes,
          headers: () => routingHeaders(ctx),
          onCommit: () => deps.metrics.ttft.observe((deps.clock.now() - ctx.startedAt) / 1000),
          keepText: config.cluster.streaming.resume,
          object: kind.chunkObject,
          maxKeptChars: config.cluster.streaming.maxResumeChars,
          stalledTimeoutMs: config.controller.stalledStreamTimeoutMs,
        }),
    });
    if (chat.request.stream || reply.raw.destroyed) return reply;
    if (error || !ctx?.result) return sendError(reply, error ?? toRouterError(new Error('no answer')), ctx ? routingHeaders(ctx) : {});
    const answer = kind.render(ctx.result, { id: completionId, created, model: chat.request.model });
    return reply.headers(routingHeaders(ctx)).send({ ...answer, metadata: answerMetadata(ctx) });
  };

  app.post('/v1/chat/completions', (req, reply) => serve(req, reply, validateChatRequest(req.body), CHAT));
  registerOpenAIEndpoints(app, deps, serve, (req, model) => checkModelAllowed(clientOf(req), model));

  registerWebSocket(app, env);
  registerClusterApi(app, { config, deps, pipeline, natsConnected: options.natsConnected });

  return app;
}
