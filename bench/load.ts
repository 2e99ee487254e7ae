/**
 * A closed-loop HTTP load generator on node:http with keep-alive: `concurrency` connections each
 * send one request, read the whole answer, and send the next, until the time or the count is up.
 * No dependency: node:http is what the router's own clients most often use, and its cost is
 * the same for the floor and the router, so ratios are not skewed by it.
 */
import { Agent, request as httpRequest, type IncomingHttpHeaders, type RequestOptions } from 'node:http';
import { progress } from './progress';
import { summarize, type LatencySummary } from './stats';

export interface Target {
  /** Base URL, e.g. http://127.0.0.1:1234 */
  url: string;
  path: string;
  body: Buffer;
  headers?: Record<string, string>;
  /** True when the answer is SSE: it must end with `data: [DONE]`. */
  stream: boolean;
}

export interface LoadOptions {
  concurrency: number;
  /** Stop after this long (ms) ... */
  durationMs?: number;
  /** ... or after this many requests, whichever comes first. */
  requests?: number;
  /** Label of the progress line; no progress line when absent. */
  label?: string;
  /** Per-request limit (ms, default 15000): a hung answer counts as an error, not a hang of the run. */
  timeoutMs?: number;
}

export interface LoadResult {
  requests: number;
  errors: number;
  /** First few error descriptions, for the report. */
  errorSamples: string[];
  elapsedMs: number;
  rps: number;
  latency: LatencySummary;
}

export interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
  ms: number;
  /** Until the response headers (ms): a stream's time to first token, since they leave with its first chunk. */
  firstMs: number;
}

/** One keep-alive client; reuse it across phases so connections stay warm. */
export interface Client {
  send(target: Target, timeoutMs?: number): Promise<Answer>;
  /** Sends and reads the answer, but only keeps the body's last bytes (enough to check the end). */
  sendLight(target: Target, timeoutMs?: number): Promise<{ status: number; tail: string; ms: number }>;
  close(): void;
}

export function createClient(maxSockets = 1024): Client {
  const agent = new Agent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets });
  // Request options built once per target: parsing a URL per request would be load-generator cost.
  const prepared = new WeakMap<Target, RequestOptions>();
  const optionsFor = (target: Target): RequestOptions => {
    let o = prepared.get(target);
    if (!o) {
      const u = new URL(target.url);
      o = {
        agent,
        host: u.hostname,
        port: Number(u.port),
        path: target.path,
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': String(target.body.length), ...target.headers },
      };
      prepared.set(target, o);
    }
    return o;
  };
  const exchange = <T>(target: Target, timeoutMs: number, read: (chunks: Buffer[]) => T): Promise<{ status: number; headers: IncomingHttpHeaders; ms: number; firstMs: number; out: T }> =>
    new Promise((resolve, reject) => {
      const started = performance.now();
      const req = httpRequest(optionsFor(target), (res) => {
        const firstMs = performance.now() - started;
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          clearTimeout(timer);
          resolve({ status: res.statusCode ?? 0, headers: res.headers, ms: performance.now() - started, firstMs, out: read(chunks) });
        });
        res.on('error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
      });
      const timer = setTimeout(() => req.destroy(new Error(`no complete answer within ${timeoutMs} ms`)), timeoutMs);
      req.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      req.end(target.body);
    });
  return {
    async send(target, timeoutMs = 15_000) {
      const r = await exchange(target, timeoutMs, (chunks) => Buffer.concat(chunks).toString('utf8'));
      return { status: r.status, headers: r.headers, body: r.out, ms: r.ms, firstMs: r.firstMs };
    },
    async sendLight(target, timeoutMs = 15_000) {
      // The last two chunks: `data: [DONE]` may be split across them.
      const r = await exchange(target, timeoutMs, (chunks) => Buffer.concat(chunks.slice(-2)).toString('latin1').slice(-32));
      return { status: r.status, tail: r.out, ms: r.ms };
    },
    close() {
      agent.destroy();
    },
  };
}

const DONE = 'data: [DONE]\n\n';

/** Runs a closed loop against `target`. Non-200 answers and streams without `[DONE]` are errors. */
export async function runLoad(client: Client, target: Target, options: LoadOptions): Promise<LoadResult> {
  const { concurrency } = options;
  const durationMs = options.durationMs ?? Number.POSITIVE_INFINITY;
  const limit = options.requests ?? Number.POSITIVE_INFINITY;
  if (!Number.isFinite(durationMs) && !Number.isFinite(limit)) throw new Error('runLoad needs durationMs or requests');
  const latencies: number[] = [];
  const errorSamples: string[] = [];
  let errors = 0;
  let issued = 0;
  const started = performance.now();
  const stopAt = started + durationMs;
  const bar = options.label ? progress(options.label) : undefined;
  const ticker = bar
    ? setInterval(() => {
        const t = performance.now() - started;
        const fraction = Math.max(Number.isFinite(durationMs) ? t / durationMs : 0, Number.isFinite(limit) ? issued / limit : 0);
        bar.update(fraction, `${latencies.length.toLocaleString('en-US')} req  ${Math.round((latencies.length / t) * 1000).toLocaleString('en-US')} req/s`);
      }, 200)
    : undefined;

  const loop = async (): Promise<void> => {
    while (issued < limit && performance.now() < stopAt) {
      issued++;
      try {
        const r = await client.sendLight(target, options.timeoutMs);
        if (r.status !== 200) throw new Error(`HTTP ${r.status}`);
        if (target.stream && !r.tail.endsWith(DONE)) throw new Error(`stream ended without [DONE]: …${JSON.stringify(r.tail)}`);
        latencies.push(r.ms);
      } catch (err) {
        errors++;
        if (errorSamples.length < 5) errorSamples.push((err as Error).message);
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, loop));
  } finally {
    if (ticker) clearInterval(ticker);
  }
  const elapsedMs = performance.now() - started;
  const result: LoadResult = {
    requests: latencies.length,
    errors,
    errorSamples,
    elapsedMs,
    rps: (latencies.length / elapsedMs) * 1000,
    latency: summarize(latencies),
  };
  bar?.done(
    `${result.requests.toLocaleString('en-US')} req  ${Math.round(result.rps).toLocaleString('en-US')} req/s  p50 ${result.latency.p50.toFixed(3)} ms  p99 ${result.latency.p99.toFixed(3)} ms${errors ? `  ${errors} errors (${errorSamples[0]})` : ''}`,
  );
  return result;
}
