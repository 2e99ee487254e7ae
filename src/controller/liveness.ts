/**
 * Dead workers found through NATS itself. A killed worker's connection closes and the server drops
 * its subscriptions at once, so a request on the worker's control (cancel) subject gets "no
 * responders" within a round trip. The prober asks when there is reason to doubt: a heartbeat is
 * late, or an attempt on the worker has heard nothing for `probeAfterMs`. "No responders" marks
 * the worker offline, which ends its in-flight attempts at once so they fail over; any other
 * outcome (a pong, silence, our own connection down) proves nothing and changes nothing.
 */
import { errors, type NatsConnection } from '@nats-io/transport-node';
import type { Clock } from '../clock';
import type { Logger } from '../logger';
import { encode, type Subjects } from '../protocol';
import type { WorkerInfo, WorkerRegistry } from './registry';

export interface ProberOptions {
  nc: NatsConnection;
  subjects: Subjects;
  registry: WorkerRegistry;
  clock: Clock;
  log: Logger;
  /** Doubt threshold (ms): heartbeat this late, or an attempt this quiet. 0 turns probing off. */
  probeAfterMs: number;
  /** Longest wait for a probe's answer (ms, default 1000); silence is not "gone". */
  probeTimeoutMs?: number;
}

/** The probe body; workers ignore it as a cancel (no request_id) and 1.1 workers answer it. */
export const PING = { type: 'ping' } as const;

export class LivenessProber {
  private timer?: NodeJS.Timeout;
  private readonly probing = new Set<string>();
  private readonly lastProbe = new Map<string, number>();
  private readonly body = encode(PING);

  constructor(private readonly options: ProberOptions) {}

  start(): void {
    if (this.options.probeAfterMs <= 0 || this.timer) return;
    this.timer = setInterval(() => this.tick(), Math.max(25, Math.floor(this.options.probeAfterMs / 3)));
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Why `w` is in doubt now, or undefined. */
  doubt(w: WorkerInfo, now: number): string | undefined {
    const after = this.options.probeAfterMs;
    if (w.outstanding > 0 && now - w.lastActivityAt >= after) return `an attempt heard nothing for ${Math.round(now - w.lastActivityAt)} ms`;
    if (w.heartbeatMs > 0 && now - w.lastSeen >= w.heartbeatMs + after) return `heartbeat ${Math.round(now - w.lastSeen - w.heartbeatMs)} ms late`;
    return undefined;
  }

  /** One round: probes every online worker in doubt, at most one probe per worker at a time. */
  tick(): void {
    const { nc, clock, probeAfterMs } = this.options;
    if (nc.isClosed()) return;
    const now = clock.now();
    for (const w of this.options.registry.online()) {
      if (this.probing.has(w.id) || now - (this.lastProbe.get(w.id) ?? Number.NEGATIVE_INFINITY) < probeAfterMs) continue;
      const why = this.doubt(w, now);
      if (why) void this.probe(w.id, why);
    }
    for (const id of this.lastProbe.keys()) if (!this.options.registry.get(id)) this.lastProbe.delete(id);
  }

  /** Resolves true when NATS said nobody listens on the worker's control subject (then it is offline). */
  async probe(id: string, why = 'asked'): Promise<boolean> {
    const { nc, subjects, registry, clock, log } = this.options;
    this.probing.add(id);
    this.lastProbe.set(id, clock.now());
    try {
      await nc.request(subjects.cancel(id), this.body, { timeout: this.options.probeTimeoutMs ?? 1000 });
      return false;
    } catch (err) {
      if (err instanceof errors.RequestError && err.isNoResponders()) {
        log.warn({ worker: id, why }, 'worker gone: no responders on its control subject');
        registry.markOffline(id, 'no responders on its control subject');
        return true;
      }
      return false;
    } finally {
      this.probing.delete(id);
    }
  }
}
