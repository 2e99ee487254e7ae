import { processTimer, type Clock, type ClockTimer } from '../../src/clock';

/**
 * Manual time for unit tests: `now()` only moves when a test calls `advance`, and sleepers wake
 * in order of their deadlines as time passes them.
 */
export class FakeClock implements Clock {
  private time: number;
  private sleepers: Array<{ at: number; resolve: () => void }> = [];
  /** Every sleep requested, in ms, for assertions on backoff. */
  readonly sleeps: number[] = [];

  constructor(start = 1_000) {
    this.time = start;
  }

  now(): number {
    return this.time;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    this.sleeps.push(ms);
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise<void>((resolve, reject) => {
      const entry = { at: this.time + ms, resolve };
      this.sleepers.push(entry);
      signal?.addEventListener(
        'abort',
        () => {
          this.sleepers = this.sleepers.filter((s) => s !== entry);
          reject(signal.reason);
        },
        { once: true },
      );
    });
  }

  /** Timers run on the process's timers, which tests that need them fake with Jest's fake timers. */
  timer(ms: number, fn: () => void): ClockTimer {
    return processTimer(ms, fn);
  }

  /** Moves time forward, waking every sleeper whose deadline passed. */
  async advance(ms: number): Promise<void> {
    this.time += ms;
    const due = this.sleepers.filter((s) => s.at <= this.time).sort((a, b) => a.at - b.at);
    this.sleepers = this.sleepers.filter((s) => s.at > this.time);
    for (const s of due) s.resolve();
    // Let the woken continuations run.
    await new Promise((r) => setImmediate(r));
  }

  get pendingSleeps(): number {
    return this.sleepers.length;
  }
}

/** A sleep-free clock for middleware that only reads time: sleeps resolve at once and advance time. */
export class InstantClock extends FakeClock {
  override sleep(ms: number, signal?: AbortSignal): Promise<void> {
    this.sleeps.push(ms);
    if (signal?.aborted) return Promise.reject(signal.reason);
    void this.advance(ms);
    return Promise.resolve();
  }
}
