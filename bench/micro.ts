/**
 * In-process micro-benchmarks: time per call of a function, and the cost of one middleware over a
 * pass-through one on the same freshly built context (the context's own cost cancels out). The
 * middleware get real deps (registry, breakers, metrics...) as the assembler would give them.
 */
import { Writable } from 'node:stream';
import pino from 'pino';
import { systemClock } from '../src/clock';
import { loadConfig, type RouterConfig } from '../src/config';
import type { RouterEvent } from '../src/attempt';
import { createContext, newAttempt, type Middleware, type RouteContext } from '../src/context';
import { Listeners } from '../src/listeners';
import { BreakerBook } from '../src/controller/breakers';
import { RouterMetrics } from '../src/controller/metrics';
import { WorkerRegistry, type WorkerInfo } from '../src/controller/registry';
import { RetryBudget } from '../src/controller/retry-budget';
import { SessionRegistry } from '../src/controller/sessions';
import { silentLogger, type Logger } from '../src/logger';
import type { RouterDeps } from '../src/pipeline';
import { makeSubjects, type WireRequest } from '../src/protocol';
import { MAX_TOKENS, MODEL } from './payload';
import { median } from './stats';

/** Result sink, so the optimizer cannot drop a measured call. */
export const blackhole: { value: unknown } = { value: undefined };

/** Nanoseconds per call of a synchronous function (median of `rounds`). */
export function nsPerCall(iterations: number, rounds: number, fn: (i: number) => unknown): number {
  for (let i = 0; i < iterations * 2; i++) blackhole.value = fn(i);
  const runs: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < iterations; i++) blackhole.value = fn(i);
    runs.push(Number(process.hrtime.bigint() - t0) / iterations);
  }
  return median(runs);
}

async function nsPerAsyncCall(iterations: number, fn: () => Promise<void>): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) await fn();
  return Number(process.hrtime.bigint() - t0) / iterations;
}

/**
 * Cost (ns) of `candidate` over `baseline`: both warmed up first (so the JIT has settled), then
 * timed in many short alternating rounds; the cost is the median of the per-round differences, so
 * GC pauses and a neighbour's bursts (this machine is shared) fall into rounds the median ignores.
 */
export async function costOver(iterations: number, rounds: number, baseline: () => Promise<void>, candidate: () => Promise<void>): Promise<{ baselineNs: number; costNs: number }> {
  await nsPerAsyncCall(iterations * 5, baseline);
  await nsPerAsyncCall(iterations * 5, candidate);
  const b: number[] = [];
  const d: number[] = [];
  for (let r = 0; r < rounds; r++) {
    // Alternate which runs first, so a trend within a round pair does not bias the difference.
    const first = r % 2 === 0;
    const x = await nsPerAsyncCall(iterations, first ? baseline : candidate);
    const y = await nsPerAsyncCall(iterations, first ? candidate : baseline);
    const [base, cand] = first ? [x, y] : [y, x];
    b.push(base);
    d.push(cand - base);
  }
  return { baselineNs: median(b), costNs: median(d) };
}

/** A pino logger at `info` writing into nothing: what a request's log line costs to produce. */
export function nullInfoLogger(): Logger {
  const sink = new Writable({ write: (_chunk, _enc, cb) => cb() });
  return pino({ level: 'info', base: { pid: process.pid } }, sink);
}

export const benchRequest: WireRequest = { model: MODEL, messages: [{ role: 'user', content: 'Hello there, how fast is this router?' }], max_tokens: MAX_TOKENS, stream: false };

export interface MicroWorld {
  config: RouterConfig;
  deps: RouterDeps;
  /** Registered workers, w0..w(n-1). */
  workers: WorkerInfo[];
  /** A context as the assembler hands it to the attempt part: attempt begun, candidates set. */
  ctx(options?: { log?: Logger; sessionId?: string; candidates?: WorkerInfo[] }): RouteContext;
}

/** Real deps with `workerCount` workers online (heartbeats applied), as the controller holds them. */
export function microWorld(workerCount = 1): MicroWorld {
  const config = loadConfig({ env: {}, overrides: { 'log.level': 'silent' } });
  const log = silentLogger();
  const clock = systemClock;
  const registry = new WorkerRegistry({ clock, offlineAfterMs: 60_000, log });
  for (let i = 0; i < workerCount; i++) {
    registry.onHeartbeat({ type: 'heartbeat', version: 1, id: `w${i}`, models: [MODEL], engine: 'synthetic', max_concurrent: 1024, in_flight: 0, state: 'ready', interval_ms: 1000, instance: `w${i}-instance` });
  }
  const workers = registry.forModel(MODEL);
  const breakers = new BreakerBook({ ...config.cluster.requestRouting.circuitBreaker, clock });
  // NATS is only used by dispatch, which is not measured here; a cast keeps this file building
  // when RouterDeps grows a field the micro-benchmarks do not need.
  const deps = {
    nc: undefined,
    mux: undefined,
    subjects: makeSubjects(),
    registry,
    sessions: new SessionRegistry({ ...config.cluster.requestRouting.session, clock }),
    breakers,
    budget: new RetryBudget(config.cluster.requestRouting.retry.budget),
    metrics: new RouterMetrics(),
    clock,
    log,
    random: Math.random,
    events: new Listeners<RouterEvent>(),
  } as unknown as RouterDeps;
  const neverAborted = new AbortController().signal;
  return {
    config,
    deps,
    workers,
    ctx(options = {}) {
      const ctx = createContext({
        requestId: 'req-bench',
        request: benchRequest,
        log: options.log ?? log,
        clock,
        signal: neverAborted,
        deadline: clock.now() + 30_000,
        sessionId: options.sessionId,
      });
      ctx.attempt = newAttempt(1, clock.now(), new AbortController());
      ctx.candidates = options.candidates ?? workers;
      ctx.worker = workers[0];
      return ctx;
    },
  };
}

/** A middleware that does nothing but call next: the baseline of every middleware cost. */
export const passThrough: Middleware = async function passThrough(_ctx, next) {
  await next();
};

export const resolvedNext = (): Promise<void> => Promise.resolve();
