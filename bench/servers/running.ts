/**
 * What every bench server role hands back to bench/child.ts, and the one reply inbox the floors
 * share their replies on.
 */
import { createInbox, type Msg, type NatsConnection } from '@nats-io/transport-node';

/** A started role: its URL (HTTP servers), extra stats for the IPC `stats` answer, and stop. */
export interface Running {
  url?: string;
  stats?: () => { pendingReplies?: number; workersOnline?: number; workersIdle?: number };
  stop(): Promise<void>;
}

export interface SharedInbox {
  /** A reply subject whose messages go to `handler` until `forget(subject)`. */
  open(handler: (msg: Msg) => void): string;
  forget(subject: string): void;
  /** Handlers registered now. */
  readonly size: number;
  close(): void;
}

/**
 * One wildcard subscription for every reply, routed by its last token, as the router's ReplyMux
 * does: the cheapest way NATS offers to wait for many replies (no subscription per request).
 */
export function sharedInbox(nc: NatsConnection): SharedInbox {
  const prefix = createInbox();
  const handlers = new Map<string, (msg: Msg) => void>();
  let seq = 0;
  const sub = nc.subscribe(`${prefix}.*`, {
    callback: (err, msg) => {
      if (!err) handlers.get(msg.subject)?.(msg);
    },
  });
  return {
    open(handler) {
      const subject = `${prefix}.${(seq++).toString(36)}`;
      handlers.set(subject, handler);
      return subject;
    },
    forget: (subject) => void handlers.delete(subject),
    get size() {
      return handlers.size;
    },
    close: () => sub.unsubscribe(),
  };
}
