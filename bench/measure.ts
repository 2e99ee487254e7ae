/**
 * The run's shared state (options, client, figures) and one measured HTTP phase: a load run with
 * the CPU time every involved process spent on it, per 1,000 answered requests.
 */
import type { ChildProcess } from 'node:child_process';
import type { ChildHandle, Proc } from './lab';
import { cpuMs } from './lab';
import { createClient, runLoad, type Client, type LoadOptions, type LoadResult, type Target } from './load';
import type { Figure } from './report';

export interface RunOptions {
  smoke: boolean;
  /** Scenarios to run (default all). */
  only: Set<number>;
}

export class BenchRun {
  readonly figures: Figure[] = [];
  /** Everything measured, for the JSON record. */
  readonly raw: Record<string, unknown> = {};
  readonly client: Client = createClient();

  constructor(readonly options: RunOptions) {}

  /** A duration or count: the full value, or the smoke one. */
  pick<T>(full: T, smoke: T): T {
    return this.options.smoke ? smoke : full;
  }

  add(f: Figure): void {
    this.figures.push(f);
  }
}

/** Processes whose CPU a phase reads. */
export interface Watch {
  /** The HTTP server under test (floor or router child): read over IPC, to the microsecond. */
  server: ChildHandle;
  /** Behind it: responder or worker processes. */
  backend: Proc[];
  nats: ChildProcess;
}

/** CPU ms per 1,000 answered requests, by role. */
export interface CpuPer1000 {
  server: number;
  backend?: number;
  nats?: number;
  /** This process: the load generator. */
  loadgen: number;
}

export interface Phase {
  load: LoadResult;
  cpu: CpuPer1000;
}

async function serverCpu(h: ChildHandle): Promise<number> {
  const s = await h.stats();
  return (s.cpuUserUs + s.cpuSystemUs) / 1000;
}

function sum(values: Array<number | undefined>): number | undefined {
  return values.some((v) => v === undefined) ? undefined : values.reduce<number>((a, v) => a + (v ?? 0), 0);
}

function selfCpu(): number {
  const c = process.cpuUsage();
  return (c.user + c.system) / 1000;
}

/** Runs one load phase and reads everyone's CPU time around it. */
export async function phase(run: BenchRun, target: Target, load: LoadOptions, watch: Watch): Promise<Phase> {
  const before = {
    server: await serverCpu(watch.server),
    backend: sum(watch.backend.map((p) => cpuMs(p.process.pid))),
    nats: cpuMs(watch.nats.pid),
    self: selfCpu(),
  };
  const result = await runLoad(run.client, target, load);
  const after = {
    self: selfCpu(),
    server: await serverCpu(watch.server),
    backend: sum(watch.backend.map((p) => cpuMs(p.process.pid))),
    nats: cpuMs(watch.nats.pid),
  };
  const per = (a: number | undefined, b: number | undefined): number | undefined =>
    a === undefined || b === undefined || result.requests === 0 ? undefined : ((a - b) / result.requests) * 1000;
  return {
    load: result,
    cpu: {
      server: per(after.server, before.server) ?? Number.NaN,
      backend: per(after.backend, before.backend),
      nats: per(after.nats, before.nats),
      loadgen: per(after.self, before.self) ?? Number.NaN,
    },
  };
}

/** Throws when a phase had errors: a benchmark of failing requests measures nothing. */
export function requireClean(label: string, p: Phase | LoadResult): void {
  const r = 'load' in p ? p.load : p;
  if (r.errors > 0) throw new Error(`${label}: ${r.errors} of ${r.errors + r.requests} requests failed (${r.errorSamples.join('; ')})`);
  if (r.requests === 0) throw new Error(`${label}: no request completed`);
}
