/**
 * WorkerRegistry: what the controller knows of each worker, fed by heartbeats. Online-ness is
 * judged on the controller's own clock (a worker silent for `offlineAfterMs` is offline), and a
 * "no responders" answer marks a worker offline at once, until its next heartbeat.
 */
import type { Clock } from '../clock';
import type { Logger } from '../logger';
import { WORKER_ID_PATTERN, type Heartbeat, type PromptCacheInfo } from '../protocol';
import type { WorkerDirectory, WorkerInfo } from '../types';
import { readCapabilities } from './capabilities';

export type { WorkerInfo };

/** A heartbeat's `prompt_cache`, when well-formed; a peer's garbage reads as absent. */
function readPromptCache(v: unknown): PromptCacheInfo | undefined {
  if (!v || typeof v !== 'object') return undefined;
  const { size, epoch } = v as Record<string, unknown>;
  if (typeof size !== 'number' || !Number.isInteger(size) || size < 0 || typeof epoch !== 'string' || epoch.length > 128) return undefined;
  return { size, epoch };
}

/** A worker came online, went offline, or changed its reported state (for the event bus). */
export type StatusListener = (id: string, change: { online: boolean; reason?: string } | { state: WorkerInfo['state'] }) => void;

/** Told why a watched attempt cannot be answered: the worker went offline, or our transport did. */
export type OfflineWatcher = (reason: string, source: 'worker' | 'transport') => void;

export interface RegistryOptions {
  clock: Clock;
  /** A worker silent this long is offline (ms). */
  offlineAfterMs: number;
  log: Logger;
  /** Peak-EWMA decay time constant (ms, default 10000). */
  latencyDecayMs?: number;
  /** Called when a long-silent worker is forgotten, so per-worker state elsewhere goes too. */
  onForget?: (id: string) => void;
  /** Called when a worker comes online, goes offline, or changes its reported state. */
  onStatus?: StatusListener;
}

/** A finite number above 0, else 0 (a peer's field that is absent or garbage). */
function positiveNumber(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) && v > 0 ? v : 0;
}

export class WorkerRegistry implements WorkerDirectory {
  private readonly workers = new Map<string, WorkerInfo>();
  private readonly clock: Clock;
  private readonly offlineAfterMs: number;
  private readonly log: Logger;
  private readonly decayMs: number;
  private readonly onForget?: (id: string) => void;
  private readonly onStatus?: StatusListener;
  private readonly wasOnline = new Map<string, boolean>();
  private readonly watchers = new Map<string, Set<OfflineWatcher>>();
  private readonly capacityWaiters = new Set<() => void>();
  /** False while this controller's NATS connection is down: no worker is reachable then. */
  private transportUp = true;

  constructor(options: RegistryOptions) {
    this.clock = options.clock;
    this.offlineAfterMs = options.offlineAfterMs;
    this.log = options.log;
    this.decayMs = options.latencyDecayMs ?? 10_000;
    this.onForget = options.onForget;
    this.onStatus = options.onStatus;
  }

  onHeartbeat(hb: Heartbeat): void {
    if (typeof hb?.id !== 'string' || !WORKER_ID_PATTERN.test(hb.id) || !Array.isArray(hb.models)) return;
    const now = this.clock.now();
    const known = this.workers.get(hb.id);
    const models = hb.models.filter((m): m is string => typeof m === 'string');
    const maxConcurrent = Number.isInteger(hb.max_concurrent) && hb.max_concurrent > 0 ? hb.max_concurrent : 1;
    const reported = Number.isFinite(hb.in_flight) ? hb.in_flight : 0;
    const state = hb.state === 'draining' || hb.state === 'unhealthy' ? hb.state : 'ready';
    const host = typeof hb.host === 'string' ? hb.host.slice(0, 255) : '';
    const pid = Number.isInteger(hb.pid) ? (hb.pid as number) : 0;
    const drainingModels = Array.isArray(hb.draining_models) ? hb.draining_models.filter((m): m is string => typeof m === 'string') : [];
    if (known && known.state !== state) this.onStatus?.(hb.id, { state });
    const progressMs = positiveNumber(hb.progress_ms);
    const heartbeatMs = positiveNumber(hb.interval_ms);
    if (known) {
      known.host = host;
      known.pid = pid;
      known.drainingModels = drainingModels;
      known.models = models;
      known.engine = String(hb.engine ?? 'unknown');
      known.maxConcurrent = maxConcurrent;
      known.reportedInFlight = reported;
      known.foreignInFlight = Math.max(0, reported - known.outstanding);
      known.state = state;
      known.lastSeen = now;
      known.gone = false;
      known.continuation = hb.continuation === true;
      known.progressMs = progressMs;
      known.heartbeatMs = heartbeatMs;
      known.promptCache = readPromptCache(hb.prompt_cache);
      Object.assign(known, readCapabilities(hb, models));
      known.instance = typeof hb.instance === 'string' ? hb.instance : '';
    } else {
      this.workers.set(hb.id, {
        id: hb.id,
        models,
        engine: String(hb.engine ?? 'unknown'),
        maxConcurrent,
        reportedInFlight: reported,
        outstanding: 0,
        foreignInFlight: reported,
        latencyMs: 0,
        latencyAt: now,
        state,
        lastSeen: now,
        gone: false,
        continuation: hb.continuation === true,
        host,
        pid,
        drainingModels,
        progressMs,
        heartbeatMs,
        lastActivityAt: now,
        promptCache: readPromptCache(hb.prompt_cache),
        ...readCapabilities(hb, models),
        instance: typeof hb.instance === 'string' ? hb.instance : '',
      });
    }
    this.noteTransition(hb.id);
    this.notifyCapacity();
  }

  /** The worker said goodbye (clean shutdown): offline now. */
  onBye(id: string): void {
    this.markOffline(id, 'bye');
  }

  /** No responders, or bye: offline at once, until a heartbeat says otherwise. */
  markOffline(id: string, reason: string): void {
    const w = this.workers.get(id);
    if (!w || w.gone) return;
    w.gone = true;
    this.log.warn({ worker: id, reason }, 'worker marked offline');
    this.noteTransition(id, this.clock.now(), reason);
  }

  /**
   * The worker answered WORKER_OVERLOADED: its slots are taken by requests this controller does
   * not know of (other controllers', counted in heartbeats that are not here yet). Until its next
   * heartbeat it counts as full, so `select` waits for a slot (one of ours ending frees one)
   * instead of sending more requests to be refused.
   */
  markFull(id: string): void {
    const w = this.workers.get(id);
    if (!w) return;
    w.foreignInFlight = Math.max(w.foreignInFlight, w.maxConcurrent - w.outstanding);
  }

  isOnline(w: WorkerInfo, now: number = this.clock.now()): boolean {
    return !w.gone && now - w.lastSeen < this.offlineAfterMs;
  }

  /**
   * Our NATS connection went down (false) or came back (true). While down no worker is a
   * candidate, so attempts wait (bounded) instead of publishing into a connection that may lose
   * them. On the way back every worker must be re-learned by a heartbeat (answering discovery)
   * before it is selected or judged again.
   */
  setTransport(up: boolean): void {
    if (this.transportUp === up) return;
    this.transportUp = up;
    if (up) {
      // Quietly: no watcher fires (in-flight attempts were already ended as NATS_DISCONNECTED).
      for (const w of this.workers.values()) w.gone = true;
      this.log.info({ workers: this.workers.size }, 'NATS back: re-learning workers from their heartbeats');
    }
    this.notifyCapacity();
  }

  /** Online workers taking work (not draining, engine not unhealthy) that serve `model`. */
  forModel(model: string): WorkerInfo[] {
    if (!this.transportUp) return [];
    const now = this.clock.now();
    const out: WorkerInfo[] = [];
    for (const w of this.workers.values()) {
      if (w.state === 'ready' && this.isOnline(w, now) && w.models.includes(model) && !w.drainingModels?.includes(model)) out.push(w);
    }
    return out;
  }

  /** Online workers that serve `model` but report their engine unhealthy (so take no work). */
  unhealthyFor(model: string): WorkerInfo[] {
    const now = this.clock.now();
    return [...this.workers.values()].filter((w) => w.state === 'unhealthy' && this.isOnline(w, now) && w.models.includes(model));
  }

  online(): WorkerInfo[] {
    const now = this.clock.now();
    return [...this.workers.values()].filter((w) => this.isOnline(w, now));
  }

  /** Union of models that online workers advertise, sorted. */
  models(): string[] {
    const set = new Set<string>();
    for (const w of this.online()) for (const m of w.models) set.add(m);
    return [...set].sort();
  }

  /** A model any known worker (online or recently seen) advertises: absent means 404, not 503. */
  knowsModel(model: string): boolean {
    for (const w of this.workers.values()) if (w.models.includes(model)) return true;
    return false;
  }

  /** Some known worker (online or recently seen) serves `model` and can continue a partial answer. */
  knowsContinuation(model: string): boolean {
    for (const w of this.workers.values()) if (w.continuation && w.models.includes(model)) return true;
    return false;
  }

  /** A worker's own answer to an admin action, applied before its next heartbeat says the same. */
  applyState(id: string, state: WorkerInfo['state'], drainingModels: string[]): void {
    const w = this.workers.get(id);
    if (!w) return;
    if (w.state !== state) this.onStatus?.(id, { state });
    w.state = state;
    w.drainingModels = drainingModels;
  }

  /** Every known worker, online or recently seen, in id order. */
  all(): WorkerInfo[] {
    return [...this.workers.values()].sort((a, b) => a.id.localeCompare(b.id));
  }

  /** Every known worker, online or recently seen. */
  known(): WorkerInfo[] {
    return [...this.workers.values()];
  }

  /** Workers known now (online or recently seen). */
  get size(): number {
    return this.workers.size;
  }

  get(id: string): WorkerInfo | undefined {
    return this.workers.get(id);
  }

  /**
   * Calls `onOffline` if the worker goes offline (silence, bye, no responders) while the caller
   * waits on it, so an attempt to a crashed worker ends at once instead of at its timeout.
   * Returns the function that stops watching.
   */
  watch(w: WorkerInfo, onOffline: OfflineWatcher): () => void {
    let set = this.watchers.get(w.id);
    if (!set) this.watchers.set(w.id, (set = new Set()));
    set.add(onOffline);
    return () => {
      set.delete(onOffline);
      if (set.size === 0 && this.watchers.get(w.id) === set) this.watchers.delete(w.id);
    };
  }

  /** The controller sends a request to `id`. */
  begin(w: WorkerInfo): void {
    w.outstanding++;
    w.lastActivityAt = this.clock.now();
  }

  /** A reply of any kind (chunk, progress, result) came from the worker: it is alive and talking. */
  heard(w: WorkerInfo): void {
    w.lastActivityAt = this.clock.now();
  }

  /**
   * The request to `id` ended; `latencyMs` feeds the peak-EWMA when the worker answered. Pass the
   * time to first token (or a per-token time), never a whole answer's duration: a long answer
   * says nothing about how fast the worker starts the next one.
   */
  end(w: WorkerInfo, latencyMs?: number): void {
    w.outstanding = Math.max(0, w.outstanding - 1);
    if (latencyMs !== undefined) this.observeLatency(w, latencyMs);
    this.notifyCapacity();
  }

  /**
   * Resolves at the next change that may free capacity (a request ends, a heartbeat arrives),
   * after `ms`, or when `signal` aborts, whichever is first. Never rejects; leaves nothing behind.
   */
  waitForChange(signal: AbortSignal, ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = new AbortController();
      const done = (): void => {
        this.capacityWaiters.delete(done);
        signal.removeEventListener('abort', done);
        timer.abort();
        resolve();
      };
      if (signal.aborted || ms <= 0) {
        resolve();
        return;
      }
      this.capacityWaiters.add(done);
      signal.addEventListener('abort', done, { once: true });
      this.clock.sleep(ms, timer.signal).then(done, () => undefined);
    });
  }

  /**
   * Ends every watched attempt (the controller lost NATS: no reply can arrive on the old
   * connection's inbox in time). Streams then resume or end honestly instead of idling out.
   */
  interruptAll(reason: string): void {
    for (const set of [...this.watchers.values()]) for (const fn of [...set]) fn(reason, 'transport');
  }

  private notifyCapacity(): void {
    if (this.capacityWaiters.size === 0) return;
    for (const wake of [...this.capacityWaiters]) wake();
  }

  /** Peak EWMA (Finagle): a slower sample takes over at once; faster ones decay in over time. */
  observeLatency(w: WorkerInfo, sampleMs: number): void {
    const now = this.clock.now();
    if (w.latencyMs === 0 || sampleMs > w.latencyMs) {
      w.latencyMs = sampleMs;
    } else {
      const weight = Math.exp(-(now - w.latencyAt) / this.decayMs);
      w.latencyMs = w.latencyMs * weight + sampleMs * (1 - weight);
    }
    w.latencyAt = now;
  }

  /**
   * Logs workers that went offline by silence and forgets those silent for ten times the offline
   * limit. Called periodically by the controller; reads never depend on it.
   */
  sweep(): void {
    const now = this.clock.now();
    for (const [id, w] of this.workers) {
      this.noteTransition(id, now);
      if (now - w.lastSeen > this.offlineAfterMs * 10 && w.outstanding === 0) {
        this.workers.delete(id);
        this.wasOnline.delete(id);
        this.onForget?.(id);
      }
    }
  }

  private noteTransition(id: string, now: number = this.clock.now(), reason = 'heartbeats stopped'): void {
    const w = this.workers.get(id);
    if (!w) return;
    const online = this.isOnline(w, now);
    if (this.wasOnline.get(id) !== online) {
      this.wasOnline.set(id, online);
      this.log.info({ worker: id, online, models: w.models }, online ? 'worker online' : 'worker offline');
      this.onStatus?.(id, { online, reason: online ? undefined : reason });
    }
    if (!online) {
      const watchers = this.watchers.get(id);
      if (watchers) for (const fn of [...watchers]) fn(reason, 'worker');
    }
  }
}
