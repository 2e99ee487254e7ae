/**
 * `mlx-router up` as a terminal runs it, for the up tests: its own process group, its output kept,
 * Ctrl-C to the group, and process-table checks for what it leaves behind.
 */
import { spawn, spawnSync } from 'node:child_process';
import { CLI, waitFor } from './cluster';

export function childrenOf(pid: number): number[] {
  const out = spawnSync('ps', ['-eo', 'pid=,ppid='], { encoding: 'utf8' }).stdout;
  return out
    .trim()
    .split('\n')
    .map((l) => l.trim().split(/\s+/).map(Number))
    .filter(([, ppid]) => ppid === pid)
    .map(([p]) => p);
}

/** Running (a zombie whose parent is gone, waiting for init to reap it, has stopped). */
export function alive(pid: number): boolean {
  const stat = spawnSync('ps', ['-o', 'stat=', '-p', String(pid)], { encoding: 'utf8' }).stdout.trim();
  return stat !== '' && !stat.startsWith('Z');
}

/** `mlx-router up` in its own process group, as a terminal runs it, with its own nats-server (`--nats local`) unless `nats` names one. */
export function startUp(workers: number, extra: string[] = [], nats = 'local', env: Record<string, string> = {}) {
  const up = spawn(process.execPath, [CLI, 'up', '--nats', nats, '--port', '0', '--workers', String(workers), ...extra], {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, MLX_ROUTER_LOG_LEVEL: 'warn', ...env },
  });
  let out = '';
  up.stdout.on('data', (d: Buffer) => (out += d.toString()));
  up.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => up.once('exit', (code) => resolve(code)));
  return {
    up,
    exited,
    output: () => out,
    /** The URL from the "is up" line, once the cluster is ready. */
    async ready(): Promise<string> {
      const url = await waitFor(() => /mlx-router is up: (http:\/\/[0-9.:]+)/.exec(out)?.[1], 'the "is up" line', 20_000);
      await waitFor(async () => (await fetch(`${url}/ready`)).status === 200, 'ready', 10_000);
      return url;
    },
    /** Ctrl-C: the terminal sends SIGINT to the whole foreground process group. */
    ctrlC: () => process.kill(-up.pid!, 'SIGINT'),
    /** Kills the whole group: up, and anything it left behind when it exited or failed first. */
    async kill(): Promise<void> {
      try {
        process.kill(-up.pid!, 'SIGKILL');
      } catch {
        // ESRCH: the group is empty, nothing is left.
      }
      await exited;
    },
  };
}
