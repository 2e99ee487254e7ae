/**
 * Integration harness: a real nats-server on a free port, real worker processes (the built CLI in
 * dist/), and an in-process controller. Everything started here is stopped by `stop()`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { connect, errors, type NatsConnection } from '@nats-io/transport-node';
import { loadConfig, type RouterConfig } from '../../src/config';
import { Controller } from '../../src/controller/controller';
import { createLogger, silentLogger } from '../../src/logger';
import { startNatsServer, type NatsServerHandle } from '../../src/nats-server';
import { makeSubjects } from '../../src/protocol';

export const MODEL = 'mlx-community/Llama-3.2-3B-Instruct-4bit';
/** How long a test waits for spawned workers to come online (within Jest's 60 s hook limit). */
export const STARTUP_MS = 25_000;
export const CLI = resolve(__dirname, '../../dist/src/cli.js');

export interface WorkerOptions {
  id: string;
  models?: string[];
  maxConcurrent?: number;
  ttftMs?: number;
  tokenMs?: number;
  failRate?: number;
  heartbeatMs?: number;
  /** --prompt-cache-size (default: the config's, 10). */
  promptCacheSize?: number;
  /** --prefill-us-per-token (default 0). */
  prefillUsPerToken?: number;
  /** The worker's log level (default warn); `debug` shows each cancel it honours. */
  logLevel?: string;
}

export interface WorkerProcess {
  id: string;
  process: ChildProcess;
  /** Output so far (stdout + stderr). */
  output(): string;
  /** Resolves with the exit code (or signal) once the process has ended. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(signal?: NodeJS.Signals): void;
}

/** Polls `check` until it returns truthy or `timeoutMs` passes (then throws with `what`). */
export async function waitFor<T>(check: () => T | Promise<T>, what: string, timeoutMs = 10_000, everyMs = 25): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export function spawnWorker(natsUrl: string, options: WorkerOptions): WorkerProcess {
  const args = [CLI, 'worker', '--nats', natsUrl, '--id', options.id, '--heartbeat-ms', String(options.heartbeatMs ?? 100)];
  for (const m of options.models ?? [MODEL]) args.push('--model', m);
  if (options.maxConcurrent !== undefined) args.push('--max-concurrent', String(options.maxConcurrent));
  args.push('--ttft-ms', String(options.ttftMs ?? 0), '--token-ms', String(options.tokenMs ?? 0));
  if (options.failRate !== undefined) args.push('--fail-rate', String(options.failRate));
  if (options.promptCacheSize !== undefined) args.push('--prompt-cache-size', String(options.promptCacheSize));
  if (options.prefillUsPerToken !== undefined) args.push('--prefill-us-per-token', String(options.prefillUsPerToken));
  return spawnCli(options.id, args, options.logLevel ? { MLX_ROUTER_LOG_LEVEL: options.logLevel } : {});
}

/** Runs the built CLI with `args` as a worker process whose output is kept for diagnostics. */
export function spawnCli(id: string, args: string[], env: Record<string, string> = {}): WorkerProcess {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MLX_ROUTER_LOG_LEVEL: 'warn', ...env } });
  let out = '';
  const collect = (d: Buffer): void => {
    if (out.length < 200_000) out += d.toString();
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => {
    child.once('exit', (code, signal) => res({ code, signal }));
  });
  return { id, process: child, output: () => out, exited, kill: (sig = 'SIGTERM') => void child.kill(sig) };
}

export interface ClusterOptions {
  workers?: WorkerOptions[];
  /** Config overrides by dotted key, applied over the defaults. */
  config?: Record<string, unknown>;
}

export interface Cluster {
  nats: NatsServerHandle;
  natsUrl: string;
  controller: Controller;
  url: string;
  config: RouterConfig;
  workers: Map<string, WorkerProcess>;
  /** A connection for the test itself (e.g. to spy on subjects). */
  nc: NatsConnection;
  addWorker(options: WorkerOptions): Promise<WorkerProcess>;
  /** SIGTERM (or `signal`), then wait for the exit; the registry learns by bye or silence. */
  stopWorker(id: string, signal?: NodeJS.Signals): Promise<void>;
  waitForWorkers(ids: string[]): Promise<void>;
  /**
   * Kills nats-server (SIGKILL), keeps it down `downMs`, and starts a new one on the same port;
   * resolves with the moment (performance.now()) the new server reported ready.
   */
  restartNats(downMs: number): Promise<number>;
  stop(): Promise<void>;
}

/** Test defaults: fast heartbeats and offline detection, short attempt limits. */
export function testConfig(overrides: Record<string, unknown> = {}): RouterConfig {
  return loadConfig({
    env: {},
    overrides: {
      'controller.port': 0,
      'log.level': 'silent',
      'worker.heartbeatIntervalMs': 100,
      'discovery.offlineAfterMs': 600,
      'cluster.requestRouting.attemptTimeoutMs': 2000,
      'cluster.requestRouting.firstChunkTimeoutMs': 2000,
      'cluster.requestRouting.retry.retryDelayMs': 10,
      'cluster.requestRouting.retry.maxRetryDelayMs': 50,
      ...overrides,
    },
  });
}

export async function startCluster(options: ClusterOptions = {}): Promise<Cluster> {
  let nats = await startNatsServer();
  const workers = new Map<string, WorkerProcess>();
  const config = testConfig({ 'nats.servers': [nats.url], ...options.config });
  let controller: Controller | undefined;
  let nc: NatsConnection | undefined;
  try {
    // MLX_TEST_LOG=debug (or any pino level) shows the in-process controller's log when debugging a test.
    controller = await Controller.start({ config, log: process.env.MLX_TEST_LOG ? createLogger('controller', process.env.MLX_TEST_LOG) : silentLogger() });
    nc = await connect({ servers: nats.url });
    const ctl = controller;
    const cluster: Cluster = {
      nats,
      natsUrl: nats.url,
      controller: ctl,
      url: ctl.url,
      config,
      workers,
      nc,
      async addWorker(w) {
        const proc = spawnWorker(nats.url, w);
        workers.set(w.id, proc);
        await cluster.waitForWorkers([w.id]);
        return proc;
      },
      async stopWorker(id, signal = 'SIGTERM') {
        const w = workers.get(id);
        if (!w) return;
        w.kill(signal);
        await w.exited;
        workers.delete(id);
      },
      async waitForWorkers(ids) {
        // Each seen online at least once: on starved cores one may miss a heartbeat window while
        // another starts, and all of them online at one instant may take long to happen.
        const seen = new Set<string>();
        await waitFor(
          () => {
            for (const w of ctl.deps.registry.online()) seen.add(w.id);
            return ids.every((id) => seen.has(id));
          },
          `workers ${ids.join(', ')} online`,
          // Starting node processes on a loaded two-core machine can take many seconds.
          STARTUP_MS,
        );
      },
      async restartNats(downMs) {
        const port = nats.port;
        nats.process.kill('SIGKILL');
        await nats.stop(0);
        await new Promise((r) => setTimeout(r, downMs));
        // The same port: every client reconnects to the URL it was given.
        nats = await startNatsServer({ port });
        cluster.nats = nats;
        return performance.now();
      },
      async stop() {
        await ctl.stop();
        await Promise.all(
          [...workers.values()].map(async (w) => {
            if (w.process.exitCode === null && w.process.signalCode === null) {
              w.kill('SIGCONT');
              w.kill('SIGKILL');
            }
            await w.exited;
          }),
        );
        await nc?.close();
        await nats.stop();
      },
    };
    for (const w of options.workers ?? []) workers.set(w.id, spawnWorker(nats.url, w));
    await cluster.waitForWorkers((options.workers ?? []).map((w) => w.id));
    return cluster;
  } catch (err) {
    await controller?.stop();
    await nc?.close();
    for (const w of workers.values()) w.kill('SIGKILL');
    await Promise.all([...workers.values()].map((w) => w.exited));
    await nats.stop();
    throw err;
  }
}

export interface ChatOptions {
  stream?: boolean;
  maxTokens?: number;
  content?: string;
  headers?: Record<string, string>;
  body?: Record<string, unknown>;
  signal?: AbortSignal;
}

export function chatBody(options: ChatOptions = {}): Record<string, unknown> {
  return {
    model: MODEL,
    messages: [{ role: 'user', content: options.content ?? 'Hello there' }],
    max_tokens: options.maxTokens ?? 16,
    ...(options.stream ? { stream: true } : {}),
    ...options.body,
  };
}

export async function chat(url: string, options: ChatOptions = {}): Promise<{ status: number; headers: Headers; json: any; text: string }> {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...options.headers },
    body: JSON.stringify(chatBody(options)),
    signal: options.signal,
  });
  const text = await res.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, json, text };
}

/** Parses an SSE body into its events: `{event, data}` with data as text. */
export function parseSse(text: string): Array<{ event: string; data: string }> {
  return text
    .split('\n\n')
    .filter((block) => block.trim().length > 0)
    .map((block) => {
      let event = 'message';
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event: ')) event = line.slice(7);
        else if (line.startsWith('data: ')) data.push(line.slice(6));
      }
      return { event, data: data.join('\n') };
    });
}

/** The text content of a streamed answer. */
export function streamedText(text: string): string {
  return parseSse(text)
    .filter((e) => e.event === 'message' && e.data !== '[DONE]')
    .map((e) => JSON.parse(e.data).choices?.[0]?.delta?.content ?? '')
    .join('');
}

/** The controller's `GET /metrics` body (Prometheus text format). */
export async function metricsText(url: string): Promise<string> {
  const res = await fetch(`${url}/metrics`);
  if (res.status !== 200) throw new Error(`GET /metrics answered ${res.status}`);
  return res.text();
}

function sampleLabels(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of text.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) out[m[1]] = m[2];
  return out;
}

/**
 * The value of the sample `name` whose labels equal `labels` exactly (order free), or undefined
 * when there is no such sample. Histogram/summary suffixes are part of `name` (`..._count`).
 */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const want = Object.entries(labels);
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = sampleLabels(m[2] ?? '');
    if (Object.keys(have).length !== want.length || want.some(([k, v]) => have[k] !== v)) continue;
    return Number(m[3]);
  }
  return undefined;
}

/** Sends `signal` to a running worker (e.g. SIGSTOP to hang it, SIGCONT to wake it). */
export function signalWorker(cluster: Cluster, id: string, signal: NodeJS.Signals): void {
  const w = cluster.workers.get(id);
  if (!w) throw new Error(`no worker ${id} in this cluster`);
  w.kill(signal);
}

/**
 * Waits until the NATS server itself no longer routes to worker `id` (its connection is gone):
 * a request on the worker's cancel subject (which a live worker ignores) gets "no responders".
 * Lets a test start right after a SIGKILL without racing the server's own cleanup.
 */
export async function waitForNatsGone(cluster: Cluster, id: string, timeoutMs = 5000): Promise<void> {
  const subject = makeSubjects(cluster.config.nats.subjectPrefix).cancel(id);
  await waitFor(
    async () => {
      try {
        await cluster.nc.request(subject, new Uint8Array(0), { timeout: 100 });
        return false;
      } catch (err) {
        return err instanceof errors.RequestError && err.isNoResponders();
      }
    },
    `NATS to forget worker ${id}`,
    timeoutMs,
  );
}

export interface SseEvent {
  event: string;
  data: string;
}

/**
 * A streamed chat request read event by event as the bytes arrive; `onEvent` runs for each SSE
 * event (in order) so a test can act mid-stream. Resolves with everything once the body ends.
 */
export async function chatStream(
  url: string,
  options: ChatOptions = {},
  onEvent: (event: SseEvent, index: number) => void | Promise<void> = () => undefined,
): Promise<{ status: number; headers: Headers; events: SseEvent[]; text: string }> {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...options.headers },
    body: JSON.stringify(chatBody({ ...options, stream: true })),
    signal: options.signal,
  });
  const events: SseEvent[] = [];
  let text = '';
  let pending = '';
  const decoder = new TextDecoder();
  const reader = res.body?.getReader();
  for (;;) {
    const chunk = reader ? await reader.read() : { done: true, value: undefined };
    if (chunk.value) {
      const piece = decoder.decode(chunk.value, { stream: true });
      text += piece;
      pending += piece;
    }
    if (res.headers.get('content-type')?.startsWith('text/event-stream')) {
      let cut: number;
      while ((cut = pending.indexOf('\n\n')) >= 0) {
        const block = pending.slice(0, cut + 2);
        pending = pending.slice(cut + 2);
        for (const e of parseSse(block)) {
          events.push(e);
          await onEvent(e, events.length - 1);
        }
      }
    }
    if (chunk.done) break;
  }
  return { status: res.status, headers: res.headers, events, text };
}

/** A worker process fronting an OpenAI-compatible engine (`--engine openai`). */
export interface EngineWorkerOptions {
  id: string;
  /** --engine-url, with the /v1 path. */
  engineUrl: string;
  /** --model values; none: the worker advertises what the engine lists at GET /models. */
  models?: string[];
  heartbeatMs?: number;
  /** Extra MLX_ROUTER_* settings (e.g. MLX_ROUTER_WORKER_OPENAI_PROBE_INTERVAL_MS). */
  env?: Record<string, string>;
}

/** Spawns an `--engine openai` worker into `cluster` (stopped by `cluster.stop()`) and waits until it is online. */
export async function addEngineWorker(cluster: Cluster, options: EngineWorkerOptions): Promise<WorkerProcess> {
  const args = [CLI, 'worker', '--nats', cluster.natsUrl, '--id', options.id, '--heartbeat-ms', String(options.heartbeatMs ?? 100)];
  args.push('--engine', 'openai', '--engine-url', options.engineUrl);
  for (const m of options.models ?? []) args.push('--model', m);
  const proc = spawnCli(options.id, args, options.env);
  cluster.workers.set(options.id, proc);
  await waitFor(() => cluster.controller.deps.registry.online().some((w) => w.id === options.id), `engine worker ${options.id} online`, STARTUP_MS);
  return proc;
}

/**
 * Config for clusters whose tests never detect a worker's death by heartbeat silence (bye and
 * "no responders" are immediate): offline after 5 s of silence instead of the 600 ms test default,
 * because on a loaded 2-core machine a worker can be starved that long and dropped mid-request.
 */
export const STEADY: Record<string, unknown> = { 'discovery.offlineAfterMs': 5000 };

/**
 * `Promise.all` for a test's set-up: when one start fails, whatever did start is stopped (its
 * `stop()` or `close()`) before the failure is thrown, so no nats-server or worker outlives the test file.
 */
export async function startTogether<T extends readonly unknown[]>(starts: readonly [...{ [K in keyof T]: Promise<T[K]> }]): Promise<T> {
  const settled = await Promise.allSettled(starts);
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (!failed) return settled.map((s) => (s as PromiseFulfilledResult<unknown>).value) as unknown as T;
  await Promise.allSettled(
    settled.map(async (s) => {
      if (s.status !== 'fulfilled') return;
      const v = s.value as { stop?: () => Promise<unknown>; close?: () => Promise<unknown> };
      if (typeof v?.stop === 'function') await v.stop();
      else if (typeof v?.close === 'function') await v.close();
    }),
  );
  throw failed.reason;
}
