/**
 * Entry of every process the benchmark spawns besides nats-server and workers, one role per
 * process so each one's CPU and memory can be read on its own (bench/servers/: floor, fastify
 * floor, instant responder, router). Each answers `{type: 'stats', gc}` on its IPC channel with
 * its CPU time and memory (after a full GC when asked: it runs with --expose-gc), and exits on
 * `{type: 'stop'}`, SIGINT, SIGTERM, or when the benchmark process goes away.
 */
import { writeHeapSnapshot } from 'node:v8';
import { startFastifyFloor } from './servers/fastify-floor';
import { startFloor } from './servers/floor';
import { startResponder } from './servers/responder';
import { startRouter } from './servers/router';
import type { Running } from './servers/running';

export type ChildRole = 'floor' | 'fastify' | 'responder' | 'router';

export interface ChildSpec {
  role: ChildRole;
  natsUrl: string;
  /** Router only: config overrides by dotted key. */
  overrides?: Record<string, unknown>;
}

/** What a child reports on `stats`. */
export interface ChildStats {
  cpuUserUs: number;
  cpuSystemUs: number;
  heapUsed: number;
  rss: number;
  external: number;
  arrayBuffers: number;
  /** Reply handlers waiting (leak detector). */
  pendingReplies?: number;
  /** Router: workers online as its registry sees them. */
  workersOnline?: number;
  /** Router: online workers with nothing in flight (its own attempts and what their heartbeats report). */
  workersIdle?: number;
}

function start(spec: ChildSpec): Promise<Running> {
  switch (spec.role) {
    case 'floor':
      return startFloor(spec.natsUrl);
    case 'fastify':
      return startFastifyFloor(spec.natsUrl);
    case 'responder':
      return startResponder(spec.natsUrl);
    default:
      return startRouter(spec.natsUrl, spec.overrides ?? {});
  }
}

function collect(running: Running, gc: boolean): ChildStats {
  const force = (globalThis as { gc?: () => void }).gc;
  if (gc && force) {
    // Twice: the first pass runs finalizers that free more on the second.
    force();
    force();
  }
  const cpu = process.cpuUsage();
  const mem = process.memoryUsage();
  return {
    cpuUserUs: cpu.user,
    cpuSystemUs: cpu.system,
    heapUsed: mem.heapUsed,
    rss: mem.rss,
    external: mem.external,
    arrayBuffers: mem.arrayBuffers,
    ...running.stats?.(),
  };
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '{}') as ChildSpec;
  const send = (m: unknown): void => {
    if (process.connected) process.send?.(m);
  };
  let running: Running;
  try {
    running = await start(spec);
  } catch (err) {
    send({ type: 'failed', message: (err as Error).stack ?? String(err) });
    process.exitCode = 1;
    process.disconnect?.();
    return;
  }
  let stopping = false;
  const stop = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    await running.stop().catch(() => undefined);
    process.disconnect?.();
    // Nothing should be left, but a stuck socket must not keep a benchmark child alive.
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('message', (m: { type: string; id?: number; gc?: boolean; snapshot?: string }) => {
    if (m.type === 'stats') {
      const stats = collect(running, m.gc === true);
      // A heap snapshot taken right after the figures (for finding what a figure is made of).
      if (m.snapshot) writeHeapSnapshot(m.snapshot);
      send({ type: 'stats', id: m.id, stats });
    }
    else if (m.type === 'stop') void stop();
  });
  process.on('disconnect', () => void stop());
  process.on('SIGINT', () => void stop());
  process.on('SIGTERM', () => void stop());
  send({ type: 'ready', url: running.url });
}

void main();
