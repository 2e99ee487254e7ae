/**
 * Controllers know each other through heartbeats on one subject (`ControllerHeartbeat`): each
 * announces its id, its reply prefix and its own in-flight attempts per worker every `intervalMs`.
 * A peer silent for its `expire_ms` is gone: its in-flight stops counting at once (the registry
 * discounts it from the workers' reported in-flight), and workers cancel its attempts (they
 * watch the same heartbeats, see src/worker/controller-watch.ts). `/v1/cluster` lists the peers.
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Clock } from '../clock';
import type { Logger } from '../logger';
import { decode, encode, WORKER_ID_PATTERN, type ControllerHeartbeat } from '../protocol';

/** Controller ids and reply prefixes are opaque, but bounded and printable. */
const CONTROLLER_ID = /^[A-Za-z0-9_.:-]{1,128}$/;
const REPLY_PREFIX = /^[A-Za-z0-9_.:-]{1,256}$/;
/** At most this many peers are remembered (a flood of forged ids cannot grow memory). */
const MAX_PEERS = 256;
/** A peer's claimed expiry is clamped to this (ms). */
const MAX_EXPIRE_MS = 10 * 60_000;

export interface Peer {
  id: string;
  url?: string;
  replyPrefix: string;
  /** Controller clock (ms) of its last heartbeat. */
  lastSeen: number;
  expireMs: number;
  inFlight: Record<string, number>;
}

export interface PeerView {
  id: string;
  url: string | null;
  lastSeenAgoMs: number;
  expiresInMs: number;
  /** Its own in-flight attempts, in total and per worker, as of its last heartbeat. */
  inFlight: number;
  inFlightByWorker: Record<string, number>;
}

export interface ControllerPeersOptions {
  nc: NatsConnection;
  subject: string;
  id: string;
  replyPrefix: string;
  /** This controller's HTTP address, once it listens. */
  url?: () => string | undefined;
  intervalMs: number;
  /** Silence after which a peer is gone; also what this controller announces for itself. */
  expireMs: number;
  clock: Clock;
  log: Logger;
  /** This controller's own in-flight attempts per worker. */
  ownInFlight(): Record<string, number>;
  /** The live peers' in-flight per worker changed (summed over peers). */
  onLoad(load: Map<string, number>): void;
  /** A peer went silent past its expiry (not a clean stop): what it held is orphaned. */
  onExpired(peer: Peer): void;
}

/** A well-formed heartbeat of another controller, or undefined (the bus may carry anything). */
export function readControllerHeartbeat(hb: ControllerHeartbeat | undefined, self: string): ControllerHeartbeat | undefined {
  if (!hb || typeof hb !== 'object' || hb.type !== 'controller') return undefined;
  if (typeof hb.id !== 'string' || !CONTROLLER_ID.test(hb.id) || hb.id === self) return undefined;
  if (typeof hb.reply_prefix !== 'string' || !REPLY_PREFIX.test(hb.reply_prefix)) return undefined;
  if (!(Number.isFinite(hb.interval_ms) && hb.interval_ms > 0 && Number.isFinite(hb.expire_ms) && hb.expire_ms > 0)) return undefined;
  if (!hb.in_flight || typeof hb.in_flight !== 'object' || Array.isArray(hb.in_flight)) return undefined;
  const inFlight: Record<string, number> = {};
  let n = 0;
  for (const [worker, count] of Object.entries(hb.in_flight)) {
    if (++n > 10_000) return undefined;
    if (!WORKER_ID_PATTERN.test(worker) || !Number.isInteger(count) || count < 0 || count > 1_000_000) return undefined;
    if (count > 0) inFlight[worker] = count;
  }
  const url = typeof hb.url === 'string' && hb.url.length <= 256 ? hb.url : undefined;
  return { ...hb, in_flight: inFlight, url, expire_ms: Math.min(hb.expire_ms, MAX_EXPIRE_MS) };
}

export class ControllerPeers {
  private readonly peers = new Map<string, Peer>();
  private sub?: Subscription;
  private timer?: NodeJS.Timeout;
  /** False while this controller's own NATS link is down: silence then proves nothing. */
  private transportUp = true;

  constructor(private readonly options: ControllerPeersOptions) {}

  start(): void {
    if (this.sub) return;
    const { nc, subject, id } = this.options;
    this.sub = nc.subscribe(subject, {
      callback: (err, msg) => {
        if (err) return;
        const hb = readControllerHeartbeat(decode<ControllerHeartbeat>(msg.data), id);
        if (hb) this.onHeartbeat(hb);
      },
    });
    this.announce();
    this.timer = setInterval(() => {
      this.announce();
      this.sweep();
    }, this.options.intervalMs);
    this.timer.unref();
  }

  /** Stops announcing; `bye` tells the peers (and workers) at once that this controller left cleanly. */
  stop(bye = true): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.sub?.unsubscribe();
    this.sub = undefined;
    if (bye) this.announce(true);
  }

  /** This controller's NATS link went down or came back; back, every peer gets a fresh start. */
  setTransport(up: boolean): void {
    if (up && !this.transportUp) {
      const now = this.options.clock.now();
      for (const p of this.peers.values()) p.lastSeen = now;
    }
    this.transportUp = up;
  }

  list(): PeerView[] {
    const now = this.options.clock.now();
    return [...this.peers.values()]
      .map((p) => ({
        id: p.id,
        url: p.url ?? null,
        lastSeenAgoMs: Math.max(0, Math.round(now - p.lastSeen)),
        expiresInMs: Math.max(0, Math.round(p.lastSeen + p.expireMs - now)),
        inFlight: Object.values(p.inFlight).reduce((a, b) => a + b, 0),
        inFlightByWorker: { ...p.inFlight },
      }))
      .sort((a, b) => a.id.localeCompare(b.id));
  }

  /** Drops peers silent past their expiry (each reported through `onExpired`). */
  sweep(): void {
    if (!this.transportUp) return;
    const now = this.options.clock.now();
    const gone = [...this.peers.values()].filter((p) => now - p.lastSeen >= p.expireMs);
    if (gone.length === 0) return;
    for (const p of gone) this.peers.delete(p.id);
    // The live load first: what the dead held is then what no live peer claims.
    this.publishLoad();
    for (const p of gone) {
      this.options.log.warn({ peer: p.id, silentMs: Math.round(now - p.lastSeen), inFlight: p.inFlight }, 'controller peer gone: its in-flight no longer counts');
      this.options.onExpired(p);
    }
  }

  private onHeartbeat(hb: ControllerHeartbeat): void {
    const now = this.options.clock.now();
    const known = this.peers.get(hb.id);
    if (hb.bye) {
      if (known && known.replyPrefix === hb.reply_prefix) {
        this.peers.delete(hb.id);
        this.options.log.info({ peer: hb.id }, 'controller peer stopped');
        this.publishLoad();
      }
      return;
    }
    if (!known && this.peers.size >= MAX_PEERS) return;
    if (!known) this.options.log.info({ peer: hb.id, url: hb.url }, 'controller peer joined');
    this.peers.set(hb.id, {
      id: hb.id,
      url: hb.url,
      replyPrefix: hb.reply_prefix,
      lastSeen: now,
      // A forged heartbeat under a real id can lengthen its expiry, never shorten it.
      expireMs: Math.max(known?.expireMs ?? 0, hb.expire_ms),
      inFlight: hb.in_flight,
    });
    this.publishLoad();
  }

  private publishLoad(): void {
    const load = new Map<string, number>();
    for (const p of this.peers.values()) for (const [w, n] of Object.entries(p.inFlight)) load.set(w, (load.get(w) ?? 0) + n);
    this.options.onLoad(load);
  }

  private announce(bye = false): void {
    const { nc, id, replyPrefix, intervalMs, expireMs } = this.options;
    if (nc.isClosed()) return;
    const hb: ControllerHeartbeat = {
      type: 'controller',
      id,
      reply_prefix: replyPrefix,
      interval_ms: intervalMs,
      expire_ms: expireMs,
      in_flight: bye ? {} : this.options.ownInFlight(),
      ...(this.options.url?.() ? { url: this.options.url() } : {}),
      ...(bye ? { bye: true } : {}),
    };
    try {
      nc.publish(this.options.subject, encode(hb));
    } catch (err) {
      this.options.log.debug({ err: (err as Error).message }, 'controller heartbeat not sent');
    }
  }
}
