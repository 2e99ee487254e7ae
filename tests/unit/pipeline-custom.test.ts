/**
 * The assembler loads a custom middleware from a module path in cluster.pipeline (the example in
 * docs/examples/custom-middleware.js) and runs it where the list puts it; bad lists fail at
 * start-up with a ConfigError naming the entry. NATS is replaced by an in-memory bus that answers
 * each inference request after a per-worker delay on the fake clock; everything else is real.
 */
import { headers as natsHeaders, type MsgHdrs, type NatsConnection } from '@nats-io/transport-node';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { ConfigError, loadConfig } from '../../src/config';
import { createContext, type RouteContext } from '../../src/context';
import { BreakerBook } from '../../src/controller/breakers';
import type { ReplyMux } from '../../src/controller/dispatch';
import { RouterMetrics } from '../../src/controller/metrics';
import { WorkerRegistry } from '../../src/controller/registry';
import { RetryBudget } from '../../src/controller/retry-budget';
import { SessionRegistry } from '../../src/controller/sessions';
import { silentLogger } from '../../src/logger';
import { Listeners } from '../../src/listeners';
import type { RouterEvent } from '../../src/attempt';
import { defineMiddleware } from '../../src/define';
import { assemblePipeline, type RouterDeps } from '../../src/pipeline';
import { encode, HDR_TOKEN, makeSubjects, PROTOCOL_VERSION, type WireReply, type WireRequest } from '../../src/protocol';
import { InstantClock } from '../helpers/fake-clock';

const ROOT = resolve(__dirname, '../..');
const EXAMPLE = './docs/examples/custom-middleware.js';
const MODEL = 'mlx-community/Llama-3.2-3B-Instruct-4bit';

interface Timing {
  attempt: number;
  worker: string | null;
  ok: boolean;
  ms: number;
}

/** How each worker answers: after `delayMs` on the clock, with `reply`. */
type Script = Record<string, { delayMs: number; reply: WireReply }>;

const RESULT: WireReply = {
  type: 'result',
  text: 'Hello there',
  finish_reason: 'stop',
  usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 },
};
const FAILURE: WireReply = { type: 'error', code: 'WORKER_ERROR', outcome: 'worker_failure', message: 'engine failed' };

function makeDeps(script: Script): { deps: RouterDeps; clock: InstantClock; published: string[] } {
  const clock = new InstantClock();
  const log = silentLogger();
  const subjects = makeSubjects();
  const handlers = new Map<string, (msg: { subject: string; data: Uint8Array; headers?: MsgHdrs }) => void>();
  const published: string[] = [];
  let next = 0;
  const mux = {
    get size() {
      return handlers.size;
    },
    register(handler: (msg: { subject: string; data: Uint8Array; headers?: MsgHdrs }) => void) {
      const subject = `_INBOX.test.${next++}`;
      handlers.set(subject, handler);
      return { subject, close: () => handlers.delete(subject) };
    },
    close: () => handlers.clear(),
  };
  const nc = {
    isClosed: () => false,
    publish(subject: string, _data: Uint8Array, opts?: { reply?: string; headers?: MsgHdrs }) {
      published.push(subject);
      const id = Object.keys(script).find((w) => subject === subjects.infer(w));
      if (!id || !opts?.reply) return;
      const reply = opts.reply;
      // Like a worker: the attempt's token echoed on the reply.
      const h = natsHeaders();
      h.set(HDR_TOKEN, opts.headers?.get(HDR_TOKEN) ?? '');
      // Answer asynchronously, as NATS would, after the worker's delay on the fake clock.
      setImmediate(() => {
        void clock.advance(script[id].delayMs).then(() => handlers.get(reply)?.({ subject: reply, data: encode(script[id].reply), headers: h }));
      });
    },
  };
  const registry = new WorkerRegistry({ clock, offlineAfterMs: 60_000, log });
  for (const id of Object.keys(script)) {
    registry.onHeartbeat({
      type: 'heartbeat',
      version: PROTOCOL_VERSION,
      id,
      models: [MODEL],
      engine: 'synthetic',
      max_concurrent: 4,
      in_flight: 0,
      state: 'ready',
      interval_ms: 1000,
    });
  }
  const config = loadConfig({ env: {} });
  const breakers = new BreakerBook({ ...config.cluster.requestRouting.circuitBreaker, clock });
  const deps: RouterDeps = {
    nc: nc as unknown as NatsConnection,
    mux: mux as unknown as ReplyMux,
    subjects,
    registry,
    sessions: new SessionRegistry({ ...config.cluster.requestRouting.session, clock }),
    breakers,
    budget: new RetryBudget(config.cluster.requestRouting.retry.budget),
    metrics: new RouterMetrics(),
    clock,
    log,
    random: () => 0,
    events: new Listeners<RouterEvent>(),
  };
  return { deps, clock, published };
}

function configWith(pipeline: string[]) {
  return loadConfig({ env: {}, overrides: { 'cluster.pipeline': pipeline } });
}

function makeRequestCtx(clock: InstantClock): RouteContext {
  const request: WireRequest = { model: MODEL, messages: [{ role: 'user', content: 'hi' }], stream: false };
  return createContext({
    requestId: 'req-custom',
    request,
    log: silentLogger(),
    clock,
    signal: new AbortController().signal,
    deadline: clock.now() + 30_000,
  });
}

const timings = (ctx: RouteContext): Timing[] => ctx.state.timings as Timing[];

test('pipeline custom - a module path after retry is loaded and runs once per attempt', async () => {
  const { deps, clock } = makeDeps({ w1: { delayMs: 30, reply: FAILURE }, w2: { delayMs: 25, reply: RESULT } });
  const pipeline = assemblePipeline(configWith(['metrics', 'session', 'retry', 'breaker', 'select', EXAMPLE, 'timeout', 'health']), deps, ROOT);
  expect(pipeline.names).toContain(EXAMPLE);
  const ctx = makeRequestCtx(clock);

  await pipeline.run(ctx);

  expect(ctx.result?.text).toBe('Hello there');
  expect(timings(ctx)).toEqual([
    { attempt: 1, worker: 'w1', ok: false, ms: 30 },
    { attempt: 2, worker: 'w2', ok: true, ms: 25 },
  ]);
  expect(ctx.metrics.retryCount).toBe(1);
});

test('pipeline custom - the same module before retry runs once for the whole request', async () => {
  const { deps, clock } = makeDeps({ w1: { delayMs: 30, reply: FAILURE }, w2: { delayMs: 25, reply: RESULT } });
  const pipeline = assemblePipeline(configWith(['metrics', EXAMPLE, 'retry', 'select', 'timeout', 'health']), deps, ROOT);
  const ctx = makeRequestCtx(clock);

  await pipeline.run(ctx);

  expect(ctx.result?.text).toBe('Hello there');
  expect(timings(ctx)).toEqual([{ attempt: 2, worker: 'w2', ok: true, ms: 55 }]);
});

test('pipeline custom - an absolute module path loads whatever baseDir is', async () => {
  const { deps, clock, published } = makeDeps({ w1: { delayMs: 10, reply: RESULT } });
  const pipeline = assemblePipeline(configWith([resolve(ROOT, EXAMPLE), 'select']), deps, '/nonexistent');
  const ctx = makeRequestCtx(clock);

  await pipeline.run(ctx);

  expect(timings(ctx)).toEqual([{ attempt: 1, worker: 'w1', ok: true, ms: 10 }]);
  expect(published).toEqual(['mlx.v1.worker.w1.infer']);
});

test('pipeline custom - a failing chain is recorded by the example and still fails', async () => {
  const { deps, clock } = makeDeps({ w1: { delayMs: 5, reply: FAILURE } });
  const pipeline = assemblePipeline(configWith([EXAMPLE, 'select']), deps, ROOT);
  const ctx = makeRequestCtx(clock);

  await expect(pipeline.run(ctx)).rejects.toMatchObject({ code: 'WORKER_ERROR' });
  expect(timings(ctx)).toEqual([{ attempt: 1, worker: 'w1', ok: false, ms: 5 }]);
});

test('pipeline custom - without breaker in the pipeline no worker is refused for its breaker', async () => {
  const { deps, clock, published } = makeDeps({ w1: { delayMs: 5, reply: RESULT } });
  for (let i = 0; i < 10; i++) deps.breakers.failure('w1');
  expect(deps.breakers.allows('w1')).toBe(false);
  const pipeline = assemblePipeline(configWith(['metrics', 'retry', 'select', 'timeout', 'health']), deps, ROOT);
  const ctx = makeRequestCtx(clock);
  await pipeline.run(ctx);
  expect(ctx.result?.text).toBe('Hello there');
  expect(published).toEqual(['mlx.v1.worker.w1.infer']);
  // With breaker listed, the same open breaker fails fast.
  const guarded = assemblePipeline(configWith(['retry', 'breaker', 'select', 'health']), deps, ROOT);
  await expect(guarded.run(makeRequestCtx(clock))).rejects.toMatchObject({ code: 'CIRCUIT_BREAKER_OPEN' });
  expect(published).toHaveLength(1);
});

test('pipeline custom - a boundary is declared, not found by name: a custom boundary gets the runner and runs attempts', async () => {
  // A "fallback" boundary: one attempt, then a second one on any failure, with no name matching.
  const fallback = defineMiddleware({
    name: 'fallback',
    boundary: true,
    defaults: { attempts: 2 },
    factory: (options, _deps, runAttempt) =>
      async function fallback(ctx) {
        for (let i = 1; ; i++) {
          try {
            return await runAttempt(ctx);
          } catch (e) {
            if (i >= options.attempts) throw e;
          }
        }
      },
  });
  const dir = mkdtempSync(join(tmpdir(), 'mlx-router-boundary-'));
  try {
    const file = join(dir, 'fallback.js');
    writeFileSync(file, 'module.exports = globalThis.__fallbackDefinition;');
    (globalThis as Record<string, unknown>).__fallbackDefinition = fallback;
    const { deps, clock } = makeDeps({ w1: { delayMs: 30, reply: FAILURE }, w2: { delayMs: 25, reply: RESULT } });
    const pipeline = assemblePipeline(configWith(['metrics', file, 'select', EXAMPLE]), deps, ROOT);
    const ctx = makeRequestCtx(clock);
    await pipeline.run(ctx);
    expect(ctx.result?.text).toBe('Hello there');
    expect(ctx.attempts.map((a) => [a.worker, a.outcome])).toEqual([
      ['w1', 'worker_failure'],
      ['w2', 'success'],
    ]);
    // The example after the boundary ran once per attempt.
    expect(timings(ctx).map((t) => t.attempt)).toEqual([1, 2]);
    // Two boundaries nest: the outer one (fallback) runs the inner one (retry, maxRetries 0 here:
    // one attempt each) once per attempt, and only the inner one gets the attempt runner.
    const nested = assemblePipeline(
      loadConfig({ env: {}, overrides: { 'cluster.pipeline': [file, 'retry', 'select'], 'cluster.requestRouting.retry.maxRetries': 0 } }),
      deps,
      ROOT,
    );
    const nestedCtx = makeRequestCtx(clock);
    await nested.run(nestedCtx);
    expect(nestedCtx.result?.text).toBe('Hello there');
    expect(nestedCtx.attempts.map((a) => [a.attempt, a.worker, a.outcome])).toEqual([
      [1, 'w1', 'worker_failure'],
      [2, 'w2', 'success'],
    ]);
  } finally {
    delete (globalThis as Record<string, unknown>).__fallbackDefinition;
    rmSync(dir, { recursive: true, force: true });
  }
});

describe('pipeline custom - bad lists fail at start-up naming the entry', () => {
  const { deps } = makeDeps({ w1: { delayMs: 0, reply: RESULT } });
  const assemble = (pipeline: string[]) => () => assemblePipeline(configWith(pipeline), deps, ROOT);

  test('an unknown name', () => {
    expect(assemble(['metrics', 'retyr', 'select'])).toThrow(ConfigError);
    expect(assemble(['metrics', 'retyr', 'select'])).toThrow(/unknown middleware 'retyr'/);
  });

  test('a name listed twice', () => {
    expect(assemble(['select', 'timeout', 'select'])).toThrow(ConfigError);
    expect(assemble(['select', 'timeout', 'select'])).toThrow(/'select' is listed twice/);
  });

  test('dispatch, which always ends the chain', () => {
    expect(assemble(['select', 'dispatch'])).toThrow(ConfigError);
    expect(assemble(['select', 'dispatch'])).toThrow(/'dispatch' always ends the chain/);
  });

  test('a module path that does not exist', () => {
    expect(assemble(['./docs/examples/no-such-middleware.js', 'select'])).toThrow(ConfigError);
    expect(assemble(['./docs/examples/no-such-middleware.js', 'select'])).toThrow(/no-such-middleware\.js/);
  });
});
