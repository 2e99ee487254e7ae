/**
 * W3C Trace Context (`traceparent`, `tracestate`): every request belongs to one trace. The
 * controller keeps a client's trace id (or starts a trace when none or a malformed one came), each
 * hop (an attempt over NATS, the worker's call to an HTTP engine) sends a new parent id under that
 * trace id, and `tracestate` travels unchanged. Nothing is recorded here: spans are an exporter's
 * business; propagation alone lets an engine's traces join the client's.
 */
import { randomFillSync } from 'node:crypto';

export const TRACEPARENT = 'traceparent';
export const TRACESTATE = 'tracestate';

export interface TraceContext {
  traceId: string;
  parentId: string;
  flags: string;
}

const ZERO_TRACE = '0'.repeat(32);
const ZERO_SPAN = '0'.repeat(16);
// Version 00 has exactly four fields; a later version may append more (read the first four).
const PATTERN = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;

/** The header's context, or undefined when it is absent or invalid (then a new trace starts). */
export function parseTraceparent(value: string | undefined): TraceContext | undefined {
  if (typeof value !== 'string' || value.length > 512) return undefined;
  // The usual form (version 00, 55 characters, as this router writes it on every hop) is read
  // without the regular expression, which cost a match and five strings per hop.
  if (value.length === 55 && value.charCodeAt(0) === 48 && value.charCodeAt(1) === 48 && isHexWithDashes(value)) {
    const traceId = value.slice(3, 35);
    const parentId = value.slice(36, 52);
    if (traceId === ZERO_TRACE || parentId === ZERO_SPAN) return undefined;
    return { traceId, parentId, flags: value.slice(53, 55) };
  }
  const m = PATTERN.exec(value.trim());
  if (!m) return undefined;
  const [, version, traceId, parentId, flags, rest] = m;
  if (version === 'ff' || (version === '00' && rest !== undefined)) return undefined;
  if (traceId === ZERO_TRACE || parentId === ZERO_SPAN) return undefined;
  return { traceId, parentId, flags };
}

/** `00-<32 hex>-<16 hex>-<2 hex>`: dashes at 2, 35 and 52, lower-case hex everywhere else. */
function isHexWithDashes(v: string): boolean {
  for (let i = 0; i < 55; i++) {
    const c = v.charCodeAt(i);
    if (i === 2 || i === 35 || i === 52) {
      if (c !== 45) return false;
    } else if (!((c >= 48 && c <= 57) || (c >= 97 && c <= 102))) return false;
  }
  return true;
}

export function formatTraceparent(t: TraceContext): string {
  return `00-${t.traceId}-${t.parentId}-${t.flags}`;
}

/**
 * Random bytes for ids, drawn 4 KB at a time: `randomBytes(8)` for every hop went to OpenSSL (and a
 * getpid syscall) twice per request, the largest cost the trace headers added to a request. Trace
 * and parent ids are identifiers, not secrets.
 */
const POOL = Buffer.allocUnsafe(4096);
let poolAt = POOL.length;

/** `bytes` random bytes as hex, never all zeros (an invalid id in W3C Trace Context). */
export function randomHex(bytes: number): string {
  for (;;) {
    if (poolAt + bytes > POOL.length) {
      randomFillSync(POOL);
      poolAt = 0;
    }
    const start = poolAt;
    poolAt += bytes;
    for (let i = start; i < poolAt; i++) if (POOL[i] !== 0) return POOL.toString('hex', start, poolAt);
  }
}

/** The context of a new hop: the same trace (a new one when `parent` is absent), a new parent id. */
export function childTrace(parent: TraceContext | undefined): TraceContext {
  return {
    traceId: parent?.traceId ?? randomHex(16),
    parentId: randomHex(8),
    flags: parent?.flags ?? '00',
  };
}

/** A `traceparent` for the next hop after `incoming` (a header value, maybe absent or invalid). */
export function nextTraceparent(incoming: string | undefined): string {
  return formatTraceparent(childTrace(parseTraceparent(incoming)));
}

/** `tracestate` passes on as it came, when it is a sane header value. */
export function passTracestate(value: string | undefined): string | undefined {
  return typeof value === 'string' && value.length > 0 && value.length <= 512 && /^[\x20-\x7e]*$/.test(value) ? value : undefined;
}
