/**
 * SessionRegistry: session id → worker, with a TTL refreshed on use and a size cap. A Map keeps
 * insertion order, so re-inserting on use makes the first entry the least recently used one.
 */
import type { Clock } from '../clock';

export interface SessionOptions {
  /** Idle time after which a session forgets its worker (ms). */
  ttlMs: number;
  /** Most sessions kept; the least recently used goes first. */
  maxSessions: number;
  clock: Clock;
}

interface Entry {
  worker: string;
  expires: number;
}

export class SessionRegistry {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly options: SessionOptions) {}

  get size(): number {
    return this.entries.size;
  }

  /** The session's worker, refreshing its TTL; undefined when unknown or expired. */
  get(session: string): string | undefined {
    const e = this.entries.get(session);
    if (!e) return undefined;
    const now = this.options.clock.now();
    if (now >= e.expires) {
      this.entries.delete(session);
      return undefined;
    }
    this.entries.delete(session);
    e.expires = now + this.options.ttlMs;
    this.entries.set(session, e);
    return e.worker;
  }

  set(session: string, worker: string): void {
    this.entries.delete(session);
    this.entries.set(session, { worker, expires: this.options.clock.now() + this.options.ttlMs });
    while (this.entries.size > this.options.maxSessions) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
  }

  delete(session: string): void {
    this.entries.delete(session);
  }
}
