/**
 * The operator's view of the cluster, on the controller: `GET /v1/cluster` (this controller),
 * `GET /v1/cluster/workers` (every known worker with load, breaker, recent speed and errors),
 * `GET /v1/cluster/stats` (request rate, errors, p50/p99 latency and TTFT over time),
 * `GET /v1/cluster/events` (server-sent events from the event bus), the admin actions
 * (cluster-admin.ts) and the `/dashboard` page (dashboard.ts). Read routes need no key, like
 * `/metrics`; they show no secret.
 */
import { hostname } from 'node:os';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { RouterConfig } from '../config';
import { RouterError } from '../errors';
import type { Pipeline, RouterDeps } from '../pipeline';
import type { BreakerBook } from './breakers';
import { registerClusterAdmin } from './cluster-admin';
import { ClusterStats } from './cluster-stats';
import { packageVersion, registerDashboard } from './dashboard';
import { EventBus, isOperatorEvent, type ClusterEvent } from './events';
import { OtlpExporter } from './otlp';
import type { WorkerInfo, WorkerRegistry } from './registry';

export interface ClusterApiOptions {
  config: RouterConfig;
  deps: RouterDeps;
  pipeline: Pipeline;
  natsConnected: () => boolean;
}

/** Strips user:password from a server URL: the summary must never show a secret. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//');
}

/** What this controller runs with, allow-listed: no password, token, key or credentials path. */
export function configSummary(config: RouterConfig): Record<string, unknown> {
  const rr = config.cluster.requestRouting;
  const nats = config.nats;
  return {
    pipeline: config.cluster.pipeline,
    strategy: rr.strategy,
    timeouts: {
      timeoutMs: rr.timeoutMs,
      streamingTimeoutMs: rr.streamingTimeoutMs,
      attemptTimeoutMs: rr.attemptTimeoutMs,
      firstChunkTimeoutMs: rr.firstChunkTimeoutMs,
      idleTimeoutMs: rr.idleTimeoutMs,
      workerWaitTimeoutMs: rr.workerWaitTimeoutMs,
    },
    retry: { enabled: rr.retry.enabled, maxRetries: rr.retry.maxRetries, retryDelayMs: rr.retry.retryDelayMs, maxRetryDelayMs: rr.retry.maxRetryDelayMs },
    circuitBreaker: { ...rr.circuitBreaker },
    streaming: { ...config.cluster.streaming },
    nats: {
      servers: nats.servers.map(redactUrl),
      subjectPrefix: nats.subjectPrefix,
      auth: nats.credsFile ? 'credentials' : nats.nkeySeedFile ? 'nkey' : nats.token ? 'token' : nats.user ? 'user' : 'none',
      tls: nats.tls.enabled || Boolean(nats.tls.caFile || nats.tls.certFile),
    },
    controller: { host: config.controller.host, port: config.controller.port, bodyLimitBytes: config.controller.bodyLimitBytes },
    discovery: { ...config.discovery },
    admin: config.cluster.admin.key.length > 0,
    // How many client keys, never their ids' hashes.
    auth: { keys: config.cluster.auth.keys.length },
  };
}

/** A breaker's state and what moves it next. */
export function describeBreaker(breakers: BreakerBook, config: RouterConfig, worker: string, now: number): Record<string, unknown> {
  const cb = config.cluster.requestRouting.circuitBreaker;
  if (!cb.enabled) return { state: 'disabled' };
  const s = breakers.state(worker);
  if (s.kind === 'closed') return { state: 'closed', failures: s.failures, next: { to: 'open', afterFailures: cb.failureThreshold - s.failures } };
  if (s.kind === 'open') return { state: 'open', trips: s.trips, next: { to: 'half-open', inMs: Math.max(0, Math.round(s.until - now)) } };
  return { state: 'half-open', trips: s.trips, probesInUse: s.inUse, next: { to: 'closed', afterSuccesses: cb.successThreshold - s.successes } };
}

function describeWorker(w: WorkerInfo, o: ClusterApiOptions, stats: ClusterStats, registry: WorkerRegistry, now: number): Record<string, unknown> {
  const online = registry.isOnline(w, now);
  const recent = stats.worker(w.id);
  return {
    id: w.id,
    host: w.host || null,
    pid: w.pid || null,
    models: w.models,
    drainingModels: w.drainingModels ?? [],
    engine: w.engine,
    capabilities: { continuation: w.continuation },
    online,
    // offline wins; else the worker's own word: ready, draining, unhealthy (engine down).
    state: online ? w.state : 'offline',
    engineHealthy: w.state !== 'unhealthy',
    slots: {
      max: w.maxConcurrent,
      inFlight: w.outstanding + w.foreignInFlight,
      own: w.outstanding,
      others: w.foreignInFlight,
      free: Math.max(0, w.maxConcurrent - w.outstanding - w.foreignInFlight),
    },
    breaker: describeBreaker(o.deps.breakers, o.config, w.id, o.deps.clock.now()),
    latencyMs: Math.round(w.latencyMs * 100) / 100,
    ttftMs: recent.ttftMs,
    tokensPerSecond: recent.tokensPerSecond,
    attempts: recent.outcomes,
    errors: recent.errors,
    lastHeartbeatAgeMs: Math.max(0, Math.round(now - w.lastSeen)),
  };
}

/** The operator routes, the event feed and the dashboard; one call from the HTTP front. */
export function registerClusterApi(app: FastifyInstance, options: ClusterApiOptions): void {
  const { config, deps } = options;
  const events = deps.bus ?? new EventBus();
  const stats = new ClusterStats(events);
  const startedAt = Date.now();
  const controllerId = `${hostname().replace(/[^A-Za-z0-9_-]/g, '-')}-${process.pid}-${config.controller.port}`;
  const streams = new Set<FastifyReply>();
  const otlp = config.tracing.otlpEndpoint
    ? new OtlpExporter(events, { endpoint: config.tracing.otlpEndpoint, serviceName: config.tracing.serviceName, log: deps.log })
    : undefined;
  const unsubscribeForget = events.subscribe((e) => {
    // A worker the registry forgot (see its sweep) has no history worth showing.
    if (e.type === 'worker.down' && !deps.registry.get(e.worker)) stats.forget(e.worker);
  });

  app.get('/v1/cluster', async () => ({
    object: 'cluster',
    controller: {
      id: controllerId,
      host: hostname(),
      pid: process.pid,
      startedAt: new Date(startedAt).toISOString(),
      uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
      version: packageVersion(),
    },
    nats: { connected: options.natsConnected(), servers: config.nats.servers.map(redactUrl), server: deps.nc.info?.server_name ?? null },
    pipeline: options.pipeline.names,
    workers: { known: deps.registry.all().length, online: deps.registry.online().length },
    models: deps.registry.models(),
    config: configSummary(config),
  }));

  app.get('/v1/cluster/workers', async () => {
    const now = deps.clock.now();
    return { object: 'list', data: deps.registry.all().map((w) => describeWorker(w, options, stats, deps.registry, now)) };
  });

  app.get('/v1/cluster/stats', async (req: FastifyRequest<{ Querystring: { windowSeconds?: string } }>) => {
    const raw = req.query.windowSeconds;
    const seconds = raw === undefined ? 300 : Number(raw);
    if (!Number.isInteger(seconds) || seconds < 1 || seconds > 600) {
      throw new RouterError('REQUEST_VALIDATION_FAILED', 'windowSeconds must be an integer from 1 to 600', { param: 'windowSeconds' });
    }
    return { object: 'cluster.stats', bucketSeconds: 5, series: stats.series(seconds * 1000) };
  });

  app.get('/v1/cluster/events', (req, reply) => {
    const lastId = Number(req.headers['last-event-id'] ?? 0);
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-request-id': String(req.id),
    });
    const send = (e: ClusterEvent): void => {
      if (!res.destroyed) res.write(`id: ${e.seq}\nevent: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`);
    };
    res.write('retry: 2000\n\n');
    for (const e of events.recent(Number.isFinite(lastId) ? lastId : 0)) send(e);
    const unsubscribe = events.subscribe((e) => {
      if (isOperatorEvent(e)) send(e);
    });
    // A comment now and then keeps proxies from closing an idle feed.
    const keepAlive = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
    keepAlive.unref();
    streams.add(reply);
    res.on('close', () => {
      clearInterval(keepAlive);
      unsubscribe();
      streams.delete(reply);
    });
  });

  registerClusterAdmin(app, options, events);
  registerDashboard(app);

  // Event feeds never end by themselves: close them so the server can stop.
  app.addHook('preClose', (done) => {
    for (const s of streams) s.raw.end();
    done();
  });
  app.addHook('onClose', async () => {
    unsubscribeForget();
    stats.close();
    await otlp?.close();
  });
}
