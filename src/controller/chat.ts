/**
 * One chat request from start to its single outcome, whatever the transport (HTTP buffered, SSE,
 * WebSocket): model check, the request deadline and abort signal, the chain, and the answer or
 * error written exactly once. Transports only adapt bytes.
 */
import type { RouterConfig } from '../config';
import { answerUsage, createContext, type RouteContext, type StreamSink } from '../context';
import { ERROR_CODE_HEADER, RouterError, toRouterError } from '../errors';
import type { Logger } from '../logger';
import { nextTraceparent, TRACEPARENT } from '../trace';
import type { EventBus } from './events';
import type { FinishReason, Usage } from '../protocol';
import type { Pipeline, RouterDeps } from '../pipeline';
import { checkMaxTokens } from './token-cap';
import type { ValidatedChat } from './validate';
import { checkCapabilities } from './capabilities';
import type { WireRequest } from '../protocol';
import type { ChoiceFinish } from '../protocol-v2';
import type { ClientKey } from '../types';
import { checkModelAllowed } from './auth';

/** A streaming transport: chunks (first one commits), then one clean end or one failure. */
export interface ChatSink extends StreamSink {
  finish(finishReason: FinishReason, usage: Usage | undefined, includeUsage: boolean, metadata: Record<string, unknown>, finishes?: ChoiceFinish[]): void;
  /** Before commit: a plain error answer; after: an in-band error, never a clean end. */
  fail(err: RouterError, headers: Record<string, string>): void;
}

export interface ChatEnv {
  config: RouterConfig;
  deps: RouterDeps;
  pipeline: Pipeline;
  log: Logger;
}

export interface ChatInput {
  requestId: string;
  chat: ValidatedChat;
  headers: Record<string, string | undefined>;
  /** The client's API key, when cluster.auth.keys are on (src/controller/auth.ts). */
  client?: ClientKey;
  /** Streams only: builds the transport's sink once the context exists. */
  sink?: (ctx: RouteContext) => ChatSink;
  /** Registers a callback for the client going away; returns its remover. */
  onClientGone: (callback: () => void) => () => void;
}

export interface ChatOutcome {
  ctx?: RouteContext;
  /** Set when the request failed and no stream sink already told the client. */
  error?: RouterError;
}

/** `metadata` of an answer. */
export function answerMetadata(ctx: RouteContext): Record<string, unknown> {
  return {
    requestId: ctx.requestId,
    ...(ctx.client ? { keyId: ctx.client.id } : {}),
    selectedWorker: ctx.metrics.selectedWorker,
    retryCount: ctx.metrics.retryCount,
    resumes: ctx.metrics.resumes,
    failedWorkers: ctx.metrics.failedWorkers,
    circuitBreakerTrips: ctx.metrics.circuitBreakerTrips,
    timeouts: ctx.metrics.timeouts,
    ...(ctx.metrics.hedge ? { hedge: ctx.metrics.hedge } : {}),
    totalDurationMs: Math.round((ctx.metrics.totalDurationMs || ctx.clock.now() - ctx.startedAt) * 100) / 100,
    attempts: ctx.attempts,
  };
}

/** `x-request-id`, `x-mlx-worker`, `x-mlx-retries`. */
export function routingHeaders(ctx: RouteContext): Record<string, string> {
  // At a stream's commit the running attempt is not recorded yet, so its number says more.
  const retries = Math.max(ctx.metrics.retryCount, ctx.attempt.number - 1 - (ctx.metrics.hedges ?? 0));
  const h: Record<string, string> = { 'x-request-id': ctx.requestId, 'x-mlx-retries': String(retries) };
  const worker = ctx.worker?.id ?? ctx.metrics.selectedWorker;
  if (worker) h['x-mlx-worker'] = worker;
  return h;
}

/** `x-mlx-error-code` (the stable code, as `error.router_code`), and `retry-after` when the error carries a delay. */
export function errorHeaders(err: RouterError): Record<string, string> {
  const seconds = err.retryAfterSeconds();
  const h: Record<string, string> = { [ERROR_CODE_HEADER]: err.code };
  if (seconds !== undefined) h['retry-after'] = String(seconds);
  return h;
}

/**
 * Unknown model: 404 when other models are served, 503 when nothing is online at all. With
 * `request`, also a 400 when no worker of the model has a capability it needs (tools, vision...).
 */
export function checkModel(deps: RouterDeps, model: string, request?: Pick<WireRequest, 'model' | 'needs'>): void {
  if (deps.registry.knowsModel(model)) {
    if (request) checkCapabilities(deps.registry.known(), request);
    return;
  }
  if (deps.registry.online().length === 0) throw new RouterError('NO_WORKERS_AVAILABLE', 'no worker is online', { retryAfterMs: 1000 });
  throw new RouterError('MODEL_NOT_FOUND', `model '${model}' is not served by any worker (see GET /v1/models)`, { param: 'model' });
}

/**
 * Runs one chat request to its one outcome. Streams end through their sink (finish or fail);
 * buffered requests return `ctx` with `ctx.result`, or `error` for the caller to send.
 */
export async function executeChat(env: ChatEnv, input: ChatInput): Promise<ChatOutcome> {
  const { config, deps, pipeline, log } = env;
  const { request } = input.chat;
  const routing = config.cluster.requestRouting;
  const headerSession = input.headers['x-session-id'];
  const sessionId = (headerSession && headerSession.length > 0 ? headerSession : undefined) ?? input.chat.sessionId;
  const budgetMs = request.stream ? routing.streamingTimeoutMs : routing.timeoutMs;
  const abort = new AbortController();
  const deadlineTimer = deps.clock.timer(budgetMs, () => abort.abort(new RouterError('REQUEST_TIMEOUT', `request deadline of ${budgetMs} ms passed`)));
  const removeGone = input.onClientGone(() => abort.abort(new RouterError('CLIENT_CLOSED_REQUEST', 'client closed the connection')));
  // The key's id, never the key, on every line of the request.
  const ctxLog = log.child(input.client ? { requestId: input.requestId, keyId: input.client.id } : { requestId: input.requestId });
  const ctx = createContext({
    requestId: input.requestId,
    request,
    log: ctxLog,
    clock: deps.clock,
    signal: abort.signal,
    deadline: deps.clock.now() + budgetMs,
    // One trace per request: the client's, or a new one (each attempt is a hop under it).
    headers: { ...input.headers, [TRACEPARENT]: nextTraceparent(input.headers[TRACEPARENT]) },
    sessionId,
    client: input.client,
  });
  const sink = request.stream && input.sink ? input.sink(ctx) : undefined;
  (ctx as { sink?: StreamSink }).sink = sink;
  let failure: RouterError | undefined;
  try {
    // The one model check of every transport: 403 for a model the key may not use, 404 for a
    // model nobody serves, before any routing.
    checkModelAllowed(input.client, request.model);
    checkModel(deps, request.model, request);
    checkMaxTokens(config.cluster.maxTokens, request);
    await pipeline.run(ctx);
    if (sink) {
      sink.finish(ctx.end?.finish_reason ?? 'stop', answerUsage(ctx), input.chat.includeUsage, answerMetadata(ctx), ctx.end?.choices);
      return { ctx };
    }
    if (!ctx.result) throw new RouterError('INTERNAL_ERROR', 'the chain ended without an answer (does cluster.pipeline end in dispatch?)');
    return { ctx };
  } catch (e) {
    const err = (failure = toRouterError(e));
    if (err.code === 'INTERNAL_ERROR') ctxLog.error({ err: e }, 'request failed inside the router');
    if (sink) {
      sink.fail(err, { ...routingHeaders(ctx), ...errorHeaders(err) });
      return { ctx };
    }
    return { ctx, error: err };
  } finally {
    deadlineTimer.cancel();
    removeGone();
    if (deps.bus) observeRequest(deps.bus, ctx, failure, input.headers[TRACEPARENT]);
  }
}

/** The request's one outcome for the cluster API's series; a request refused for capacity is also `shed`. */
function observeRequest(events: EventBus, ctx: RouteContext, err: RouterError | undefined, clientTraceparent: string | undefined): void {
  const first = ctx.metrics.resumes === 0 && ctx.sink?.committed ? ctx.attempt.firstChunkAt : undefined;
  events.emit({
    type: 'request',
    requestId: ctx.requestId,
    status: err?.status ?? 200,
    code: err?.code ?? null,
    durationMs: ctx.clock.now() - ctx.startedAt,
    ...(first !== undefined ? { ttftMs: first - ctx.startedAt } : {}),
    traceparent: ctx.headers[TRACEPARENT],
    clientTraceparent,
    model: ctx.request.model,
    stream: ctx.stream,
  });
  if (err?.outcome === 'no_capacity') events.emit({ type: 'shed', requestId: ctx.requestId, code: err.code });
}
