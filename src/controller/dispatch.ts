/**
 * The terminal step of every chain: one NATS request to the selected worker. Replies arrive on
 * one shared wildcard inbox subscription (ReplyMux), never a subscription per request. This is the
 * one place NATS outcomes are translated into RouterErrors.
 */
import { randomUUID } from 'node:crypto';
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import { createInbox } from '@nats-io/transport-node';
import type { Middleware, RouteContext } from '../context';
import { isErrorCode, isRouterError, OUTCOME_CLASSES, RouterError, type OutcomeClass } from '../errors';
import {
  decode,
  encode,
  HDR_SEQ,
  isNoResponders,
  requestHeaders,
  type Subjects,
  type WireEnd,
  type WireError,
  type WireReply,
  type WireResult,
} from '../protocol';
import { PROTOCOL_V2, wireRequestFor } from '../protocol-v2';
import { nextTraceparent, passTracestate } from '../trace';
import { PartJoiner, publishParts, readPart } from '../parts';

/** Largest answer joined from parts (bytes). */
const MAX_ANSWER_BYTES = 256 * 1024 * 1024;
import { replyProblem, type BusGuard } from './bus-guard';
import type { WorkerInfo, WorkerRegistry } from './registry';

type Handler = (msg: Msg) => void;

/** One wildcard subscription that routes replies to per-request handlers by the last token. */
export class ReplyMux {
  private readonly prefix: string;
  private readonly handlers = new Map<string, Handler>();
  private readonly sub: Subscription;
  private seq = 0;

  /** `inboxPrefix`: the controller's own reply prefix (nats.inboxPrefix), so permissions can name it. */
  constructor(nc: NatsConnection, inboxPrefix?: string) {
    this.prefix = createInbox(inboxPrefix);
    this.sub = nc.subscribe(`${this.prefix}.*`, {
      callback: (err, msg) => {
        if (err) return;
        const token = msg.subject.slice(this.prefix.length + 1);
        this.handlers.get(token)?.(msg);
      },
    });
  }

  /** Every reply subject of this mux starts with this and a dot (controller heartbeats tell workers). */
  get replyPrefix(): string {
    return this.prefix;
  }

  /** Registered handlers now: a leak shows here first. */
  get size(): number {
    return this.handlers.size;
  }

  register(handler: Handler): { subject: string; close: () => void } {
    const token = (this.seq++).toString(36);
    this.handlers.set(token, handler);
    return { subject: `${this.prefix}.${token}`, close: () => this.handlers.delete(token) };
  }

  close(): void {
    this.handlers.clear();
    this.sub.unsubscribe();
  }
}

export interface DispatchDeps {
  nc: NatsConnection;
  mux: ReplyMux;
  subjects: Subjects;
  registry: WorkerRegistry;
  /** Counts replies dropped for a wrong token or instance (they are checked either way). */
  guard?: BusGuard;
}

function knownFailureClass(outcome: unknown): OutcomeClass | undefined {
  return typeof outcome === 'string' && outcome !== 'success' && (OUTCOME_CLASSES as readonly string[]).includes(outcome)
    ? (outcome as OutcomeClass)
    : undefined;
}

/** A worker's wire error as a RouterError; unknown codes become WORKER_ERROR. */
export function fromWireError(reply: WireError, worker: string): RouterError {
  const code = isErrorCode(reply.code) ? reply.code : 'WORKER_ERROR';
  return new RouterError(code, `worker ${worker}: ${String(reply.message ?? 'error')}`, {
    // A peer's class is trusted only when it is a real failure class; else the code's own class.
    outcome: knownFailureClass(reply.outcome),
    worker,
    fromWorker: true,
    retryAfterMs: typeof reply.retry_after_ms === 'number' ? reply.retry_after_ms : undefined,
  });
}

/** Why an attempt's signal aborted, as a RouterError (a timeout unless someone said otherwise). */
function abortReason(signal: AbortSignal, worker: string): RouterError {
  const r = signal.reason;
  if (isRouterError(r)) return r;
  return new RouterError('WORKER_TIMEOUT', `worker ${worker} did not answer in time`, { worker, cause: r });
}

/**
 * After the first chunk reached the client, every failure is a committed one. Deadline
 * codes keep their own code (each deadline has one); anything else becomes STREAM_INTERRUPTED.
 */
export function committed(err: RouterError, worker: string): RouterError {
  if (err.outcome === 'committed' || err.outcome === 'cancelled') return err;
  const keep = err.code === 'STREAM_IDLE_TIMEOUT' || err.code === 'REQUEST_TIMEOUT';
  return new RouterError(keep ? err.code : 'STREAM_INTERRUPTED', `stream from worker ${worker} broke after it started: ${err.message}`, {
    outcome: 'committed',
    worker,
    cause: err,
  });
}

/** The terminal middleware: sends the request to `ctx.worker` and fills `ctx.result` or streams. */
export function dispatch(deps: DispatchDeps): Middleware {
  return async function dispatch(ctx: RouteContext): Promise<void> {
    const worker = ctx.worker;
    if (!worker) throw new RouterError('INTERNAL_ERROR', 'no worker was selected before dispatch (is `select` in cluster.pipeline?)');
    const started = ctx.clock.now();
    let answered = false;
    deps.registry.begin(worker);
    try {
      await exchange(ctx, worker, deps);
      answered = true;
    } finally {
      // The selection signal is the time to first token, never a whole answer's duration; only a
      // buffered answer from a 1.0 worker (no progress) has nothing better than its duration.
      const first = ctx.attempt.firstTokenAt;
      const latency = first !== undefined ? first - started : answered && !ctx.stream ? ctx.clock.now() - started : undefined;
      deps.registry.end(worker, answered || first !== undefined ? latency : undefined);
    }
  };
}

function exchange(ctx: RouteContext, worker: WorkerInfo, deps: DispatchDeps): Promise<void> {
  const { signal } = ctx.attempt;
  return new Promise<void>((resolve, reject) => {
    let expected = 0;
    let settled = false;
    // The attempt's secret: the worker echoes it on every message, a cancel names it, and nothing
    // without it (or from another instance of the worker id) is believed (docs/security.md).
    const token = randomUUID();
    const instance = worker.instance || undefined;
    // Cancels the worker's work when we stop listening before it finished.
    const finish = (err?: RouterError, cancelWorker = false): void => {
      if (settled) return;
      settled = true;
      reg.close();
      unwatch();
      signal.removeEventListener('abort', onAbort);
      if (cancelWorker && !deps.nc.isClosed()) {
        deps.nc.publish(deps.subjects.cancel(worker.id), encode({ request_id: ctx.requestId, attempt: ctx.attempt.number, reply: reg.subject, token }));
      }
      if (err) reject(ctx.sink?.committed && ctx.attempt.chunks > 0 ? committed(err, worker.id) : err);
      else resolve();
    };
    const onAbort = (): void => finish(abortReason(signal, worker.id), true);

    const tokenSeen = (): void => {
      ctx.attempt.firstTokenAt ??= ctx.clock.now();
      ctx.attempt.progress();
    };
    let joiner: PartJoiner | undefined;
    const reg = deps.mux.register((msg) => {
      if (settled) return;
      if (isNoResponders(msg)) {
        finish(new RouterError('WORKER_UNAVAILABLE', `worker ${worker.id} is not listening (no responders)`, { worker: worker.id }));
        return;
      }
      const problem = replyProblem(msg, token, instance);
      if (problem) {
        deps.guard?.drop('reply', problem, { worker: worker.id, requestId: ctx.requestId });
        return;
      }
      // Only a reply that carries the attempt's token proves the worker alive (the liveness probe reads it).
      deps.registry.heard(worker);
      // A buffered answer larger than one NATS message arrives in numbered parts.
      const part = readPart(msg.headers);
      let data = msg.data;
      if (part) {
        const whole = (joiner ??= new PartJoiner(MAX_ANSWER_BYTES)).add(msg.data, part);
        if (whole === undefined) {
          ctx.attempt.progress();
          return;
        }
        if (whole instanceof Error) {
          finish(new RouterError('WORKER_ERROR', `worker ${worker.id} sent a bad answer part: ${whole.message}`, { worker: worker.id }), true);
          return;
        }
        data = whole;
      }
      const reply = decode<WireReply>(data);
      if (!reply || typeof reply !== 'object') {
        finish(new RouterError('WORKER_ERROR', `worker ${worker.id} sent an unreadable reply`, { worker: worker.id }), true);
        return;
      }
      if (reply.type === 'error') {
        finish(fromWireError(reply, worker.id));
        return;
      }
      // Protocol 1.1: "still generating". Outside a stream's sequence; a stream ignores it.
      if (reply.type === 'progress') {
        // `tokens` 0: keep-alive from a worker whose engine cannot show this answer's tokens; it
        // proves the worker alive (the limits follow it) but is no first token.
        if (!ctx.stream) {
          if (reply.tokens === 0) ctx.attempt.progress();
          else tokenSeen();
        }
        return;
      }
      if (!ctx.stream) {
        if (reply.type === 'result') {
          ctx.result = reply as WireResult;
          finish();
        } else {
          finish(new RouterError('WORKER_ERROR', `worker ${worker.id} sent '${String(reply.type)}' to a buffered request`, { worker: worker.id }), true);
        }
        return;
      }
      // The body's seq is parsed already; decoding the NATS headers for it costs ~0.5 µs a chunk.
      // (MsgHdrs.get returns "" for a missing header, so `?? body.seq` never fell back.)
      const bodySeq = (reply as { seq?: unknown }).seq;
      const seq = typeof bodySeq === 'number' ? bodySeq : Number(msg.headers?.get(HDR_SEQ));
      if (seq !== expected) {
        const what = seq < expected ? 'duplicate' : 'gap';
        finish(new RouterError('STREAM_INTERRUPTED', `stream from worker ${worker.id}: sequence ${what} (expected ${expected}, got ${seq})`, { worker: worker.id }), true);
        return;
      }
      expected++;
      if (reply.type === 'chunk') {
        if (ctx.attempt.chunks++ === 0) ctx.attempt.firstChunkAt = ctx.clock.now();
        tokenSeen();
        const sink = ctx.sink;
        const delivered = Array.isArray(reply.choices) && sink?.writeChoices ? sink.writeChoices(reply.choices) : sink?.write(String(reply.text ?? ''));
        if (!delivered) {
          finish(new RouterError('STREAM_INTERRUPTED', 'client reads too slowly: stream buffer cap reached', { worker: worker.id, outcome: 'cancelled' }), true);
        }
      } else if (reply.type === 'end') {
        ctx.end = reply as WireEnd;
        finish();
      } else {
        finish(new RouterError('WORKER_ERROR', `worker ${worker.id} sent '${String(reply.type)}' to a stream`, { worker: worker.id }), true);
      }
    });

    // A worker that goes offline mid-attempt (crash: heartbeats stop) ends the attempt now.
    const unwatch = deps.registry.watch(worker, (reason, source) =>
      finish(
        source === 'transport'
          ? new RouterError('NATS_DISCONNECTED', `lost the reply from worker ${worker.id}: ${reason}`, { worker: worker.id })
          : new RouterError('WORKER_UNAVAILABLE', `worker ${worker.id} went offline during the request (${reason})`, { worker: worker.id, outcome: 'ambiguous' }),
        true,
      ),
    );
    if (signal.aborted) {
      onAbort();
      return;
    }
    signal.addEventListener('abort', onAbort, { once: true });
    const remaining = ctx.deadline - ctx.clock.now();
    try {
      const wire = wireRequestFor(worker.version, ctx.request, ctx.continuation || undefined);
      // This attempt is a new span under the request's trace; tracestate passes through unchanged.
      const traceparent = (ctx.attempt.traceparent = nextTraceparent(ctx.headers.traceparent));
      const tracestate = passTracestate(ctx.headers.tracestate);
      const headers = () =>
        requestHeaders({ requestId: ctx.requestId, attempt: ctx.attempt.number, deadlineMs: remaining, stream: ctx.stream, token, traceparent, tracestate, progress: worker.progressMs > 0 });
      // v2 workers join a request sent in parts; a v1 worker gets one message or REQUEST_TOO_LARGE.
      if (worker.version >= PROTOCOL_V2) publishParts(deps.nc, deps.subjects.infer(worker.id), encode(wire), { reply: reg.subject, headers });
      else deps.nc.publish(deps.subjects.infer(worker.id), encode(wire), { reply: reg.subject, headers: headers() });
    } catch (err) {
      // A local failure says nothing about the worker: never "worker gone".
      const message = (err as Error).message;
      finish(
        /max_payload/.test(message)
          ? new RouterError('REQUEST_TOO_LARGE', `the request is larger than the NATS server's max_payload: ${message}`, { param: 'messages', cause: err })
          : new RouterError('NATS_DISCONNECTED', `cannot publish to worker ${worker.id}: ${message}`, { worker: worker.id, cause: err }),
      );
    }
  });
}
