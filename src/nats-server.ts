/**
 * Starts a `nats-server` child on a free port (`-p -1`, the port read back from its ports file).
 * Used by `mlx-router up` when no NATS answers, and by the tests (never a fixed port).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface NatsServerHandle {
  url: string;
  port: number;
  process: ChildProcess;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process has exited. */
  stop(graceMs?: number): Promise<void>;
}

export interface NatsServerOptions {
  /** Binary (default `nats-server` on PATH). */
  binary?: string;
  /** Fixed port, e.g. to restart a server where it was (default: any free port). */
  port?: number;
  /** Own process group, so a terminal's Ctrl-C does not kill it before the workers say bye. */
  detached?: boolean;
  timeoutMs?: number;
  /** More server flags, e.g. `--user a --pass b` or `--auth TOKEN`. */
  args?: string[];
  /** Enable JetStream, stored in the server's temp dir (removed by stop). */
  jetstream?: boolean;
}

/** True when a `nats-server` binary can be run. */
export function natsServerAvailable(binary = 'nats-server'): boolean {
  const r = spawnSync(binary, ['--version'], { stdio: 'ignore' });
  return !r.error && r.status === 0;
}

export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServerHandle> {
  const dir = mkdtempSync(join(tmpdir(), 'mlx-nats-'));
  const args = ['-a', '127.0.0.1', '-p', String(options.port ?? -1), '--ports_file_dir', dir, ...(options.args ?? [])];
  if (options.jetstream) args.push('--jetstream', '--store_dir', join(dir, 'jetstream'));
  const child = spawn(options.binary ?? 'nats-server', args, { stdio: ['ignore', 'ignore', 'pipe'], detached: options.detached ?? false });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    if (stderr.length < 10_000) stderr += d.toString();
  });
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
  const cleanup = (): void => rmSync(dir, { recursive: true, force: true });

  const stop = async (graceMs = 5000): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    }
    child.stderr?.destroy();
    cleanup();
  };

  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  for (;;) {
    const failed = await Promise.race([spawnError, new Promise<undefined>((r) => setTimeout(() => r(undefined), 20))]);
    if (failed) {
      cleanup();
      throw new Error(`cannot start nats-server: ${failed.message}`);
    }
    if (child.exitCode !== null) {
      cleanup();
      throw new Error(`nats-server exited with code ${child.exitCode}: ${stderr.trim()}`);
    }
    const file = readdirSync(dir).find((f) => f.endsWith('.ports'));
    if (file) {
      try {
        const ports = JSON.parse(readFileSync(join(dir, file), 'utf8')) as { nats: string[] };
        const url = ports.nats[0];
        const port = Number(new URL(url).port);
        return { url: `nats://127.0.0.1:${port}`, port, process: child, stop };
      } catch {
        // Written but not complete yet: read again on the next turn.
      }
    }
    if (Date.now() > deadline) {
      await stop(100);
      throw new Error(`nats-server did not report its port within ${options.timeoutMs ?? 10_000} ms: ${stderr.trim()}`);
    }
  }
}
