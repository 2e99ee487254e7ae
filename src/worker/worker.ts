/**
 * A worker: serves protocol v1 on its own inference subject, up to `maxConcurrent` requests at
 * once (never an unbounded queue), honours cancels and deadlines, heartbeats its load, and on
 * shutdown stops taking work, lets in-flight requests finish (bounded), deregisters and closes.
 */
import type { Msg, MsgHdrs, NatsConnection, Subscription } from '@nats-io/transport-node';
import { randomUUID } from 'node:crypto';
import type { Clock } from '../clock';
import { systemClock } from '../clock';
import type { ErrorCode, OutcomeClass } from '../errors';
import { ERROR_CATALOGUE } from '../errors';
import type { Logger } from '../logger';
import {
  controlSubject,
  decode,
  DEFAULT_SUBJECT_PREFIX,
  encode,
  HDR_INSTANCE,
  HDR_SEQ,
  HDR_TOKEN,
  makeSubjects,
  PROTOCOL_VERSION,
  readRequestHeaders,
  type CancelMessage,
  type ControlMessage,
  type ControlReply,
  type Heartbeat,
  type RefuseMessage,
  type Subjects,
  type WireError,
  type WireReply,
  type WireRequest,
} from '../protocol';
import { headers as natsHeaders } from '@nats-io/transport-node';
import { hostname } from 'node:os';
import { isWireRequestV2, type Capability, type ChoiceDelta } from '../protocol-v2';
import { PartJoiner, publishParts, readPart } from '../parts';
import { flushWithin } from '../nats';
import { DeltaRelay } from './delta-relay';
import { EngineError, type Engine, type EngineResult, type GenerateContext } from './engine';
import { readWireRequestV2 } from './request-v2';
import { validateWireRequest } from './validate';

export interface WorkerOptions {
  nc: NatsConnection;
  id: string;
  engine: Engine;
  log: Logger;
  /** Requests served at once (default 8). */
  maxConcurrent?: number;
  /** Heartbeat period in ms (default 2000). */
  heartbeatIntervalMs?: number;
  /** Subject prefix (default mlx.v1). */
  subjectPrefix?: string;
  /** How long shutdown waits for in-flight requests before cancelling them (default 10000 ms). */
  drainTimeoutMs?: number;
  /**
   * Protocol 1.1: buffered requests that ask for it get a `progress` message at their first token
   * and then at most this often while tokens flow (ms, default 250).
   */
  progressIntervalMs?: number;
  clock?: Clock;
  /**
   * A controller refused this instance: another live worker process already serves this id. The
   * worker has stopped taking work when this is called; the process should exit with the message.
   */
  onRefused?: (message: string) => void;
  /** Random generator for the discovery-answer jitter (default Math.random). */
  random?: () => number;
}

/** Largest request a worker joins from parts (bytes): 64 MiB, four times the default HTTP body limit. */
const MAX_REQUEST_BYTES = 64 * 1024 * 1024;

/** Largest coalesced chunk (characters; JSON escaping at most doubles it, far below 1 MiB). */
const MAX_CHUNK_CHARS = 16 * 1024;

/** `usage_estimated: true` on the wire only when the engine counted usage itself. */
const estimated = (r: EngineResult): { usage_estimated?: true } => (r.usageEstimated ? { usage_estimated: true } : {});

interface InFlight {
  controller: AbortController;
  done: Promise<void>;
  requestId: string;
  attempt: number;
  /** The attempt's token: a cancel must name it. */
  token: string;
}

export class Worker {
  readonly id: string;
  /** This process's instance id: random, fixed at start, in heartbeats, byes and reply headers. */
  readonly instance = randomUUID();
  private readonly nc: NatsConnection;
  private readonly engine: Engine;
  private readonly log: Logger;
  private readonly maxConcurrent: number;
  private readonly heartbeatIntervalMs: number;
  private readonly drainTimeoutMs: number;
  private readonly progressIntervalMs: number;
  private readonly subjects: Subjects;
  private readonly prefix: string;
  private readonly clock: Clock;
  private readonly inFlight = new Map<string, InFlight>();
  /** Large requests whose parts are still arriving, by reply subject. */
  private readonly joining = new Map<string, { joiner: PartJoiner; timer: NodeJS.Timeout }>();
  private readonly subs: Subscription[] = [];
  private heartbeatTimer?: NodeJS.Timeout;
  private readonly onRefused?: (message: string) => void;
  /** Why a controller refused this instance (its id is served by another live process), once it did. */
  refusedBecause: string | undefined;
  private readonly random: () => number;
  /** Discovery answers: at most one per heartbeat interval, after a random delay. */
  private discoveryTimer?: NodeJS.Timeout;
  private lastDiscoveryAnswer = Number.NEGATIVE_INFINITY;
  /** Messages dropped (bad cancels, control messages for someone else), for the stop log line. */
  private dropped = 0;
  private state: 'new' | 'ready' | 'draining' | 'stopped' = 'new';
  /** Drained by an operator (control subject): finishes its work, takes none, until undrained. */
  private adminDrained = false;
  private readonly drainedModels = new Set<string>();
  /** Changes whenever the engine's prompt cache starts empty: this start, or the engine coming back. */
  private cacheEpoch = randomUUID();
  private engineWasHealthy = true;

  constructor(options: WorkerOptions) {
    this.nc = options.nc;
    this.id = options.id;
    this.engine = options.engine;
    this.log = options.log;
    this.maxConcurrent = options.maxConcurrent ?? 8;
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? 2000;
    this.drainTimeoutMs = options.drainTimeoutMs ?? 10_000;
    this.progressIntervalMs = options.progressIntervalMs ?? 250;
    this.prefix = options.subjectPrefix ?? DEFAULT_SUBJECT_PREFIX;
    this.subjects = makeSubjects(this.prefix);
    this.clock = options.clock ?? systemClock;
    this.onRefused = options.onRefused;
    this.random = options.random ?? Math.random;
  }

  async start(): Promise<void> {
    if (this.state !== 'new') throw new Error('worker already started');
    const on = (subject: string, handle: (msg: Msg) => void): void => {
      this.subs.push(this.nc.subscribe(subject, { callback: (err, msg) => { if (!err) handle(msg); } }));
    };
    on(this.subjects.infer(this.id), (msg) => this.onInfer(msg));
    on(this.subjects.cancel(this.id), (msg) => this.onCancel(msg));
    on(this.subjects.discover, () => this.onDiscover());
    // One control subject: a refused duplicate id (docs/security.md) or an operator's drain/undrain.
    on(controlSubject(this.prefix, this.id), (msg) => this.onControl(msg));
    // The server must know our subscriptions before anyone is told we exist.
    await this.nc.flush();
    this.state = 'ready';
    this.heartbeat();
    this.heartbeatTimer = setInterval(() => this.heartbeat(), this.heartbeatIntervalMs);
    const engine = { worker: this.id, engine: this.engine.name, engineUrl: this.engine.url, models: this.engine.models(), maxConcurrent: this.maxConcurrent };
    if (this.engine.healthy?.() === false) {
      this.log.warn(engine, `worker online, but its engine${this.engine.url ? ` at ${this.engine.url}` : ''} does not answer: it reports unhealthy and takes no work`);
    } else {
      this.log.info(engine, `worker ready, engine ${this.engine.name}${this.engine.url ? ` at ${this.engine.url}` : ''}`);
    }
  }

  /** Stops taking work, waits for in-flight requests (bounded), cancels the rest, says bye. */
  async stop(): Promise<void> {
    if (this.state === 'stopped' || this.state === 'draining') return;
    this.state = 'draining';
    this.heartbeat();
    const pending = [...this.inFlight.values()].map((f) => f.done);
    if (pending.length > 0) {
      this.log.info({ worker: this.id, inFlight: pending.length }, 'draining in-flight requests');
      const timeout = new AbortController();
      await Promise.race([Promise.all(pending), this.clock.sleep(this.drainTimeoutMs, timeout.signal).catch(() => undefined)]);
      timeout.abort();
      for (const f of this.inFlight.values()) f.controller.abort(new EngineError('WORKER_ERROR', 'worker shutting down'));
      await Promise.all([...this.inFlight.values()].map((f) => f.done));
    }
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
    for (const j of this.joining.values()) clearTimeout(j.timer);
    this.joining.clear();
    if (this.discoveryTimer) clearTimeout(this.discoveryTimer);
    this.discoveryTimer = undefined;
    for (const sub of this.subs) sub.unsubscribe();
    this.subs.length = 0;
    if (!this.nc.isClosed()) {
      this.nc.publish(this.subjects.bye, encode({ type: 'bye', id: this.id, instance: this.instance }));
      // Bounded: with NATS down a flush waits for a reconnect that may never come.
      await flushWithin(this.nc);
    }
    this.state = 'stopped';
    this.log.info({ worker: this.id, ...(this.dropped > 0 ? { droppedMessages: this.dropped } : {}) }, 'worker stopped');
  }

  private heartbeat(): void {
    if (this.nc.isClosed() || this.state === 'new' || this.state === 'stopped') return;
    const healthy = this.engine.healthy?.() !== false;
    // An engine back from being down has most likely restarted with an empty cache.
    if (healthy && !this.engineWasHealthy) this.cacheEpoch = randomUUID();
    this.engineWasHealthy = healthy;
    const cacheSize = this.engine.promptCacheSize;
    const hb: Heartbeat = {
      type: 'heartbeat',
      version: PROTOCOL_VERSION,
      id: this.id,
      models: [...this.engine.models()],
      engine: this.engine.name,
      max_concurrent: this.maxConcurrent,
      in_flight: this.inFlight.size,
      state: this.reportedState(),
      interval_ms: this.heartbeatIntervalMs,
      continuation: this.engine.supportsContinuation === true,
      host: hostname(),
      pid: process.pid,
      draining_models: [...this.drainedModels],
      progress_ms: this.progressIntervalMs,
      capabilities: this.capabilities(),
      ...(cacheSize !== undefined && cacheSize > 0 ? { prompt_cache: { size: cacheSize, epoch: this.cacheEpoch } } : {}),
      instance: this.instance,
    };
    this.nc.publish(this.subjects.heartbeat, encode(hb));
  }

  private reportedState(): Heartbeat['state'] {
    if (this.state !== 'ready' || this.adminDrained) return 'draining';
    return this.engine.healthy?.() === false ? 'unhealthy' : 'ready';
  }

  /** An operator's drain or undrain (the whole worker, or one model); answered, then told to all by heartbeat. */
  private onOperatorControl(msg: Msg, control: Partial<ControlMessage>): void {
    const answer = (error?: string): void => {
      const body: ControlReply = { ok: !error, state: this.reportedState(), draining_models: [...this.drainedModels], ...(error ? { error } : {}) };
      if (msg.reply && !this.nc.isClosed()) this.nc.publish(msg.reply, encode(body));
    };
    if ((control.action !== 'drain' && control.action !== 'undrain') || (control.model !== undefined && typeof control.model !== 'string')) {
      answer('control message must be {"action": "drain"|"undrain", "model"?: string}');
      return;
    }
    const drain = control.action === 'drain';
    if (control.model !== undefined) {
      if (drain) this.drainedModels.add(control.model);
      else this.drainedModels.delete(control.model);
    } else {
      this.adminDrained = drain;
    }
    this.log.info({ worker: this.id, action: control.action, model: control.model }, 'operator control');
    answer();
    this.heartbeat();
  }

  /** v2: what each model is served for (engines without a say: chat). */
  private capabilities(): Record<string, Capability[]> {
    const out: Record<string, Capability[]> = {};
    for (const m of this.engine.models()) out[m] = [...(this.engine.capabilities?.(m) ?? ['chat'])];
    return out;
  }

  /**
   * Answers a controller's discovery with a heartbeat, at most once per heartbeat interval and after
   * a random delay of up to a quarter interval: a flood of discovers costs one heartbeat per worker
   * per interval, and many workers do not all answer in the same instant.
   */
  private onDiscover(): void {
    if (this.discoveryTimer || this.state !== 'ready') return;
    const now = this.clock.now();
    if (now - this.lastDiscoveryAnswer < this.heartbeatIntervalMs) return;
    this.lastDiscoveryAnswer = now;
    this.discoveryTimer = setTimeout(() => {
      this.discoveryTimer = undefined;
      this.heartbeat();
    }, Math.floor(this.random() * Math.min(250, this.heartbeatIntervalMs / 4)));
  }

  /**
   * A controller's message on this worker's control subject: an operator action (it has `action`),
   * or a notice, of which only a refusal of this very instance acts.
   */
  private onControl(msg: Msg): void {
    const notice = decode<RefuseMessage | Partial<ControlMessage>>(msg.data);
    if (notice && typeof notice === 'object' && 'action' in notice) {
      this.onOperatorControl(msg, notice);
      return;
    }
    if (!notice || typeof notice !== 'object' || !('type' in notice) || notice.type !== 'refuse' || notice.instance !== this.instance) {
      this.drop('control message not for this instance');
      return;
    }
    const message =
      `worker id '${this.id}' is already served by another live worker process on this NATS ` +
      `(instance ${this.instance} refused: ${String(notice.reason ?? 'duplicate id').slice(0, 200)}); give every worker a unique --id`;
    this.log.error({ worker: this.id, instance: this.instance }, message);
    // Known at once: stopping may close the connection before `onRefused` runs.
    this.refusedBecause = message;
    void this.stop().finally(() => this.onRefused?.(message));
  }

  /** Counts a dropped bus message; the log says so once per 100 (a flood must not flood the log). */
  private drop(reason: string): void {
    if (this.dropped++ % 100 === 0) this.log.warn({ worker: this.id, reason, dropped: this.dropped }, 'dropped a bus message');
  }

  private onCancel(msg: Msg): void {
    const cancel = decode<CancelMessage>(msg.data);
    // A controller's liveness probe: answering it (protocol 1.1) settles the probe at once.
    if (msg.reply && (cancel as { type?: unknown } | undefined)?.type === 'ping') {
      msg.respond(encode({ type: 'pong', id: this.id }));
      return;
    }
    if (!cancel || typeof cancel !== 'object' || typeof cancel.request_id !== 'string') {
      this.drop('malformed cancel');
      return;
    }
    const found = typeof cancel.reply === 'string' ? this.inFlight.get(cancel.reply) : undefined;
    // A cancel must name the attempt's token: a forged one cannot stop someone else's request.
    const flight = found && typeof cancel.token === 'string' && cancel.token === found.token ? found : undefined;
    if (found && !flight) this.drop('cancel without the attempt token');
    if (flight) {
      this.log.debug({ requestId: cancel.request_id, attempt: cancel.attempt }, 'cancelled by controller');
      flight.controller.abort(new Error('cancelled'));
    }
  }

  /** A request message, or one part of a large one (joined per reply subject, then served). */
  private onInfer(msg: Msg): void {
    const part = readPart(msg.headers);
    if (!part || !msg.reply) {
      this.onRequest(msg, msg.data);
      return;
    }
    const reply = msg.reply;
    let joining = this.joining.get(reply);
    if (!joining) {
      // Bounded: a peer cannot make the worker hold more than a few large requests half joined.
      if (this.joining.size >= this.maxConcurrent * 2) return;
      const deadline = readRequestHeaders(msg.headers).deadlineMs;
      const timer = setTimeout(() => this.joining.delete(reply), Number.isFinite(deadline) ? Math.min(deadline, 120_000) : 120_000);
      joining = { joiner: new PartJoiner(MAX_REQUEST_BYTES), timer };
      this.joining.set(reply, joining);
    }
    const whole = joining.joiner.add(msg.data, part);
    if (whole === undefined) return;
    clearTimeout(joining.timer);
    this.joining.delete(reply);
    if (whole instanceof Error) {
      const code = 'REQUEST_VALIDATION_FAILED';
      this.nc.publish(reply, encode({ type: 'error', code, outcome: ERROR_CATALOGUE[code].outcome, message: `request parts: ${whole.message}` }));
      return;
    }
    this.onRequest(msg, whole);
  }

  private onRequest(msg: Msg, data: Uint8Array): void {
    const reply = msg.reply;
    if (!reply) return;
    const meta = readRequestHeaders(msg.headers);
    if (meta.deadlineMs <= 0) return; // the controller has already given up on it
    const token = meta.token ?? '';
    // Every message to the reply subject carries the attempt's token and this instance: the
    // controller drops anything without them (docs/security.md).
    const replyHeaders = (): MsgHdrs => {
      const h = natsHeaders();
      if (token) h.append(HDR_TOKEN, token);
      h.append(HDR_INSTANCE, this.instance);
      return h;
    };
    // v2 controllers join parts: a buffered answer larger than one NATS message goes in parts.
    let partsOk = false;
    const send = (body: WireReply, seq?: number): void => {
      if (this.nc.isClosed()) return;
      if (seq === undefined) {
        if (partsOk) publishParts(this.nc, reply, encode(body), { headers: replyHeaders });
        else this.nc.publish(reply, encode(body), { headers: replyHeaders() });
      } else {
        const h = replyHeaders();
        h.append(HDR_SEQ, String(seq));
        this.nc.publish(reply, encode(body), { headers: h });
      }
    };
    const fail = (code: ErrorCode, message: string, extra: Partial<WireError> = {}): void =>
      send({ type: 'error', code, outcome: ERROR_CATALOGUE[code].outcome as OutcomeClass, message, ...extra }, extra.seq);

    if (this.state !== 'ready') {
      fail('WORKER_UNAVAILABLE', `worker ${this.id} is shutting down`);
      return;
    }
    if (this.adminDrained) {
      fail('WORKER_UNAVAILABLE', `worker ${this.id} is drained by an operator`);
      return;
    }
    // Refused like "not delivered" (retried elsewhere at once), not failed: no work was attempted.
    if (this.engine.healthy?.() === false) {
      fail('WORKER_UNAVAILABLE', `worker ${this.id}: its ${this.engine.name} engine is not answering`);
      return;
    }
    const raw = decode<unknown>(data);
    partsOk = isWireRequestV2(raw);
    const parsed = partsOk ? readWireRequestV2(raw) : validateWireRequest(raw);
    if (typeof parsed === 'string') {
      fail('REQUEST_VALIDATION_FAILED', parsed);
      return;
    }
    if (!this.engine.models().includes(parsed.model)) {
      fail('MODEL_NOT_FOUND', `worker ${this.id} does not serve model ${parsed.model}`);
      return;
    }
    if (this.drainedModels.has(parsed.model)) {
      fail('WORKER_UNAVAILABLE', `worker ${this.id}: model ${parsed.model} is out of rotation`);
      return;
    }
    if (this.inFlight.has(reply)) {
      fail('REQUEST_VALIDATION_FAILED', `reply subject ${reply} is already in use by a request in flight`);
      return;
    }
    if (this.inFlight.size >= this.maxConcurrent) {
      fail('WORKER_OVERLOADED', `worker ${this.id} is at its limit of ${this.maxConcurrent} requests`, { retry_after_ms: 100 });
      return;
    }
    // Keyed by the reply subject: unique per attempt, where request ids come from clients.
    const key = reply;
    const controller = new AbortController();
    const deadline = Number.isFinite(meta.deadlineMs)
      ? setTimeout(() => controller.abort(new Error('deadline passed')), meta.deadlineMs)
      : undefined;
    const trace = { traceparent: meta.traceparent, tracestate: meta.tracestate };
    const done = this.serve(parsed, send, fail, controller.signal, trace, meta.progress === true).finally(() => {
      if (deadline) clearTimeout(deadline);
      this.inFlight.delete(key);
    });
    this.inFlight.set(key, { controller, done, requestId: meta.requestId, attempt: meta.attempt, token });
  }

  private async serve(
    request: WireRequest,
    send: (body: WireReply, seq?: number) => void,
    fail: (code: ErrorCode, message: string, extra?: Partial<WireError>) => void,
    signal: AbortSignal,
    trace: GenerateContext,
    progress = false,
  ): Promise<void> {
    let seq = 0;
    let text = '';
    // Protocol 1.1: a buffered answer still shows it is alive, token by token (throttled).
    let tokens = 0;
    let progressAt = Number.NEGATIVE_INFINITY;
    // Streams coalesce: text produced within one event-loop turn goes out as one chunk, so a fast
    // engine (or a lagging publisher) sends fewer, larger messages instead of one per token.
    let pending = '';
    let flushTimer: NodeJS.Immediate | undefined;
    const flush = (): void => {
      flushTimer = undefined;
      if (pending.length === 0) return;
      send({ type: 'chunk', seq, text: pending }, seq);
      seq++;
      pending = '';
    };
    // v2: the engine's deltas travel whole; text-only engines' text becomes choice 0's content.
    const relay = request.body
      ? new DeltaRelay(
          request.stream
            ? (choices: ChoiceDelta[], text: string) => {
                send({ type: 'chunk', seq, text, choices }, seq);
                seq++;
              }
            : undefined,
        )
      : undefined;
    // A buffered answer shows it is alive token by token (throttled), when the controller asks.
    const tokenShown = (): void => {
      tokens++;
      if (!progress) return;
      const now = this.clock.now();
      if (now - progressAt < this.progressIntervalMs) return;
      progressAt = now;
      send({ type: 'progress', tokens });
    };
    // An engine that cannot show this request's tokens: keep-alive progress (tokens 0) instead,
    // which tells the controller the worker is alive without claiming a first token.
    const keepAlive =
      progress && !request.stream && this.engine.reportsTokens?.(request) === false
        ? setInterval(() => send({ type: 'progress', tokens: 0 }), this.progressIntervalMs)
        : undefined;
    try {
      if (relay) {
        const onDelta = (d: ChoiceDelta): void => {
          relay.push(d);
          if (!request.stream) tokenShown();
        };
        const result = await this.engine.generate(request, (piece) => onDelta({ index: 0, delta: { content: piece } }), signal, onDelta, trace);
        relay.flush();
        this.answerV2(request, relay, result, send, seq);
        return;
      }
      const onText = request.stream
        ? (piece: string) => {
            pending += piece;
            // Bounded, so a chunk always fits NATS's max payload (1 MiB by default).
            if (pending.length >= MAX_CHUNK_CHARS) {
              if (flushTimer) clearImmediate(flushTimer);
              flush();
            } else {
              flushTimer ??= setImmediate(flush);
            }
          }
        : (piece: string) => {
            text += piece;
            tokenShown();
          };
      const result = await this.engine.generate(request, onText, signal, undefined, trace);
      if (request.stream) {
        if (flushTimer) clearImmediate(flushTimer);
        flush();
        send({ type: 'end', seq, finish_reason: result.finishReason, usage: result.usage, ...estimated(result) }, seq);
      } else {
        send({ type: 'result', text, finish_reason: result.finishReason, usage: result.usage, ...estimated(result) });
      }
    } catch (err) {
      if (flushTimer) clearImmediate(flushTimer);
      // A cancelled or expired request has nobody waiting: answer nothing.
      if (signal.aborted && !(signal.reason instanceof EngineError)) {
        relay?.discard();
        return;
      }
      flush();
      relay?.flush();
      const e = err instanceof EngineError ? err : signal.reason instanceof EngineError ? signal.reason : undefined;
      const code: ErrorCode = e?.code ?? 'WORKER_ERROR';
      const message = e?.message ?? `engine error: ${(err as Error)?.message ?? String(err)}`;
      // After the first chunk the failure is committed: the seq tells the controller where it broke.
      fail(code, message, {
        ...(e?.retryAfterMs !== undefined ? { retry_after_ms: e.retryAfterMs } : {}),
        ...(request.stream && seq > 0 ? { seq, outcome: 'committed' as OutcomeClass } : request.stream ? { seq } : {}),
      });
      if (!(err instanceof EngineError)) this.log.error({ err, worker: this.id }, 'engine failed');
    } finally {
      if (keepAlive) clearInterval(keepAlive);
    }
  }

  /** The v2 final message: `end` with every choice's finish reason, or `result` with whole choices. */
  private answerV2(request: WireRequest, relay: DeltaRelay, result: EngineResult, send: (body: WireReply, seq?: number) => void, seq: number): void {
    const n = typeof request.body?.n === 'number' && Number.isInteger(request.body.n) && request.body.n > 1 ? request.body.n : 1;
    const finishes = result.finishes ?? relay.finishes(result.finishReason, n);
    const common = { finish_reason: result.finishReason, usage: result.usage, ...estimated(result) };
    if (request.stream) {
      send({ type: 'end', seq, ...common, choices: finishes }, seq);
      return;
    }
    const choices = request.endpoint === 'embeddings' ? undefined : (result.choices ?? relay.choices(result.finishReason, n));
    send({ type: 'result', text: relay.text, ...common, ...(choices ? { choices } : {}), ...(result.extra ? { extra: result.extra } : {}) });
  }
}
