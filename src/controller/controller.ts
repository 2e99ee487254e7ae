/**
 * The controller process: NATS subscriptions (heartbeats, byes), discovery on start, the shared
 * reply inbox, the chain, and the HTTP front. `stop()` releases everything it made.
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { systemClock, type Clock } from '../clock';
import type { RouterConfig } from '../config';
import type { Logger } from '../logger';
import type { RouterEvent } from '../attempt';
import { Listeners } from '../listeners';
import { connectNats, drainWithin } from '../nats';
import { assemblePipeline, type Pipeline, type RouterDeps } from '../pipeline';
import { encode, makeSubjects } from '../protocol';
import { newId } from '../ids';
import { BreakerBook } from './breakers';
import { observeAttempts } from './attempt-events';
import { BreakerSignals } from './breaker-signals';
import { BusGuard } from './bus-guard';
import { ReplyMux } from './dispatch';
import { EventBus } from './events';
import { LivenessProber } from './liveness';
import { buildHttpServer } from './http';
import { RouterMetrics } from './metrics';
import { WorkerRegistry } from './registry';
import { RetryBudget } from './retry-budget';
import { SharedSessionMoves } from './session-moves';
import { SessionRegistry } from './sessions';

/** An address only this machine can reach. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

export interface ControllerOptions {
  config: RouterConfig;
  log: Logger;
  /** Use this connection (not closed by stop); otherwise connect from config. */
  nc?: NatsConnection;
  clock?: Clock;
  random?: () => number;
  /** Folder that module paths in cluster.pipeline are relative to (default: cwd). */
  baseDir?: string;
}

export class Controller {
  private constructor(
    readonly deps: RouterDeps,
    readonly pipeline: Pipeline,
    private readonly app: ReturnType<typeof buildHttpServer>,
    private readonly subs: Subscription[],
    private readonly sweepTimer: NodeJS.Timeout,
    private readonly prober: LivenessProber,
    private readonly ownsConnection: boolean,
    readonly url: string,
    /** This controller's id among its peers (breaker signals, session moves). */
    readonly id: string,
    private readonly signals: BreakerSignals,
    /** Resolves once the shared session bucket is open (undefined if it is stopped first, or off). */
    readonly sessionMoves: Promise<SharedSessionMoves | undefined>,
    private readonly stopOpening: AbortController,
  ) {}

  static async start(options: ControllerOptions): Promise<Controller> {
    const { config, log } = options;
    const clock = options.clock ?? systemClock;
    const random = options.random ?? Math.random;
    const nc = options.nc ?? (await connectNats(config.nats, 'mlx-router-controller'));
    const ownsConnection = !options.nc;
    const subjects = makeSubjects(config.nats.subjectPrefix);
    const events = new EventBus();
    const id = newId('controller');
    // Worker ids churn (hostname-pid by default): forgetting one must drop its breaker too.
    const registry = new WorkerRegistry({
      clock,
      offlineAfterMs: config.discovery.offlineAfterMs,
      log,
      onForget: (id) => {
        breakers.forget(id);
        guard.forget(id);
      },
      onStatus: (worker, change) =>
        events.emit(
          'state' in change
            ? { type: 'worker.state', worker, state: change.state }
            : change.online
              ? { type: 'worker.up', worker }
              : { type: 'worker.down', worker, reason: change.reason ?? 'offline' },
        ),
    });
    const cb = config.cluster.requestRouting.circuitBreaker;
    const breakers = new BreakerBook({
      ...cb,
      clock,
      random,
      onTransition: (worker, from, to, cause) => {
        log.warn({ worker, from, to, cause }, 'circuit breaker transition');
        // `metrics` and `signals` are declared below; transitions only happen once requests flow.
        metrics.breakerTransitions.inc({ worker, from, to });
        events.emit({ type: 'breaker', worker, from, to });
        signals.onTransition(worker, to, cause);
      },
    });
    const signals = new BreakerSignals(nc, breakers, { subject: subjects.breaker, controllerId: id, peerOpenMs: cb.peerOpenMs, log });
    const mux = new ReplyMux(nc, config.nats.inboxPrefix);
    const metrics = new RouterMetrics({ registry, breakers, pendingReplies: () => mux.size });
    const guard = new BusGuard({
      registry,
      log,
      clock,
      register: metrics.register,
      subjectPrefix: config.nats.subjectPrefix,
      maxWorkers: config.discovery.maxWorkers,
      maxModels: config.discovery.maxModels,
      nc,
    });
    const deps: RouterDeps = {
      nc,
      mux,
      subjects,
      registry,
      sessions: new SessionRegistry({ ...config.cluster.requestRouting.session, clock }),
      breakers,
      budget: new RetryBudget(config.cluster.requestRouting.retry.budget),
      metrics,
      clock,
      log,
      random,
      events: new Listeners<RouterEvent>(),
      bus: events,
      guard,
    };
    observeAttempts(deps.events, events);
    let pipeline: Pipeline;
    try {
      pipeline = assemblePipeline(config, deps, options.baseDir);
    } catch (err) {
      signals.close();
      mux.close();
      if (ownsConnection) await nc.close();
      throw err;
    }
    const session = config.cluster.requestRouting.session;
    // Opened in the background: routing never waits for JetStream, it only follows moves sooner.
    const stopOpening = new AbortController();
    const sessionMoves = session.sharedBucket
      ? SharedSessionMoves.keepOpening(nc, {
          bucket: session.sharedBucket,
          ttlMs: session.ttlMs,
          replicas: session.sharedReplicas,
          controllerId: id,
          log,
          onMove: (s, worker) => deps.sessions.set(s, worker),
        }, clock, stopOpening.signal).then((moves) => {
          deps.sessionMoves = moves;
          return moves;
        })
      : Promise.resolve(undefined);

    const subs = [
      // Every bus message passes the guard first: shape, limits, worker instance (docs/security.md).
      nc.subscribe(subjects.heartbeat, { callback: (err, msg) => void (err || guard.heartbeat(msg.data)) }),
      nc.subscribe(subjects.bye, { callback: (err, msg) => void (err || guard.bye(msg.data)) }),
    ];
    // Bodies over one NATS message travel to v2 workers in parts; v1 workers cannot take them.
    const maxPayload = nc.info?.max_payload;
    if (maxPayload !== undefined && config.controller.bodyLimitBytes + 4096 > maxPayload) {
      log.debug({ bodyLimitBytes: config.controller.bodyLimitBytes, maxPayload }, 'large requests travel in parts (v1 workers answer them 413)');
    }
    // Running workers answer discovery with a heartbeat, so the registry fills at once.
    await nc.flush();
    nc.publish(subjects.discover, encode({ type: 'discover' }));
    // Silence is noticed within 1.25x offlineAfterMs; attempts waiting on that worker end then.
    const sweepTimer = setInterval(() => registry.sweep(), Math.max(25, Math.floor(config.discovery.offlineAfterMs / 4)));
    sweepTimer.unref();
    // Killed workers are found through NATS "no responders" within about a second.
    const prober = new LivenessProber({ nc, subjects, registry, clock, log, probeAfterMs: config.discovery.probeAfterMs });
    prober.start();

    let natsUp = true;
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === 'disconnect') {
          natsUp = false;
          log.warn({ server: s.server }, 'NATS connection lost; interrupting in-flight attempts');
          registry.setTransport(false);
          registry.interruptAll('NATS connection lost');
        } else if (s.type === 'reconnect') {
          natsUp = true;
          log.info({ server: s.server }, 'NATS reconnected; re-learning workers');
          // Anything sent or answered around the gap may be lost: those attempts fail over now
          // (NATS_DISCONNECTED, never counted against a worker), then the workers are re-learned.
          registry.interruptAll('NATS reconnected: messages around the gap may be lost');
          registry.setTransport(true);
          nc.publish(subjects.discover, encode({ type: 'discover' }));
        }
      }
    })().catch(() => undefined);

    const app = buildHttpServer({ config, deps, pipeline, log, natsConnected: () => natsUp && !nc.isClosed() });
    let url: string;
    try {
      url = await app.listen({ host: config.controller.host, port: config.controller.port });
    } catch (err) {
      clearInterval(sweepTimer);
      prober.stop();
      for (const s of subs) s.unsubscribe();
      signals.close();
      stopOpening.abort();
      await (await sessionMoves)?.close();
      mux.close();
      if (ownsConnection) await nc.close();
      throw err;
    }
    log.info({ url, id, pipeline: pipeline.names, nats: config.nats.servers, apiKeys: config.cluster.auth.keys.length }, 'controller listening');
    if (!isLoopback(config.controller.host) && config.cluster.auth.keys.length === 0) {
      log.warn(
        { host: config.controller.host },
        `WARNING: the controller listens on ${config.controller.host}, beyond this machine, and no client API keys are configured (cluster.auth.keys): anyone who can reach port ${new URL(url).port} can use every model. Create keys with 'mlx-router keys create', or listen on 127.0.0.1 (docs/security.md).`,
      );
    }
    return new Controller(deps, pipeline, app, subs, sweepTimer, prober, ownsConnection, url, id, signals, sessionMoves, stopOpening);
  }

  /** Stops accepting requests, lets in-flight ones finish, then releases NATS. */
  async stop(): Promise<void> {
    await this.app.close();
    clearInterval(this.sweepTimer);
    this.prober.stop();
    for (const s of this.subs) s.unsubscribe();
    this.signals.close();
    this.stopOpening.abort();
    await (await this.sessionMoves)?.close();
    this.deps.mux.close();
    if (this.ownsConnection) await drainWithin(this.deps.nc);
  }
}
