/**
 * The assembler: turns `cluster.pipeline` into one chain. koa-compose rejects a second
 * `next()`, so the chain is cut at `retry`: what stands before it is composed as the request part,
 * what stands after it (plus dispatch) as the attempt part, which `ctx.runAttempt()` runs once per
 * attempt with fresh attempt state. Without `retry`, the whole list is the attempt part, run once.
 */
import compose from 'koa-compose';
import { isAbsolute, resolve } from 'node:path';
import type { Clock } from './clock';
import { ConfigError, type RouterConfig } from './config';
import type { Middleware, RouteContext } from './context';
import type { BreakerBook } from './controller/breakers';
import { dispatch, type ReplyMux } from './controller/dispatch';
import type { EventBus } from './controller/events';
import type { RouterMetrics } from './controller/metrics';
import type { WorkerRegistry } from './controller/registry';
import type { RetryBudget } from './controller/retry-budget';
import type { SessionRegistry } from './controller/sessions';
import { isRouterError, toRouterError } from './errors';
import type { Logger } from './logger';
import type { Subjects } from './protocol';
import type { NatsConnection } from '@nats-io/transport-node';
import { BUILTIN_MIDDLEWARE } from '../middleware';

/** Shared objects a middleware factory may use; injected, never module state. */
export interface RouterDeps {
  nc: NatsConnection;
  mux: ReplyMux;
  subjects: Subjects;
  registry: WorkerRegistry;
  sessions: SessionRegistry;
  breakers: BreakerBook;
  budget: RetryBudget;
  metrics: RouterMetrics;
  clock: Clock;
  log: Logger;
  /** Random source in [0, 1): jitter and p2c (default Math.random). */
  random: () => number;
  /** The operator event bus (cluster API, dashboard); absent in bare unit setups. */
  events?: EventBus;
}

/** A named factory: `name(options, deps)`; options are plain data taken from the config. */
export interface MiddlewareDefinition {
  options(config: RouterConfig): unknown;
  factory(options: never, deps: RouterDeps): Middleware;
}

export interface Pipeline {
  readonly names: readonly string[];
  run(ctx: RouteContext): Promise<void>;
}

/** A custom middleware module exports `default` or `middleware`: `(config, deps) => Middleware`. */
type CustomFactory = (config: RouterConfig, deps: RouterDeps) => Middleware;

function isModulePath(entry: string): boolean {
  return entry.startsWith('./') || entry.startsWith('../') || isAbsolute(entry);
}

function loadCustom(entry: string, config: RouterConfig, deps: RouterDeps, baseDir: string): Middleware {
  const file = resolve(baseDir, entry);
  let mod: Record<string, unknown>;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    mod = require(file) as Record<string, unknown>;
  } catch (err) {
    throw new ConfigError(`cluster.pipeline: cannot load middleware module '${entry}' (${file}): ${(err as Error).message}`, { cause: err });
  }
  const factory = (mod.default ?? mod.middleware ?? mod) as unknown;
  if (typeof factory !== 'function') {
    throw new ConfigError(`cluster.pipeline: module '${entry}' must export a factory function (default or 'middleware')`);
  }
  const mw = (factory as CustomFactory)(config, deps);
  if (typeof mw !== 'function') throw new ConfigError(`cluster.pipeline: the factory in '${entry}' did not return a middleware function`);
  return mw;
}

/**
 * Builds the chain. Throws ConfigError naming an unknown or repeated entry. `baseDir` resolves
 * module paths (the config file's folder).
 */
export function assemblePipeline(config: RouterConfig, deps: RouterDeps, baseDir: string = process.cwd()): Pipeline {
  const names = config.cluster.pipeline;
  const seen = new Set<string>();
  const built: Middleware[] = names.map((name) => {
    if (seen.has(name)) throw new ConfigError(`cluster.pipeline: '${name}' is listed twice`);
    seen.add(name);
    if (name === 'dispatch') throw new ConfigError("cluster.pipeline: 'dispatch' always ends the chain; do not list it");
    if (isModulePath(name)) return loadCustom(name, config, deps, baseDir);
    const def = BUILTIN_MIDDLEWARE[name as keyof typeof BUILTIN_MIDDLEWARE] as MiddlewareDefinition | undefined;
    if (!def) {
      throw new ConfigError(
        `cluster.pipeline: unknown middleware '${name}' (known: ${Object.keys(BUILTIN_MIDDLEWARE).join(', ')}; or a module path starting with ./ ../ or /)`,
      );
    }
    return def.factory(def.options(config) as never, deps);
  });
  const boundary = names.indexOf('retry');
  const requestPart = boundary >= 0 ? built.slice(0, boundary + 1) : [];
  const attemptPart = boundary >= 0 ? built.slice(boundary + 1) : built;
  const attemptChain = compose<RouteContext>([...attemptPart, dispatch(deps)]);
  const requestChain = compose<RouteContext>(requestPart);
  const waitMs = config.cluster.requestRouting.workerWaitTimeoutMs;

  return {
    names: [...names],
    run(ctx: RouteContext): Promise<void> {
      ctx.runAttempt = () => runAttempt(ctx, attemptChain, deps, waitMs);
      // With retry, it is the last of the request part and never calls next; without, run once.
      return requestChain(ctx, boundary >= 0 ? undefined : () => ctx.runAttempt());
    },
  };
}

/** Online candidates for this attempt (resumes need engines that continue a partial answer). */
function candidatesFor(ctx: RouteContext, deps: RouterDeps) {
  const all = deps.registry.forModel(ctx.request.model);
  return ctx.continuation === undefined ? all : all.filter((w) => w.continuation);
}

/**
 * Known workers for the model are all offline (restarting, NATS blip): wait, bounded by
 * `waitMs` and the deadline, for one to come back rather than fail at once.
 */
async function waitForCandidates(ctx: RouteContext, deps: RouterDeps, signal: AbortSignal, waitMs: number) {
  let candidates = candidatesFor(ctx, deps);
  if (candidates.length > 0 || waitMs <= 0 || !deps.registry.knowsModel(ctx.request.model)) return candidates;
  const until = Math.min(deps.clock.now() + waitMs, ctx.deadline);
  while (candidates.length === 0 && !signal.aborted && deps.clock.now() < until) {
    await deps.registry.waitForChange(signal, until - deps.clock.now());
    candidates = candidatesFor(ctx, deps);
  }
  if (candidates.length === 0 && !signal.aborted) deps.metrics.timeouts.inc({ kind: 'wait' });
  return candidates;
}

/** One attempt: fresh state, candidates from the registry, the attempt chain, one record. */
async function runAttempt(ctx: RouteContext, chain: (ctx: RouteContext) => Promise<void>, deps: RouterDeps, waitMs: number): Promise<void> {
  const started = deps.clock.now();
  const controller = new AbortController();
  const onRequestAbort = (): void => controller.abort(ctx.signal.reason);
  if (ctx.signal.aborted) controller.abort(ctx.signal.reason);
  else ctx.signal.addEventListener('abort', onRequestAbort, { once: true });
  ctx.attempt = {
    number: ctx.attempts.length + 1,
    startedAt: started,
    signal: controller.signal,
    abort: (reason) => controller.abort(reason),
    progress: () => undefined,
    chunks: 0,
  };
  ctx.worker = undefined;
  // A function, so the narrowing of `ctx.worker = undefined` above does not stick across the chain.
  const selected = (): string | null => ctx.worker?.id ?? null;
  ctx.candidates = [];
  if (ctx.attempts.length > 0) noteRetry(ctx, deps);
  try {
    ctx.candidates = await waitForCandidates(ctx, deps, controller.signal, waitMs);
    if (controller.signal.aborted) throw controller.signal.reason;
    await chain(ctx);
    ctx.attempts.push({ attempt: ctx.attempt.number, worker: selected(), outcome: 'success', code: null, durationMs: round2(deps.clock.now() - started) });
    deps.metrics.attempts.inc({ outcome: 'success' });
  } catch (e) {
    const err = toRouterError(isRouterError(e) || !controller.signal.aborted ? e : controller.signal.reason);
    const worker = selected();
    ctx.attempts.push({ attempt: ctx.attempt.number, worker, outcome: err.outcome, code: err.code, durationMs: round2(deps.clock.now() - started) });
    deps.metrics.attempts.inc({ outcome: err.outcome });
    if (worker && err.outcome !== 'cancelled' && err.outcome !== 'caller' && !ctx.metrics.failedWorkers.includes(worker)) {
      ctx.metrics.failedWorkers.push(worker);
    }
    const kind = TIMEOUT_KINDS[err.code];
    if (kind) {
      ctx.metrics.timeouts++;
      deps.metrics.timeouts.inc({ kind: kind === 'attempt' && ctx.stream ? 'first_chunk' : kind });
    }
    throw err;
  } finally {
    ctx.signal.removeEventListener('abort', onRequestAbort);
    observeAttempt(ctx, deps);
    const worker = selected();
    if (worker) ctx.metrics.selectedWorker = worker;
    ctx.metrics.retryCount = Math.max(0, ctx.attempts.length - 1);
  }
}

/** Tells the event bus that this request is retried (or its stream resumed) after a failed attempt. */
function noteRetry(ctx: RouteContext, deps: RouterDeps): void {
  const last = ctx.attempts[ctx.attempts.length - 1];
  deps.events?.emit({ type: ctx.continuation !== undefined ? 'resume' : 'retry', requestId: ctx.requestId, attempt: ctx.attempt.number, worker: last.worker, code: last.code });
}

/** The attempt just recorded, with its TTFT and token count, for the cluster API's per-worker stats. */
function observeAttempt(ctx: RouteContext, deps: RouterDeps): void {
  const rec = ctx.attempts[ctx.attempts.length - 1];
  if (!deps.events || !rec || rec.attempt !== ctx.attempt.number) return;
  const first = ctx.attempt.firstChunkAt;
  const usage = rec.outcome === 'success' ? (ctx.result?.usage ?? ctx.end?.usage) : undefined;
  deps.events.emit({
    type: 'attempt',
    requestId: ctx.requestId,
    worker: rec.worker,
    outcome: rec.outcome,
    code: rec.code,
    // Unrounded, and measured now: the bus stamps the event's end time on the same time base.
    durationMs: deps.clock.now() - ctx.attempt.startedAt,
    ...(first !== undefined ? { ttftMs: round2(first - ctx.attempt.startedAt) } : {}),
    ...(usage ? { completionTokens: usage.completion_tokens } : {}),
    traceparent: ctx.attempt.traceparent,
    requestTraceparent: ctx.headers.traceparent,
    attempt: rec.attempt,
  });
}

/** Each deadline's code and its metric label (`first_chunk` for a stream's attempt limit). */
const TIMEOUT_KINDS: Partial<Record<string, string>> = {
  WORKER_TIMEOUT: 'attempt',
  STREAM_IDLE_TIMEOUT: 'idle',
  REQUEST_TIMEOUT: 'total',
};

function round2(ms: number): number {
  return Math.round(ms * 100) / 100;
}
