/**
 * Messages larger than one NATS message (the server's max_payload, 1 MiB by default) travel in
 * numbered parts on core NATS: a long prompt or an image from controller to worker, a long
 * buffered answer back. Each part is a slice of the message's bytes with `Mlx-Part: i/n`; the
 * receiver joins the n slices in order. Core NATS keeps one publisher's messages to one subject
 * in order, so parts never need reordering; a lost part shows as an incomplete message, which
 * the deadline ends. (JetStream's object store would also do, but not every server runs
 * JetStream, and a request must not need a stream, a bucket and their clean-up.)
 */
import type { MsgHdrs, NatsConnection } from '@nats-io/transport-node';
import { headers as natsHeaders } from '@nats-io/transport-node';

export const HDR_PART = 'Mlx-Part';

/** Room left in each part for headers (request id, deadline, part number...). */
const HEADER_ROOM = 16 * 1024;

/** Largest part payload for this connection's server (bytes). */
export function partSize(nc: NatsConnection): number {
  const max = nc.info?.max_payload ?? 1024 * 1024;
  return Math.max(4096, max - HEADER_ROOM);
}

/**
 * Publishes `data` as one message, or as numbered parts when it does not fit. `headers` builds
 * each message's headers afresh (every part carries them all).
 */
export function publishParts(nc: NatsConnection, subject: string, data: Uint8Array, options: { reply?: string; headers?: () => MsgHdrs } = {}): void {
  const size = partSize(nc);
  if (data.length <= size) {
    nc.publish(subject, data, { reply: options.reply, headers: options.headers?.() });
    return;
  }
  const n = Math.ceil(data.length / size);
  for (let i = 0; i < n; i++) {
    const h = options.headers?.() ?? natsHeaders();
    h.set(HDR_PART, `${i + 1}/${n}`);
    nc.publish(subject, data.subarray(i * size, (i + 1) * size), { reply: options.reply, headers: h });
  }
}

/** `Mlx-Part: i/n` read, or undefined for a whole message. */
export function readPart(hdrs: MsgHdrs | undefined): { index: number; count: number } | undefined {
  const v = hdrs?.get(HDR_PART);
  if (!v) return undefined;
  const m = /^(\d{1,6})\/(\d{1,6})$/.exec(v);
  if (!m) return { index: 0, count: 0 };
  return { index: Number(m[1]), count: Number(m[2]) };
}

/**
 * Joins the parts of one message. `add` returns the whole message once its last part is in,
 * undefined while parts are missing, or an Error for parts out of order, malformed or over
 * `maxBytes` (the sender's bug or a peer's garbage: the caller refuses the message).
 */
export class PartJoiner {
  private parts: Uint8Array[] = [];
  private bytes = 0;
  private count = 0;

  constructor(private readonly maxBytes: number) {}

  /** True while a message is half joined. */
  get pending(): boolean {
    return this.parts.length > 0;
  }

  add(data: Uint8Array, part: { index: number; count: number }): Uint8Array | undefined | Error {
    if (part.count < 1 || part.index < 1 || part.index > part.count) return this.fail(`malformed part header ${part.index}/${part.count}`);
    if (this.parts.length === 0) this.count = part.count;
    if (part.count !== this.count || part.index !== this.parts.length + 1) return this.fail(`part ${part.index}/${part.count} arrived out of order`);
    this.bytes += data.length;
    if (this.bytes > this.maxBytes) return this.fail(`message over ${this.maxBytes} bytes`);
    // NATS may reuse the buffer it hands a callback: keep a copy.
    this.parts.push(data.slice());
    if (this.parts.length < this.count) return undefined;
    const whole = new Uint8Array(this.bytes);
    let at = 0;
    for (const p of this.parts) {
      whole.set(p, at);
      at += p.length;
    }
    this.reset();
    return whole;
  }

  reset(): void {
    this.parts = [];
    this.bytes = 0;
    this.count = 0;
  }

  private fail(message: string): Error {
    this.reset();
    return new Error(message);
  }
}
