/**
 * BusGuard: what a controller believes of the bus (docs/security.md). Every message from NATS
 * passes here before it can change state: heartbeats and byes are checked for shape, limits and
 * the worker instance rule; replies for the attempt's token and the worker's instance. A message
 * that fails is dropped, counted in `mlx_router_bus_dropped_total{subject,reason}` and logged
 * (at most once a second per subject and reason, with the count since), never thrown, and never
 * recorded against a worker.
 */
import type { Msg, NatsConnection } from '@nats-io/transport-node';
import { Counter, type Registry } from 'prom-client';
import type { Clock } from '../clock';
import type { Logger } from '../logger';
import {
  controlSubject,
  decode,
  encode,
  HDR_INSTANCE,
  HDR_TOKEN,
  INSTANCE_ID_PATTERN,
  WORKER_ID_PATTERN,
  type Bye,
  type Heartbeat,
  type RefuseMessage,
} from '../protocol';
import type { WorkerRegistry } from './registry';

export type BusSubject = 'heartbeat' | 'bye' | 'reply';
export type DropReason =
  | 'malformed'
  | 'bad-token'
  | 'wrong-instance'
  | 'duplicate-id'
  | 'registry-full'
  | 'too-many-models'
  | 'unknown-worker';

/** Longest model id a heartbeat may advertise (characters). */
export const MAX_MODEL_ID_LENGTH = 256;

export interface BusGuardOptions {
  registry: WorkerRegistry;
  log: Logger;
  clock: Clock;
  /** Metrics registry the drop counter is registered on. */
  register: Registry;
  /** Subject prefix (for the control subject of refused duplicates). */
  subjectPrefix: string;
  /** Most workers the registry holds; heartbeats of further new ids are dropped. */
  maxWorkers: number;
  /** Most models one worker may advertise; a heartbeat with more is dropped. */
  maxModels: number;
  /** Where refusals are published; absent in unit tests. */
  nc?: NatsConnection;
}

/** Why a reply on an attempt's subject is not believed, or undefined when it is. */
export function replyProblem(msg: Msg, token: string, instance: string | undefined): DropReason | undefined {
  const h = msg.headers;
  if (!h || h.get(HDR_TOKEN) !== token) return 'bad-token';
  if (instance !== undefined && h.get(HDR_INSTANCE) !== instance) return 'wrong-instance';
  return undefined;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export class BusGuard {
  private readonly counter: Counter<'subject' | 'reason'>;
  private readonly lastLog = new Map<string, { at: number; suppressed: number }>();
  /** A second instance seen for a live id: refused once the live one proves alive again. */
  private readonly contenders = new Map<string, { instance: string; since: number }>();

  constructor(private readonly options: BusGuardOptions) {
    this.counter = new Counter({
      name: 'mlx_router_bus_dropped_total',
      help: 'NATS messages dropped unbelieved, by subject and reason (docs/security.md).',
      labelNames: ['subject', 'reason'],
      registers: [options.register],
    });
  }

  /** Counts and (rate-limited) logs one dropped message. */
  drop(subject: BusSubject, reason: DropReason, detail: Record<string, unknown> = {}): void {
    this.counter.inc({ subject, reason });
    const key = `${subject}/${reason}`;
    const now = this.options.clock.now();
    const last = this.lastLog.get(key);
    if (last && now - last.at < 1000) {
      last.suppressed++;
      return;
    }
    this.lastLog.set(key, { at: now, suppressed: 0 });
    this.options.log.warn({ subject, reason, ...detail, ...(last?.suppressed ? { alsoDroppedSinceLastLine: last.suppressed } : {}) }, 'dropped a bus message');
  }

  /** A heartbeat's raw bytes: believed and handed to the registry, or dropped. */
  heartbeat(data: Uint8Array): void {
    const hb = decode<Heartbeat>(data);
    const problem = this.heartbeatShape(hb);
    if (problem) {
      this.drop('heartbeat', problem.reason, problem.detail);
      return;
    }
    const beat = hb as Heartbeat & { instance: string };
    const { registry } = this.options;
    const known = registry.get(beat.id);
    if (known) {
      if (known.instance !== beat.instance && registry.isOnline(known)) {
        this.contend(beat.id, beat.instance);
        return;
      }
      if (known.instance === beat.instance) {
        const contender = this.contenders.get(beat.id);
        // The live instance spoke again after a second one appeared: both run at once.
        if (contender && this.options.clock.now() > contender.since) this.refuse(beat.id, contender.instance);
      } else {
        // The known instance is offline (bye, silence, no responders): a new process takes the id.
        this.contenders.delete(beat.id);
      }
    } else if (registry.size >= this.options.maxWorkers) {
      this.drop('heartbeat', 'registry-full', { worker: beat.id, maxWorkers: this.options.maxWorkers });
      return;
    }
    registry.onHeartbeat(beat);
  }

  /** A bye's raw bytes: believed only from the live instance of a known worker. */
  bye(data: Uint8Array): void {
    const bye = decode<Bye>(data);
    if (!isObject(bye) || typeof bye.id !== 'string' || !WORKER_ID_PATTERN.test(bye.id) || typeof bye.instance !== 'string') {
      this.drop('bye', 'malformed');
      return;
    }
    const known = this.options.registry.get(bye.id);
    if (!known) {
      this.drop('bye', 'unknown-worker', { worker: bye.id });
      return;
    }
    if (known.instance !== bye.instance) {
      // A refused duplicate says bye as it stops: that must not take the live one offline.
      this.drop('bye', 'wrong-instance', { worker: bye.id });
      return;
    }
    this.options.registry.onBye(bye.id);
  }

  /** Forgets per-worker state of a worker the registry forgot. */
  forget(id: string): void {
    this.contenders.delete(id);
  }

  private heartbeatShape(hb: unknown): { reason: DropReason; detail?: Record<string, unknown> } | undefined {
    if (!isObject(hb) || hb.type !== 'heartbeat') return { reason: 'malformed' };
    if (typeof hb.id !== 'string' || !WORKER_ID_PATTERN.test(hb.id)) return { reason: 'malformed', detail: { field: 'id' } };
    if (typeof hb.instance !== 'string' || !INSTANCE_ID_PATTERN.test(hb.instance)) return { reason: 'malformed', detail: { worker: hb.id, field: 'instance' } };
    if (!Array.isArray(hb.models) || hb.models.some((m) => typeof m !== 'string' || m.length === 0 || m.length > MAX_MODEL_ID_LENGTH)) {
      return { reason: 'malformed', detail: { worker: hb.id, field: 'models' } };
    }
    if (hb.models.length > this.options.maxModels) return { reason: 'too-many-models', detail: { worker: hb.id, models: hb.models.length } };
    if (hb.state !== undefined && hb.state !== 'ready' && hb.state !== 'draining' && hb.state !== 'unhealthy') {
      return { reason: 'malformed', detail: { worker: hb.id, field: 'state' } };
    }
    for (const field of ['max_concurrent', 'in_flight', 'interval_ms'] as const) {
      const v = hb[field];
      if (v !== undefined && (typeof v !== 'number' || !Number.isFinite(v) || v < 0)) return { reason: 'malformed', detail: { worker: hb.id, field } };
    }
    return undefined;
  }

  private contend(id: string, instance: string): void {
    const contender = this.contenders.get(id);
    if (!contender || contender.instance !== instance) this.contenders.set(id, { instance, since: this.options.clock.now() });
    this.drop('heartbeat', 'duplicate-id', { worker: id, instance });
  }

  private refuse(id: string, instance: string): void {
    this.contenders.delete(id);
    const nc = this.options.nc;
    const reason = `another process with worker id '${id}' was already live on this NATS`;
    this.options.log.error({ worker: id, refusedInstance: instance }, `refused a second worker process with id '${id}': ids must be unique`);
    if (!nc || nc.isClosed()) return;
    const notice: RefuseMessage = { type: 'refuse', id, instance, reason };
    try {
      nc.publish(controlSubject(this.options.subjectPrefix, id), encode(notice));
    } catch {
      // Not connected right now: the contender is refused again at its next heartbeat.
    }
  }
}
