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
import { connectNats } from '../nats';
import { assemblePipeline, type Pipeline, type RouterDeps } from '../pipeline';
import { decode, encode, makeSubjects, type Bye, type Heartbeat } from '../protocol';
import { BreakerBook } from './breakers';
import { ReplyMux } from './dispatch';
import { LivenessProber } from './liveness';
import { buildHttpServer } from './http';
import { RouterMetrics } from './metrics';
import { WorkerRegistry } from './registry';
import { RetryBudget } from './retry-budget';
import { SessionRegistry } from './sessions';

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
  ) {}

  static async start(options: ControllerOptions): Promise<Controller> {
    const { config, log } = options;
    const clock = options.clock ?? systemClock;
    const random = options.random ?? Math.random;
    const nc = options.nc ?? (await connectNats(config.nats, 'mlx-router-controller'));
    const ownsConnection = !options.nc;
    const subjects = makeSubjects(config.nats.subjectPrefix);
    // Worker ids churn (hostname-pid by default): forgetting one must drop its breaker too.
    const registry = new WorkerRegistry({ clock, offlineAfterMs: config.discovery.offlineAfterMs, log, onForget: (id) => breakers.forget(id) });
    const cb = config.cluster.requestRouting.circuitBreaker;
    const breakers = new BreakerBook({
      ...cb,
      clock,
      random,
      onTransition: (worker, from, to) => {
        log.warn({ worker, from, to }, 'circuit breaker transition');
        // `metrics` is declared below; transitions only happen once requests flow.
        metrics.breakerTransitions.inc({ worker, from, to });
      },
    });
    const mux = new ReplyMux(nc);
    const metrics = new RouterMetrics({ registry, breakers, pendingReplies: () => mux.size });
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
    };
    let pipeline: Pipeline;
    try {
      pipeline = assemblePipeline(config, deps, options.baseDir);
    } catch (err) {
      mux.close();
      if (ownsConnection) await nc.close();
      throw err;
    }

    const subs = [
      nc.subscribe(subjects.heartbeat, {
        callback: (err, msg) => {
          const hb = err ? undefined : decode<Heartbeat>(msg.data);
          if (hb) registry.onHeartbeat(hb);
        },
      }),
      nc.subscribe(subjects.bye, {
        callback: (err, msg) => {
          const bye = err ? undefined : decode<Bye>(msg.data);
          if (bye && typeof bye.id === 'string') registry.onBye(bye.id);
        },
      }),
    ];
    // A body near the limit must still fit one NATS message (headers and JSON framing included).
    const maxPayload = nc.info?.max_payload;
    if (maxPayload !== undefined && config.controller.bodyLimitBytes + 4096 > maxPayload) {
      log.warn({ bodyLimitBytes: config.controller.bodyLimitBytes, maxPayload }, 'controller.bodyLimitBytes is close to the NATS max_payload: the largest requests will fail with 413');
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
      mux.close();
      if (ownsConnection) await nc.close();
      throw err;
    }
    log.info({ url, pipeline: pipeline.names, nats: config.nats.servers }, 'controller listening');
    return new Controller(deps, pipeline, app, subs, sweepTimer, prober, ownsConnection, url);
  }

  /** Stops accepting requests, lets in-flight ones finish, then releases NATS. */
  async stop(): Promise<void> {
    await this.app.close();
    clearInterval(this.sweepTimer);
    this.prober.stop();
    for (const s of this.subs) s.unsubscribe();
    this.deps.mux.close();
    if (this.ownsConnection && !this.deps.nc.isClosed()) await this.deps.nc.drain().catch(() => this.deps.nc.close());
  }
}
