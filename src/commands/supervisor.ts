/**
 * Keeps one child process running for `mlx-router up`: when it exits while not being stopped, it
 * is started again after an exponential backoff (initial, doubling, capped), and the backoff starts
 * over once a child has stayed up long enough. `stop()` cancels a pending restart and stops the
 * current child, so nothing outlives the supervisor.
 */
import type { ChildProcess } from 'node:child_process';

export interface RestartInfo {
  /** Restarts so far, this one included. */
  restarts: number;
  /** Wait before this restart (ms). */
  backoffMs: number;
  /** How the child ended: `code N` or `signal S`. */
  exit: string;
}

export interface SupervisorOptions {
  /** Starts the child (called at start and at every restart). */
  spawn: () => ChildProcess;
  /** First restart delay (ms, default 500); doubles per crash in a row. */
  initialBackoffMs?: number;
  /** Cap of the restart delay (ms, default 30000). */
  maxBackoffMs?: number;
  /** A child up this long resets the backoff (ms, default 60000). */
  resetAfterMs?: number;
  /** Told of every scheduled restart. */
  onRestart?: (info: RestartInfo) => void;
}

export class Supervisor {
  private child?: ChildProcess;
  private timer?: NodeJS.Timeout;
  private stopped = false;
  private crashesInRow = 0;
  private restarts = 0;
  private startedAt = 0;

  constructor(private readonly options: SupervisorOptions) {}

  start(): void {
    if (this.stopped) return;
    this.timer = undefined;
    this.startedAt = Date.now();
    const child = this.options.spawn();
    this.child = child;
    child.once('exit', (code, signal) => {
      if (this.stopped || this.child !== child) return;
      if (Date.now() - this.startedAt >= (this.options.resetAfterMs ?? 60_000)) this.crashesInRow = 0;
      const initial = this.options.initialBackoffMs ?? 500;
      const backoffMs = Math.min(this.options.maxBackoffMs ?? 30_000, initial * 2 ** Math.min(this.crashesInRow, 20));
      this.crashesInRow++;
      this.restarts++;
      this.options.onRestart?.({ restarts: this.restarts, backoffMs, exit: signal ? `signal ${signal}` : `code ${code}` });
      this.timer = setTimeout(() => this.start(), backoffMs);
    });
  }

  /** From now on a child that exits stays down (shutdown has begun); the running one is left alone. */
  noMoreRestarts(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** The running child, if any (for a last-resort kill). */
  current(): ChildProcess | undefined {
    const c = this.child;
    return c && c.exitCode === null && c.signalCode === null ? c : undefined;
  }

  /** No more restarts; SIGTERM the child, SIGKILL after `graceMs`, resolve once it has exited. */
  stop(graceMs: number): Promise<void> {
    this.noMoreRestarts();
    const child = this.current();
    if (!child) return Promise.resolve();
    return new Promise((done) => {
      const kill = setTimeout(() => child.kill('SIGKILL'), graceMs);
      child.once('exit', () => {
        clearTimeout(kill);
        done();
      });
      child.kill('SIGTERM');
    });
  }
}
