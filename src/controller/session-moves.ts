/**
 * Session moves shared through a JetStream key-value bucket: when a controller moves a session
 * off its hashed worker (failover, saturation), it writes `session → worker`; every controller
 * watches the bucket and follows. Off the hot path: a move is written without waiting, and a
 * route never reads the bucket (it reads the local copy the watch keeps). Without JetStream the
 * bucket cannot be opened and controllers agree by rendezvous hashing alone (docs/deployment.md).
 */
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV, type KvWatchEntry } from '@nats-io/kv';
import type { NatsConnection, QueuedIterator } from '@nats-io/transport-node';
import type { Clock } from '../clock';
import type { Logger } from '../logger';
import { WORKER_ID_PATTERN } from '../protocol';
import type { SessionMoveLog } from '../types';

export interface SessionMovesOptions {
  /** Bucket name (letters, digits, `-`, `_`). */
  bucket: string;
  /** How long a move is kept after it was written (ms): the bucket's max age. */
  ttlMs: number;
  /** Copies of the bucket in a JetStream cluster (1, 3 or 5); 3 survives losing a node. */
  replicas: number;
  /** This controller's id, written with each move (for operators reading the bucket). */
  controllerId: string;
  log: Logger;
  /** A move arrived (a peer's, or this controller's own echo). */
  onMove(session: string, worker: string): void;
  /** How often (ms) the watch is checked against the bucket; 0 never (default 1000). */
  probeMs?: number;
}

const DEFAULT_PROBE_MS = 1000;
/** How long a working watch may take to deliver a revision the bucket holds (ms). */
const STALL_GRACE_MS = 500;
/**
 * Longest wait for the bucket's status in a probe (ms), below the JetStream API's 5 s: right after
 * a node loss a request can hang while a fresh one is answered at once. A new watch gets longer:
 * on a loaded cluster creating a consumer can take seconds, and giving up early would never end.
 */
const PROBE_TIMEOUT_MS = 3000;
const WATCH_TIMEOUT_MS = 10_000;
/** Most revisions a probe reads itself while the watch is stalled; more wait for the new watch. */
const CATCH_UP_MAX = 1000;

/**
 * `p`, or a rejection after `ms` or once `signal` aborts; a value that arrives after that goes to
 * `late` (to be released).
 */
function bounded<T>(p: Promise<T>, ms: number, what: string, signal: AbortSignal, late?: (value: T) => void): Promise<T> {
  let gaveUp = false;
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const done = (): void => {
    clearTimeout(timer);
    if (onAbort) signal.removeEventListener('abort', onAbort);
  };
  const timeout = new Promise<never>((_, reject) => {
    const giveUp = (why: string): void => {
      gaveUp = true;
      done();
      reject(new Error(`${what}: ${why}`));
    };
    if (signal.aborted) return giveUp('stopped');
    timer = setTimeout(() => giveUp(`no answer within ${ms} ms`), ms);
    onAbort = () => giveUp('stopped');
    signal.addEventListener('abort', onAbort, { once: true });
  });
  const settled = p.then(
    (value) => {
      done();
      if (gaveUp) late?.(value);
      return value;
    },
    (err: unknown) => {
      done();
      throw err;
    },
  );
  settled.catch(() => undefined);
  return Promise.race([settled, timeout]);
}

/** Starts a watch; `startedAt` is the bucket's newest revision just before it (what it must reach). */
async function startWatch(kv: KV): Promise<{ watcher: QueuedIterator<KvWatchEntry>; startedAt: number }> {
  const startedAt = (await kv.status()).streamInfo.state.last_seq;
  return { watcher: await kv.watch(), startedAt };
}

interface MoveValue {
  worker: string;
  controller?: string;
}

/** Session ids are arbitrary text; KV keys are subject tokens, so keys are base64url. */
export function moveKey(session: string): string {
  return Buffer.from(session, 'utf8').toString('base64url');
}

export function sessionOfKey(key: string): string {
  return Buffer.from(key, 'base64url').toString('utf8');
}

/** The move a bucket entry holds, or undefined for anything that is not one (never throws). */
export function readMove(entry: Pick<KvWatchEntry, 'operation' | 'key' | 'string'>): { session: string; worker: string } | undefined {
  if (entry.operation !== 'PUT') return undefined;
  let value: MoveValue;
  try {
    value = JSON.parse(entry.string()) as MoveValue;
  } catch {
    return undefined;
  }
  if (typeof value?.worker !== 'string' || !WORKER_ID_PATTERN.test(value.worker)) return undefined;
  const session = sessionOfKey(entry.key);
  return session.length > 0 ? { session, worker: value.worker } : undefined;
}

export class SharedSessionMoves implements SessionMoveLog {
  private closed = false;
  private watcher: QueuedIterator<KvWatchEntry>;
  private watching: Promise<void>;
  /** The newest bucket revision the watch has delivered (or that existed when it started). */
  private delivered: number;
  private probing?: Promise<void>;
  /** A stalled watch being replaced (it can take seconds while JetStream elects a leader). */
  private restarting?: Promise<void>;
  /** Direct reads of the bucket's stream, for revisions a stalled watch has not delivered. */
  private jsm?: Promise<JetStreamManager>;
  /** Aborted by close(): ends a probe's waits at once. */
  private readonly stopping = new AbortController();
  /** The grace period of a probe under way; close() ends it at once. */
  private grace?: { timer: NodeJS.Timeout; resolve: () => void };
  private readonly probeTimer?: NodeJS.Timeout;
  /** Watches recreated because they stalled (tests and logs). */
  restarts = 0;

  /** Revisions read by a probe while the watch was stalled (tests and logs). */
  caughtUp = 0;

  private constructor(
    private readonly nc: NatsConnection,
    private readonly kv: KV,
    first: { watcher: QueuedIterator<KvWatchEntry>; startedAt: number },
    private readonly options: SessionMovesOptions,
  ) {
    this.watcher = first.watcher;
    this.delivered = first.startedAt;
    this.watching = this.follow(first.watcher);
    const probeMs = options.probeMs ?? DEFAULT_PROBE_MS;
    if (probeMs > 0) {
      this.probeTimer = setInterval(() => {
        if (this.closed || this.probing) return;
        this.probing = this.probe().finally(() => (this.probing = undefined));
      }, probeMs);
      this.probeTimer.unref();
    }
  }

  /**
   * Opens (creating when absent) the bucket and starts watching it. Resolves undefined when
   * JetStream is not available on this NATS (logged once): hashing alone then keeps agreement.
   */
  static async open(nc: NatsConnection, options: SessionMovesOptions, quiet = false): Promise<SharedSessionMoves | undefined> {
    let kv: KV;
    let first: { watcher: QueuedIterator<KvWatchEntry>; startedAt: number };
    try {
      kv = await new Kvm(nc).create(options.bucket, { ttl: options.ttlMs, history: 1, replicas: options.replicas });
      first = await startWatch(kv);
    } catch (err) {
      options.log[quiet ? 'debug' : 'warn'](
        { bucket: options.bucket, err: (err as Error).message },
        'JetStream key-value not available: controllers agree on sessions by rendezvous hashing alone until it is',
      );
      return undefined;
    }
    options.log.info({ bucket: options.bucket, replicas: options.replicas }, 'sharing session moves through JetStream key-value');
    return new SharedSessionMoves(nc, kv, first, options);
  }

  private follow(watcher: QueuedIterator<KvWatchEntry>): Promise<void> {
    return (async () => {
      for await (const entry of watcher) {
        if (watcher !== this.watcher) break;
        if (entry.revision > this.delivered) this.delivered = entry.revision;
        const move = readMove(entry);
        if (move) this.options.onMove(move.session, move.worker);
      }
    })().catch((err: unknown) => {
      if (!this.closed) this.options.log.warn({ err: (err as Error).message }, 'session move watch ended');
    });
  }

  /**
   * The watch is an ordered JetStream consumer living on one NATS node. When that node dies the
   * consumer goes with it, and the client notices only after two missed idle heartbeats (10 s,
   * then 60 s once it was recreated) and a recreate that fails until the stream has a leader
   * again: moves stay unseen for well over 10 s. So the bucket's newest revision is compared with
   * the watch's at every probe: still undelivered half a second later means stalled. The probe
   * then reads the missed revisions itself (direct gets, answered by any replica of the stream,
   * so no consumer and no JetStream meta leader is needed: after a node loss those can take
   * 10–20 s to come back) and, in the background, recreates the watch from the first revision it
   * missed. Moves are idempotent: one seen twice costs nothing.
   */
  private async probe(): Promise<void> {
    try {
      const last = (await bounded(this.kv.status(), PROBE_TIMEOUT_MS, 'bucket status', this.stopping.signal)).streamInfo.state.last_seq;
      if (this.closed || last <= this.delivered) return;
      // A working watch delivers a stored revision within milliseconds; give it a grace period.
      await new Promise<void>((resolve) => {
        this.grace = { timer: setTimeout(resolve, STALL_GRACE_MS), resolve };
      });
      this.grace = undefined;
      if (this.closed || this.delivered >= last) return;
      const why = `the watch delivered revision ${this.delivered}, the bucket holds ${last}`;
      if (!this.restarting) {
        this.restarting = this.restartWatch(why)
          .catch((err: unknown) => this.options.log.debug({ err: (err as Error).message }, 'session move watch not recreated yet'))
          .finally(() => (this.restarting = undefined));
      }
      await this.catchUp(last);
    } catch (err) {
      // No stream leader yet (a node just died), or our own link is down: try again next probe.
      this.options.log.debug({ err: (err as Error).message }, 'session move probe failed');
    }
  }

  /** Reads the revisions after the delivered one up to `last` straight from the bucket's stream. */
  private async catchUp(last: number): Promise<void> {
    // No API check: it asks the account info of the JetStream meta leader, which is what may be
    // missing right after a node loss (a manager that failed that check was cached and failed
    // every later probe until the watch itself came back).
    this.jsm ??= jetstreamManager(this.nc, { timeout: PROBE_TIMEOUT_MS, checkAPI: false });
    let jsm: JetStreamManager;
    try {
      jsm = await this.jsm;
    } catch (err) {
      this.jsm = undefined;
      throw err;
    }
    const stream = `KV_${this.options.bucket}`;
    const prefix = `$KV.${this.options.bucket}.`;
    for (let n = 0; n < CATCH_UP_MAX && !this.closed && this.delivered < last; n++) {
      // The next stored message from there on: revisions that expired or were replaced are skipped.
      const m = await bounded(jsm.direct.getMessage(stream, { seq: this.delivered + 1, next_by_subj: `${prefix}>` }), PROBE_TIMEOUT_MS, 'direct get', this.stopping.signal);
      if (!m || this.closed) return;
      // The recreated watch may have delivered this revision and newer ones meanwhile (and a
      // lagging replica may answer): what is at or below `delivered` was applied or replaced.
      if (m.seq <= this.delivered) continue;
      this.delivered = m.seq;
      this.caughtUp++;
      const operation = (m.header?.get('KV-Operation') || 'PUT') as KvWatchEntry['operation'];
      const move = m.subject.startsWith(prefix) ? readMove({ operation, key: m.subject.slice(prefix.length), string: () => m.string() }) : undefined;
      if (move) this.options.onMove(move.session, move.worker);
    }
  }

  private async restartWatch(why: string): Promise<void> {
    // A watch that arrives after we gave up on it is stopped at once.
    const next = await bounded(this.kv.watch({ resumeFromRevision: this.delivered + 1 }), WATCH_TIMEOUT_MS, 'new watch', this.stopping.signal, (late) => late.stop());
    if (this.closed) {
      next.stop();
      return;
    }
    const old = this.watcher;
    this.watcher = next;
    this.restarts++;
    old.stop();
    this.watching = Promise.all([this.watching, this.follow(next)]).then(() => undefined);
    this.options.log.warn({ bucket: this.options.bucket, why }, 'session move watch stalled: recreated');
  }

  /** Writes the move without waiting; a failed write only costs the peers' agreement on it. */
  record(session: string, worker: string): void {
    if (this.closed) return;
    const value: MoveValue = { worker, controller: this.options.controllerId };
    this.kv.put(moveKey(session), JSON.stringify(value)).catch((err: unknown) => {
      if (!this.closed) this.options.log.warn({ session, worker, err: (err as Error).message }, 'session move not shared');
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.probeTimer) clearInterval(this.probeTimer);
    if (this.grace) {
      clearTimeout(this.grace.timer);
      this.grace.resolve();
    }
    this.stopping.abort();
    await this.probing;
    await this.restarting;
    this.watcher.stop();
    await this.watching;
  }

  /**
   * Opens the bucket, and while JetStream is missing or not ready yet (a NATS cluster still
   * electing its leader) tries again, 1 s doubling to 30 s, until it opens or `signal` aborts
   * (then resolves undefined). Only the first failure is logged as a warning.
   */
  static async keepOpening(nc: NatsConnection, options: SessionMovesOptions, clock: Clock, signal: AbortSignal): Promise<SharedSessionMoves | undefined> {
    for (let attempt = 0, waitMs = 1000; !signal.aborted; attempt++, waitMs = Math.min(waitMs * 2, 30_000)) {
      const moves = await SharedSessionMoves.open(nc, options, attempt > 0);
      if (moves && signal.aborted) await moves.close();
      else if (moves) return moves;
      if (signal.aborted || nc.isClosed()) break;
      await clock.sleep(waitMs, signal).catch(() => undefined);
    }
    return undefined;
  }
}
