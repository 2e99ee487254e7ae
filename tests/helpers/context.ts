import { createContext, newAttempt, type RouteContext, type StreamSink } from '../../src/context';
import type { WorkerInfo } from '../../src/types';
import { silentLogger } from '../../src/logger';
import type { WireRequest } from '../../src/protocol';
import { FakeClock } from './fake-clock';

export const MODEL = 'mlx-community/Llama-3.2-3B-Instruct-4bit';

/** A worker record as the registry would hold it. */
export function makeWorker(id: string, patch: Partial<WorkerInfo> = {}): WorkerInfo {
  return {
    id,
    models: [MODEL],
    engine: 'synthetic',
    maxConcurrent: 8,
    reportedInFlight: 0,
    outstanding: 0,
    foreignInFlight: 0,
    latencyMs: 0,
    latencyAt: 0,
    state: 'ready',
    lastSeen: 0,
    gone: false,
    continuation: true,
    host: '',
    pid: 0,
    drainingModels: [],
    progressMs: 250,
    heartbeatMs: 100,
    lastActivityAt: 0,
    version: 2,
    capabilities: { [MODEL]: ['chat', 'completions', 'tools'] },
    ...patch,
  };
}

export interface MakeCtxOptions {
  request?: Partial<WireRequest>;
  clock?: FakeClock;
  deadlineMs?: number;
  signal?: AbortSignal;
  sessionId?: string;
  candidates?: WorkerInfo[];
  sink?: StreamSink;
}

/** A RouteContext for one middleware under test, with a fresh attempt already begun. */
export function makeCtx(options: MakeCtxOptions = {}): RouteContext {
  const clock = options.clock ?? new FakeClock();
  const request: WireRequest = { model: MODEL, messages: [{ role: 'user', content: 'hi' }], stream: false, ...options.request };
  const ctx = createContext({
    requestId: 'req-test',
    request,
    log: silentLogger(),
    clock,
    signal: options.signal ?? new AbortController().signal,
    deadline: clock.now() + (options.deadlineMs ?? 30_000),
    sessionId: options.sessionId,
    sink: options.sink,
  });
  ctx.attempt = newAttempt(1, clock.now(), new AbortController());
  ctx.candidates = options.candidates ?? [];
  return ctx;
}
