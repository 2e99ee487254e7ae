/**
 * Optional span export over OTLP/HTTP (JSON encoding, `POST {endpoint}/v1/traces`), on only when
 * `tracing.otlpEndpoint` is set. It reads the event bus: each finished request becomes a SERVER
 * span (its id is the one the request's trace context already carries), each attempt a CLIENT span
 * under it (its id is the traceparent the worker and engine received). No OpenTelemetry package is
 * needed: OTLP/JSON is a stable wire format; spans are batched, and a collector that is down or
 * slow costs a dropped batch and one warning, never a request.
 */
import type { Logger } from '../logger';
import { parseTraceparent } from '../trace';
import type { AttemptObservation, ClusterEvent, EventBus, RequestObservation } from './events';

export interface OtlpOptions {
  /** Collector base URL, e.g. http://127.0.0.1:4318 (`/v1/traces` is appended). */
  endpoint: string;
  serviceName: string;
  log: Logger;
  /** Flush period (ms, default 2000) and batch cap (default 512 spans, more are dropped). */
  flushMs?: number;
  maxQueue?: number;
  /** Per-export timeout (ms, default 5000). */
  timeoutMs?: number;
}

type Attr = { key: string; value: { stringValue: string } | { intValue: string } | { boolValue: boolean } };

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  startTimeUnixNano: string;
  endTimeUnixNano: string;
  attributes: Attr[];
  status: { code: number; message?: string };
}

const SPAN_KIND_SERVER = 2;
const SPAN_KIND_CLIENT = 3;
const STATUS_OK = 1;
const STATUS_ERROR = 2;

const str = (key: string, v: string): Attr => ({ key, value: { stringValue: v } });
const int = (key: string, v: number): Attr => ({ key, value: { intValue: String(Math.round(v)) } });
const nanos = (ms: number): string => (BigInt(Math.round(ms * 1000)) * 1000n).toString();

/** A span from an observation: it ended at `e.time` after `durationMs`. */
function span(e: ClusterEvent & (AttemptObservation | RequestObservation), own: string | undefined, parent: string | undefined, name: string, kind: number, attributes: Attr[], failed: boolean): OtlpSpan | undefined {
  const ctx = parseTraceparent(own);
  if (!ctx) return undefined;
  const parentCtx = parseTraceparent(parent);
  return {
    traceId: ctx.traceId,
    spanId: ctx.parentId,
    ...(parentCtx && parentCtx.traceId === ctx.traceId ? { parentSpanId: parentCtx.parentId } : {}),
    name,
    kind,
    startTimeUnixNano: nanos(e.time - e.durationMs),
    endTimeUnixNano: nanos(e.time),
    attributes,
    status: { code: failed ? STATUS_ERROR : STATUS_OK },
  };
}

export class OtlpExporter {
  private queue: OtlpSpan[] = [];
  private readonly timer: NodeJS.Timeout;
  private readonly unsubscribe: () => void;
  private inFlight?: Promise<void>;
  private warned = false;
  private readonly url: string;

  constructor(
    bus: EventBus,
    private readonly options: OtlpOptions,
  ) {
    this.url = `${options.endpoint.replace(/\/+$/, '')}/v1/traces`;
    this.unsubscribe = bus.subscribe((e) => this.observe(e));
    this.timer = setInterval(() => void this.flush(), options.flushMs ?? 2000);
    this.timer.unref();
  }

  private observe(e: ClusterEvent): void {
    let s: OtlpSpan | undefined;
    if (e.type === 'request') {
      const attrs = [str('mlx.request_id', e.requestId), int('http.response.status_code', e.status)];
      if (e.model) attrs.push(str('gen_ai.request.model', e.model));
      if (e.code) attrs.push(str('error.type', e.code));
      if (e.ttftMs !== undefined) attrs.push(int('mlx.ttft_ms', e.ttftMs));
      s = span(e, e.traceparent, e.clientTraceparent, 'chat.completions', SPAN_KIND_SERVER, attrs, e.status >= 500);
    } else if (e.type === 'attempt') {
      const attrs = [str('mlx.request_id', e.requestId), str('mlx.outcome', e.outcome)];
      if (e.worker) attrs.push(str('mlx.worker', e.worker));
      if (e.attempt !== undefined) attrs.push(int('mlx.attempt', e.attempt));
      if (e.code) attrs.push(str('error.type', e.code));
      if (e.ttftMs !== undefined) attrs.push(int('mlx.ttft_ms', e.ttftMs));
      if (e.completionTokens !== undefined) attrs.push(int('gen_ai.usage.output_tokens', e.completionTokens));
      s = span(e, e.traceparent, e.requestTraceparent, `attempt ${e.worker ?? '-'}`, SPAN_KIND_CLIENT, attrs, e.outcome !== 'success');
    }
    if (!s) return;
    if (this.queue.length >= (this.options.maxQueue ?? 512)) return;
    this.queue.push(s);
  }

  /** Sends what is queued (one request at a time); resolves when done, never rejects. */
  flush(): Promise<void> {
    if (this.inFlight || this.queue.length === 0) return this.inFlight ?? Promise.resolve();
    const spans = this.queue;
    this.queue = [];
    const body = {
      resourceSpans: [
        {
          resource: { attributes: [str('service.name', this.options.serviceName)] },
          scopeSpans: [{ scope: { name: 'mlx-router' }, spans }],
        },
      ],
    };
    this.inFlight = fetch(this.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(this.options.timeoutMs ?? 5000),
    })
      .then(async (res) => {
        await res.arrayBuffer().catch(() => undefined);
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        this.warned = false;
      })
      .catch((err: Error) => {
        // Once per outage, not per batch.
        if (!this.warned) this.options.log.warn({ err: err.message, url: this.url, dropped: spans.length }, 'OTLP export failed; spans dropped');
        this.warned = true;
      })
      .finally(() => {
        this.inFlight = undefined;
      });
    return this.inFlight;
  }

  /** Stops listening and sends what is left. */
  async close(): Promise<void> {
    this.unsubscribe();
    clearInterval(this.timer);
    await this.inFlight;
    await this.flush();
  }
}
