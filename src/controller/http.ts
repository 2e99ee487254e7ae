/**
 * The HTTP front: OpenAI-compatible routes on fastify. It validates, builds the RouteContext with
 * the request's deadline and abort signal, runs the chain, and writes exactly one outcome: a
 * completion, a stream, or an OpenAI-shaped error. Nothing a client sends can crash the process.
 */
import Fastify, { LogController, type FastifyReply, type FastifyRequest } from 'fastify';
import type { RouterConfig } from '../config';
import { answerUsage, createContext, type RouteContext } from '../context';
import { isRouterError, RouterError, toRouterError } from '../errors';
import { newId } from '../ids';
import type { Logger } from '../logger';
import type { Pipeline, RouterDeps } from '../pipeline';
import { SseSink } from './sse';
import { validateChatRequest } from './validate';

export interface HttpOptions {
  config: RouterConfig;
  deps: RouterDeps;
  pipeline: Pipeline;
  log: Logger;
  /** True while the NATS connection is up (for /ready). */
  natsConnected: () => boolean;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

function metadata(ctx: RouteContext): Record<string, unknown> {
  return {
    requestId: ctx.requestId,
    selectedWorker: ctx.metrics.selectedWorker,
    retryCount: ctx.metrics.retryCount,
    resumes: ctx.metrics.resumes,
    failedWorkers: ctx.metrics.failedWorkers,
    circuitBreakerTrips: ctx.metrics.circuitBreakerTrips,
    timeouts: ctx.metrics.timeouts,
    totalDurationMs: Math.round((ctx.metrics.totalDurationMs || ctx.clock.now() - ctx.startedAt) * 100) / 100,
    attempts: ctx.attempts,
  };
}

function routingHeaders(ctx: RouteContext): Record<string, string> {
  // At a stream's commit the running attempt is not recorded yet, so its number says more.
  const retries = Math.max(ctx.metrics.retryCount, ctx.attempt.number - 1);
  const h: Record<string, string> = { 'x-request-id': ctx.requestId, 'x-mlx-retries': String(retries) };
  const worker = ctx.worker?.id ?? ctx.metrics.selectedWorker;
  if (worker) h['x-mlx-worker'] = worker;
  return h;
}

function errorHeaders(err: RouterError): Record<string, string> {
  const seconds = err.retryAfterSeconds();
  return seconds === undefined ? {} : { 'retry-after': String(seconds) };
}

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

export function buildHttpServer(options: HttpOptions) {
  const { config, deps, pipeline, log } = options;
  const routing = config.cluster.requestRouting;
  const app = Fastify({
    loggerInstance: log,
    // The metrics middleware writes one line per request; fastify's own two would be noise.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: config.controller.bodyLimitBytes,
    // Ctrl-C must not wait for idle keep-alive sockets.
    forceCloseConnections: 'idle',
    return503OnClosing: true,
  });

  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'string' }, parseJson);

  app.setErrorHandler((error: Error & { code?: string; statusCode?: number }, request, reply) => {
    let err: RouterError;
    if (isRouterError(error)) err = error;
    else if (error.code === 'FST_ERR_CTP_BODY_TOO_LARGE' || error.statusCode === 413) {
      err = new RouterError('REQUEST_TOO_LARGE', `request body is larger than ${config.controller.bodyLimitBytes} bytes`, { param: 'body' });
    } else if (error.statusCode && error.statusCode >= 400 && error.statusCode < 500) {
      err = new RouterError('REQUEST_VALIDATION_FAILED', error.message, { param: 'body' });
    } else {
      request.log.error({ err: error }, 'unhandled error');
      err = toRouterError(error);
    }
    return sendError(reply, err, { 'x-request-id': String(request.id) });
  });

  app.setNotFoundHandler((request, reply) =>
    sendError(reply, new RouterError('NOT_FOUND', `no route for ${request.method} ${request.url.split('?')[0]}`)),
  );

  app.get('/health', async () => ({ status: 'ok' }));

  app.get('/ready', async (_req, reply) => {
    const nats = options.natsConnected();
    const workers = deps.registry.online().length;
    const ready = nats && workers > 0;
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not ready', nats: nats ? 'connected' : 'disconnected', workersOnline: workers });
  });

  app.get('/v1/models', async () => ({
    object: 'list',
    data: deps.registry.models().map((id) => ({ id, object: 'model', created: 0, owned_by: 'mlx-router' })),
  }));

  app.get('/metrics', async (_req, reply) => {
    const body = await deps.metrics.register.metrics();
    return reply.type(deps.metrics.register.contentType).send(body);
  });

  app.post('/v1/chat/completions', async (req, reply) => {
    const given = req.headers['x-request-id'];
    const requestId = typeof given === 'string' && REQUEST_ID.test(given) ? given : newId('req');
    const { request, includeUsage, sessionId: bodySession } = validateChatRequest(req.body);
    if (!deps.registry.knowsModel(request.model)) {
      if (deps.registry.online().length === 0) {
        throw new RouterError('NO_WORKERS_AVAILABLE', 'no worker is online', { retryAfterMs: 1000 });
      }
      throw new RouterError('MODEL_NOT_FOUND', `model '${request.model}' is not served by any worker (see GET /v1/models)`, { param: 'model' });
    }
    const headerSession = req.headers['x-session-id'];
    const sessionId = (typeof headerSession === 'string' && headerSession.length > 0 ? headerSession : undefined) ?? bodySession;

    const budgetMs = request.stream ? routing.streamingTimeoutMs : routing.timeoutMs;
    const abort = new AbortController();
    const deadlineTimer = setTimeout(
      () => abort.abort(new RouterError('REQUEST_TIMEOUT', `request deadline of ${budgetMs} ms passed`)),
      budgetMs,
    );
    const onClose = (): void => {
      if (!reply.raw.writableFinished) abort.abort(new RouterError('CLIENT_CLOSED_REQUEST', 'client closed the connection'));
    };
    reply.raw.on('close', onClose);

    const created = Math.floor(Date.now() / 1000);
    const completionId = `chatcmpl-${requestId}`;
    const clock = deps.clock;
    let sink: SseSink | undefined;
    const ctxLog = log.child({ requestId });
    const ctx: RouteContext = createContext({
      requestId,
      request,
      log: ctxLog,
      clock,
      signal: abort.signal,
      deadline: clock.now() + budgetMs,
      headers: req.headers as Record<string, string | undefined>,
      sessionId,
    });
    if (request.stream) {
      reply.hijack();
      sink = new SseSink({
        res: reply.raw,
        completionId,
        model: request.model,
        created,
        maxBufferedBytes: config.cluster.streaming.maxBufferedBytes,
        headers: () => routingHeaders(ctx),
        onCommit: () => deps.metrics.ttft.observe((clock.now() - ctx.startedAt) / 1000),
        keepText: config.cluster.streaming.resume,
      });
      (ctx as { sink?: SseSink }).sink = sink;
    }

    try {
      await pipeline.run(ctx);
      if (sink) {
        sink.finish(ctx.end?.finish_reason ?? 'stop', answerUsage(ctx), includeUsage, metadata(ctx));
        return reply;
      }
      const result = ctx.result;
      if (!result) throw new RouterError('INTERNAL_ERROR', 'the chain ended without an answer (does cluster.pipeline end in dispatch?)');
      return reply.headers(routingHeaders(ctx)).send({
        id: completionId,
        object: 'chat.completion',
        created,
        model: request.model,
        choices: [{ index: 0, message: { role: 'assistant', content: result.text }, logprobs: null, finish_reason: result.finish_reason }],
        usage: result.usage,
        metadata: metadata(ctx),
      });
    } catch (e) {
      const err = toRouterError(e);
      if (err.code === 'INTERNAL_ERROR') ctxLog.error({ err: e }, 'request failed inside the router');
      if (sink) {
        sink.fail(err, { ...routingHeaders(ctx), ...errorHeaders(err) });
        return reply;
      }
      if (reply.raw.destroyed) return reply;
      return sendError(reply, err, routingHeaders(ctx));
    } finally {
      clearTimeout(deadlineTimer);
      reply.raw.off('close', onClose);
    }
  });

  return app;
}
