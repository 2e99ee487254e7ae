/**
 * Admin actions of the cluster API, behind `cluster.admin.key` (a bearer token; set it from the
 * environment). Without a configured key every admin route answers 403; without a token 401; with
 * a wrong one 403, all in OpenAI's error shape. Drain and undrain go to the worker on its control
 * subject, so the worker itself refuses new work and every controller learns it from heartbeats;
 * a breaker reset is this controller's own (breakers are per controller).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { errors as natsErrors } from '@nats-io/transport-node';
import { RouterError } from '../errors';
import { decode, encode, type ControlMessage, type ControlReply } from '../protocol';
import type { RouterConfig } from '../config';
import type { RouterDeps } from '../pipeline';
import type { EventBus } from './events';
import { clientOf } from './auth';

/** How long a worker has to acknowledge a drain or undrain (ms). */
const CONTROL_TIMEOUT_MS = 3000;

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/** Checks the request's `Authorization: Bearer <key>` against the configured admin key. */
export function checkAdmin(key: string, authorization: string | undefined): void {
  if (key.length === 0) throw new RouterError('ADMIN_FORBIDDEN', 'admin actions are off: no cluster.admin.key is configured (MLX_ROUTER_CLUSTER_ADMIN_KEY)');
  const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
  if (!m) throw new RouterError('ADMIN_UNAUTHORIZED', 'admin actions need the header Authorization: Bearer <cluster.admin.key>');
  // Hash both sides: equal lengths for timingSafeEqual, and no length leak.
  if (!timingSafeEqual(digest(m[1]), digest(key))) throw new RouterError('ADMIN_FORBIDDEN', 'the admin key is not valid');
}

/** What the admin routes use: the admin key, the registry, breakers and the NATS connection. */
export interface ClusterAdminOptions {
  config: RouterConfig;
  deps: RouterDeps;
}

export function registerClusterAdmin(app: FastifyInstance, options: ClusterAdminOptions, events: EventBus): void {
  const { config, deps } = options;
  const key = config.cluster.admin.key;
  // An API key marked admin (cluster.auth.keys) is enough; else the plain admin key.
  const guard = async (req: FastifyRequest): Promise<void> => {
    if (clientOf(req)?.admin) return;
    checkAdmin(key, req.headers.authorization);
  };

  /** Sends one control message to a worker and applies its answer to our registry at once. */
  const control = async (workerId: string, message: ControlMessage): Promise<ControlReply> => {
    if (!deps.registry.get(workerId)) throw new RouterError('NOT_FOUND', `no worker '${workerId}' is known (see GET /v1/cluster/workers)`, { param: 'worker' });
    let answer: ControlReply | undefined;
    try {
      const msg = await deps.nc.request(deps.subjects.control(workerId), encode(message), { timeout: CONTROL_TIMEOUT_MS });
      answer = decode<ControlReply>(msg.data);
    } catch (err) {
      if (err instanceof natsErrors.RequestError && err.isNoResponders()) {
        throw new RouterError('WORKER_UNAVAILABLE', `worker '${workerId}' is not listening (offline)`, { worker: workerId, cause: err });
      }
      throw new RouterError('WORKER_TIMEOUT', `worker '${workerId}' did not acknowledge ${message.action} within ${CONTROL_TIMEOUT_MS} ms`, { worker: workerId, cause: err });
    }
    if (!answer || typeof answer !== 'object' || answer.ok !== true) {
      throw new RouterError('WORKER_ERROR', `worker '${workerId}' refused ${message.action}: ${String(answer?.error ?? 'unreadable answer')}`, { worker: workerId });
    }
    // Its heartbeat tells every controller; ours knows now, so not one more request goes there.
    const state = answer.state === 'draining' || answer.state === 'unhealthy' ? answer.state : 'ready';
    const models = Array.isArray(answer.draining_models) ? answer.draining_models.filter((m) => typeof m === 'string') : [];
    deps.registry.applyState(workerId, state, models);
    return answer;
  };

  const drainRoute = (action: ControlMessage['action']) => async (req: FastifyRequest<{ Params: { id: string } }>) => {
    const id = req.params.id;
    const answer = await control(id, { action });
    events.emit({ type: 'admin', action, target: id, result: answer.state });
    req.log.warn({ worker: id, action }, 'admin action');
    return { object: 'cluster.worker.control', worker: id, action, state: answer.state, drainingModels: answer.draining_models };
  };

  const modelRoute = (action: ControlMessage['action']) => async (req: FastifyRequest, reply: FastifyReply) => {
    const model = (req.body as { model?: unknown } | undefined)?.model;
    if (typeof model !== 'string' || model.length === 0) throw new RouterError('REQUEST_VALIDATION_FAILED', 'body must be {"model": "<model id>"}', { param: 'model' });
    const workers = deps.registry.all().filter((w) => w.models.includes(model) && deps.registry.isOnline(w));
    if (workers.length === 0) throw new RouterError('MODEL_NOT_FOUND', `no online worker serves model '${model}'`, { param: 'model' });
    const results = await Promise.all(
      workers.map(async (w) => {
        try {
          const answer = await control(w.id, { action, model });
          return { worker: w.id, ok: true, drainingModels: answer.draining_models };
        } catch (err) {
          return { worker: w.id, ok: false, error: (err as Error).message };
        }
      }),
    );
    const failed = results.filter((r) => !r.ok).length;
    events.emit({ type: 'admin', action: `model.${action}`, target: model, result: `${results.length - failed}/${results.length} workers` });
    req.log.warn({ model, action, failed }, 'admin action');
    return reply.code(failed > 0 ? 207 : 200).send({ object: 'cluster.model.control', model, action, workers: results });
  };

  app.register(async (admin) => {
    admin.addHook('onRequest', guard);
    admin.post('/v1/cluster/workers/:id/drain', drainRoute('drain'));
    admin.post('/v1/cluster/workers/:id/undrain', drainRoute('undrain'));
    admin.post('/v1/cluster/workers/:id/breaker/reset', async (req: FastifyRequest<{ Params: { id: string } }>) => {
      const id = req.params.id;
      if (!deps.registry.get(id)) throw new RouterError('NOT_FOUND', `no worker '${id}' is known (see GET /v1/cluster/workers)`, { param: 'worker' });
      const from = deps.breakers.reset(id);
      events.emit({ type: 'admin', action: 'breaker.reset', target: id, result: `${from} -> closed` });
      req.log.warn({ worker: id, from }, 'admin action: breaker reset');
      return { object: 'cluster.worker.breaker', worker: id, from, state: 'closed' };
    });
    admin.post('/v1/cluster/models/drain', modelRoute('drain'));
    admin.post('/v1/cluster/models/undrain', modelRoute('undrain'));
  });
}
