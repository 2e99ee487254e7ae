/**
 * Shared health signals: a controller publishes the breaker transitions it made by its own
 * judgement (opened, closed), and takes its peers' as evidence (BreakerBook.peerOpened and
 * peerClosed): a short open, or an early probe. Each controller still decides by its own probes.
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Logger } from '../logger';
import { decode, encode, WORKER_ID_PATTERN, type BreakerSignal } from '../protocol';
import type { BreakerBook, BreakerKind } from './breakers';

export interface BreakerSignalOptions {
  subject: string;
  controllerId: string;
  /** How long a peer's open opens ours (ms); 0 ignores peers (this controller still publishes). */
  peerOpenMs: number;
  log: Logger;
}

export class BreakerSignals {
  private readonly sub?: Subscription;

  constructor(
    private readonly nc: NatsConnection,
    breakers: Pick<BreakerBook, 'peerOpened' | 'peerClosed'>,
    private readonly options: BreakerSignalOptions,
  ) {
    if (options.peerOpenMs <= 0) return;
    this.sub = nc.subscribe(options.subject, {
      callback: (err, msg) => {
        const signal = err ? undefined : decode<BreakerSignal>(msg.data);
        if (!isPeerSignal(signal, options.controllerId)) return;
        options.log.info({ worker: signal.worker, state: signal.state, from: signal.controller }, 'peer breaker signal');
        if (signal.state === 'open') breakers.peerOpened(signal.worker, options.peerOpenMs);
        else breakers.peerClosed(signal.worker);
      },
    });
  }

  /** Shares a transition this controller made itself; peers' evidence and half-open stay local. */
  onTransition(worker: string, to: BreakerKind, cause: 'local' | 'peer'): void {
    if (cause !== 'local' || to === 'half-open' || this.nc.isClosed()) return;
    const signal: BreakerSignal = { type: 'breaker', controller: this.options.controllerId, worker, state: to };
    try {
      this.nc.publish(this.options.subject, encode(signal));
    } catch (err) {
      this.options.log.warn({ worker, err: (err as Error).message }, 'breaker signal not shared');
    }
  }

  close(): void {
    this.sub?.unsubscribe();
  }
}

/** A well-formed signal from another controller (the bus may carry anything). */
export function isPeerSignal(s: BreakerSignal | undefined, self: string): s is BreakerSignal {
  return (
    s?.type === 'breaker' &&
    typeof s.controller === 'string' &&
    s.controller !== self &&
    typeof s.worker === 'string' &&
    WORKER_ID_PATTERN.test(s.worker) &&
    (s.state === 'open' || s.state === 'closed')
  );
}
