/**
 * Time comes from an injected clock so breaker, backoff and registry logic run on fake time in
 * tests. `now()` is monotonic milliseconds; `sleep` resolves early (rejecting) when the signal aborts.
 */
export interface Clock {
  now(): number;
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
  /** Calls `fn` once, `ms` from now; the handle cancels or re-arms it. */
  timer(ms: number, fn: () => void): ClockTimer;
}

/** A one-shot timer of a Clock. */
export interface ClockTimer {
  cancel(): void;
  /** Re-arms it for `ms` from now (default: its last duration), fired or not; no allocation when the duration is the same. */
  restart(ms?: number): void;
}

/** A ClockTimer on the process's timers (setTimeout); methods on the prototype, no closures. */
class ProcessTimer implements ClockTimer {
  private handle: NodeJS.Timeout;

  constructor(
    private last: number,
    private readonly fn: () => void,
  ) {
    this.handle = setTimeout(fn, last);
  }

  cancel(): void {
    clearTimeout(this.handle);
  }

  restart(next: number = this.last): void {
    if (next === this.last) {
      this.handle.refresh();
      return;
    }
    clearTimeout(this.handle);
    this.last = next;
    this.handle = setTimeout(this.fn, next);
  }
}

/** A ClockTimer on the process's timers (setTimeout). */
export function processTimer(ms: number, fn: () => void): ClockTimer {
  return new ProcessTimer(ms, fn);
}

/** Real time: `performance.now()` is monotonic, unlike `Date.now()`. */
export const systemClock: Clock = {
  now: () => performance.now(),
  timer: processTimer,
  sleep: (ms, signal) =>
    new Promise<void>((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      const onAbort = (): void => {
        clearTimeout(timer);
        reject(signal?.reason);
      };
      const timer = setTimeout(() => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      signal?.addEventListener('abort', onAbort, { once: true });
    }),
};
