/**
 * A worker's view of the controllers, from their heartbeats (`ControllerHeartbeat`): which reply
 * prefixes belong to live controllers. An attempt whose controller went silent past its expiry has
 * nobody waiting for its answer (a killed controller): the worker cancels it, so its slot is free
 * for the live controllers instead of finishing work no one reads. Attempts of controllers never
 * heard from (older versions) are never touched.
 */
import type { Clock } from '../clock';
import type { ControllerHeartbeat } from '../protocol';

const REPLY_PREFIX = /^[A-Za-z0-9_.:-]{1,256}$/;
/** Forgery bounds: remember at most this many prefixes; never expire faster than this (ms). */
const MAX_CONTROLLERS = 256;
const MIN_EXPIRE_MS = 250;
const MAX_EXPIRE_MS = 10 * 60_000;

interface Seen {
  id: string;
  lastSeen: number;
  expireMs: number;
}

export class ControllerWatch {
  private readonly byPrefix = new Map<string, Seen>();
  private linkUp = true;

  constructor(private readonly clock: Clock) {}

  /** A controller heartbeat (anything else is ignored). */
  onHeartbeat(hb: Partial<ControllerHeartbeat> | undefined): void {
    if (!hb || typeof hb !== 'object' || hb.type !== 'controller') return;
    const prefix = hb.reply_prefix;
    if (typeof prefix !== 'string' || !REPLY_PREFIX.test(prefix) || typeof hb.id !== 'string') return;
    const known = this.byPrefix.get(prefix);
    if (hb.bye === true) {
      // A clean stop ends its requests first; a forged bye only makes us forget until the next heartbeat.
      this.byPrefix.delete(prefix);
      return;
    }
    if (!known && this.byPrefix.size >= MAX_CONTROLLERS) return;
    const claimed = Number.isFinite(hb.expire_ms) ? (hb.expire_ms as number) : 0;
    const expireMs = Math.min(MAX_EXPIRE_MS, Math.max(MIN_EXPIRE_MS, claimed, known?.expireMs ?? 0));
    this.byPrefix.set(prefix, { id: hb.id.slice(0, 128), lastSeen: this.clock.now(), expireMs });
  }

  /** This worker's NATS link went down (false) or came back (true): silence while down proves nothing. */
  setLink(up: boolean): void {
    if (up && !this.linkUp) {
      const now = this.clock.now();
      for (const s of this.byPrefix.values()) s.lastSeen = now;
    }
    this.linkUp = up;
  }

  /**
   * The controller of the attempt answering on `reply` when it is known and has gone silent
   * past its expiry, else undefined.
   */
  goneFor(reply: string, now: number = this.clock.now()): string | undefined {
    if (!this.linkUp) return undefined;
    const dot = reply.lastIndexOf('.');
    if (dot <= 0) return undefined;
    const seen = this.byPrefix.get(reply.slice(0, dot));
    return seen && now - seen.lastSeen >= seen.expireMs ? seen.id : undefined;
  }

  /** Forgets controllers gone for ten times their expiry (their attempts were cancelled long ago). */
  sweep(now: number = this.clock.now()): void {
    if (!this.linkUp) return;
    for (const [prefix, s] of this.byPrefix) if (now - s.lastSeen >= s.expireMs * 10) this.byPrefix.delete(prefix);
  }

  get size(): number {
    return this.byPrefix.size;
  }
}
