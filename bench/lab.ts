/**
 * A lab: one nats-server on a free port and every process a scenario starts on it (children of
 * bench/child.ts, worker processes of the built CLI). `stop()` ends them all; `stopAllLabs()`
 * does it for every lab still open (SIGINT, a crash). CPU time of any process is read from
 * /proc (Linux) or `ps` (macOS), so workers and nats-server can be measured without changes.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { resolve } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { startNatsServer, type NatsServerHandle } from '../src/nats-server';
import type { ChildSpec, ChildStats } from './child';
import { MODEL } from './payload';
import { sleep } from './stats';

export const CLI = resolve(__dirname, '../src/cli.js');
const CHILD = resolve(__dirname, 'child.js');

export interface Proc {
  name: string;
  process: ChildProcess;
  exited: Promise<void>;
  /** Last output (stdout + stderr), for error messages. */
  output(): string;
}

export interface ChildHandle extends Proc {
  url: string;
  /** Memory and CPU figures, after a full GC when `gc`; `snapshot` also writes a heap snapshot there. */
  stats(gc?: boolean, snapshot?: string): Promise<ChildStats>;
}

export interface WorkerSpec {
  id: string;
  ttftMs?: number;
  tokenMs?: number;
  failRate?: number;
  /** Default 1024: the benchmark measures routing, not the worker's admission limit. */
  maxConcurrent?: number;
  heartbeatMs?: number;
  /** --prompt-cache-size (default: the config's, 10). */
  promptCacheSize?: number;
  /** --prefill-us-per-token (default 0). */
  prefillUsPerToken?: number;
}

const labs = new Set<Lab>();

/** Extra node flags for bench children (floor, responder, router), e.g. `--cpu-prof`; set by `--profile`. */
export const childNodeFlags: string[] = [];

function track(name: string, child: ChildProcess): Proc {
  let out = '';
  const collect = (d: Buffer): void => {
    out = (out + d.toString()).slice(-8000);
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  const exited = new Promise<void>((r) => {
    if (child.exitCode !== null || child.signalCode !== null) r();
    else child.once('exit', () => r());
  });
  return { name, process: child, exited, output: () => out };
}

function alive(p: Proc): boolean {
  return p.process.exitCode === null && p.process.signalCode === null;
}

/** Ends a process: `first` signal, SIGKILL after `graceMs`. Resolves once it has exited. */
async function end(p: Proc, first: NodeJS.Signals, graceMs: number): Promise<void> {
  if (alive(p)) {
    p.process.kill('SIGCONT');
    p.process.kill(first);
    const timer = setTimeout(() => alive(p) && p.process.kill('SIGKILL'), graceMs);
    await p.exited;
    clearTimeout(timer);
  }
  p.process.stdout?.destroy();
  p.process.stderr?.destroy();
}

let clockTicks: number | undefined;
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
    clockTicks = Number(r.stdout?.trim()) || 100;
  }
  return clockTicks;
}

/** CPU time (user + system, ms) a process has used so far; undefined when it cannot be read. */
export function cpuMs(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / ticksPerSecond();
  } catch {
    // Not Linux: `ps` prints [[dd-]hh:]mm:ss[.cc], to 10 ms on macOS.
    const r = spawnSync('ps', ['-o', 'time=', '-p', String(pid)], { encoding: 'utf8' });
    const text = r.stdout?.trim();
    if (!text) return undefined;
    const [days, rest] = text.includes('-') ? text.split('-') : ['0', text];
    const parts = rest.split(':').map(Number);
    const seconds = parts.reduce((acc, v) => acc * 60 + v, 0);
    return Number.isFinite(seconds) ? (Number(days) * 86400 + seconds) * 1000 : undefined;
  }
}

export class Lab {
  private readonly procs: Proc[] = [];
  private stopped = false;

  private constructor(
    readonly nats: NatsServerHandle,
    /** The benchmark's own connection (ghost heartbeats, spying). */
    readonly nc: NatsConnection,
  ) {}

  static async start(): Promise<Lab> {
    const nats = await startNatsServer();
    let nc: NatsConnection;
    try {
      nc = await connect({ servers: nats.url });
    } catch (err) {
      await nats.stop();
      throw err;
    }
    const lab = new Lab(nats, nc);
    labs.add(lab);
    return lab;
  }

  get natsUrl(): string {
    return this.nats.url;
  }

  /** Starts a bench child (floor, responder, router) and waits until it is ready. */
  async child(spec: Omit<ChildSpec, 'natsUrl'>, name: string = spec.role): Promise<ChildHandle> {
    const child = spawn(process.execPath, ['--expose-gc', ...childNodeFlags, CHILD, JSON.stringify({ ...spec, natsUrl: this.natsUrl })], {
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    const proc = track(name, child);
    this.procs.push(proc);
    let nextId = 0;
    const waiting = new Map<number, (s: ChildStats) => void>();
    const ready = new Promise<string>((resolveReady, reject) => {
      child.on('message', (m: { type: string; url?: string; id?: number; stats?: ChildStats; message?: string }) => {
        if (m.type === 'ready') resolveReady(m.url ?? '');
        else if (m.type === 'failed') reject(new Error(`${name} failed to start: ${m.message}`));
        else if (m.type === 'stats' && m.id !== undefined) {
          waiting.get(m.id)?.(m.stats as ChildStats);
          waiting.delete(m.id);
        }
      });
      void proc.exited.then(() => reject(new Error(`${name} exited before it was ready: ${proc.output()}`)));
    });
    const url = await ready;
    return {
      ...proc,
      url,
      stats(gc = false, snapshot?: string) {
        return new Promise<ChildStats>((res, rej) => {
          if (!child.connected) return rej(new Error(`${name} is not running`));
          const id = nextId++;
          waiting.set(id, res);
          child.send({ type: 'stats', id, gc, snapshot });
        });
      },
    };
  }

  /** Spawns a worker process of the built CLI (synthetic engine); see `waitOnline` to wait for it. */
  worker(spec: WorkerSpec): Proc {
    const args = [
      CLI, 'worker', '--nats', this.natsUrl, '--id', spec.id, '--model', MODEL,
      '--ttft-ms', String(spec.ttftMs ?? 0), '--token-ms', String(spec.tokenMs ?? 0),
      '--max-concurrent', String(spec.maxConcurrent ?? 1024), '--heartbeat-ms', String(spec.heartbeatMs ?? 1000),
    ];
    if (spec.failRate !== undefined) args.push('--fail-rate', String(spec.failRate));
    if (spec.promptCacheSize !== undefined) args.push('--prompt-cache-size', String(spec.promptCacheSize));
    if (spec.prefillUsPerToken !== undefined) args.push('--prefill-us-per-token', String(spec.prefillUsPerToken));
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('MLX_ROUTER_')) env[k] = v;
    env.MLX_ROUTER_LOG_LEVEL = 'error';
    // Should this benchmark die without cleaning up, a worker whose NATS is gone exits on its own.
    env.MLX_ROUTER_NATS_RECONNECT_MAX_ATTEMPTS = '5';
    // A temporary cwd, so no ./cluster.yaml of the caller changes the worker.
    const proc = track(`worker ${spec.id}`, spawn(process.execPath, args, { cwd: tmpdir(), env, stdio: ['ignore', 'pipe', 'pipe'] }));
    this.procs.push(proc);
    return proc;
  }

  /** Waits until `router` sees at least `count` workers online. */
  async waitOnline(router: ChildHandle, count: number, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = await router.stats();
      if ((s.workersOnline ?? 0) >= count) return;
      const dead = this.procs.find((p) => p.name.startsWith('worker') && !alive(p));
      if (dead) throw new Error(`${dead.name} exited: ${dead.output()}`);
      if (Date.now() > deadline) throw new Error(`only ${s.workersOnline} of ${count} workers came online within ${timeoutMs} ms`);
      await sleep(25);
    }
  }

  /** Stops every child, worker and the nats-server; idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    labs.delete(this);
    await Promise.all(
      this.procs.map((p) => {
        if (p.process.connected) {
          p.process.send({ type: 'stop' });
          const timer = setTimeout(() => void end(p, 'SIGTERM', 2000), 3000);
          return p.exited.then(() => clearTimeout(timer)).then(() => end(p, 'SIGTERM', 0));
        }
        return end(p, 'SIGTERM', 2000);
      }),
    );
    await this.nc.close().catch(() => undefined);
    await this.nats.stop();
  }
}

/** Stops every lab still open (SIGINT, an error). */
export async function stopAllLabs(): Promise<void> {
  await Promise.all([...labs].map((l) => l.stop()));
}
