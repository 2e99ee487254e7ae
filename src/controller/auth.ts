/**
 * Client authentication, the first thing the HTTP front does with a request (an `onRequest` hook:
 * before the body is read or parsed). With `cluster.auth.keys` configured, every route but
 * `/health`, `/ready` and the dashboard's static files needs a key, sent as
 * `Authorization: Bearer <key>` or `x-api-key: <key>`: none is 401 MISSING_API_KEY, an unknown one
 * 401 INVALID_API_KEY. The operator routes (`/metrics`, `/v1/cluster...`) need a key marked
 * `admin: true` (else 403 ADMIN_FORBIDDEN). Without keys nothing is checked (a loopback
 * controller), and the operator routes stay open as before. The key itself is never logged; the
 * request's client (its id, models, limits) is kept for the chain (`clientOf`).
 */
import type { IncomingMessage } from 'node:http';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ApiKeyBook, mayUseModel, presentedKey } from '../api-keys';
import type { RouterConfig } from '../config';
import { RouterError } from '../errors';
import type { ClientKey } from '../types';

const clients = new WeakMap<IncomingMessage, ClientKey>();

/** The client the request authenticated as (undefined while no keys are configured). */
export function clientOf(req: FastifyRequest | IncomingMessage): ClientKey | undefined {
  return clients.get('raw' in req ? req.raw : req);
}

/** Paths anyone may read: liveness, readiness, the dashboard's page and script (no data in them). */
function isPublic(path: string): boolean {
  return path === '/health' || path === '/ready' || path === '/dashboard' || path.startsWith('/dashboard/');
}

/** Paths of the operator: metrics and the cluster API (its admin actions check again themselves). */
function isOperator(path: string): boolean {
  return path === '/metrics' || path === '/v1/cluster' || path.startsWith('/v1/cluster/');
}

/** 403 MODEL_NOT_ALLOWED unless the key may use the model. */
export function checkModelAllowed(client: ClientKey | undefined, model: string): void {
  if (!mayUseModel(client, model)) {
    throw new RouterError('MODEL_NOT_ALLOWED', `the API key '${client!.id}' may not use model '${model}'`, { param: 'model' });
  }
}

/** True when client keys are configured. */
export function authEnabled(config: RouterConfig): boolean {
  return config.cluster.auth.keys.length > 0;
}

/**
 * Registers the hook on the root instance (it must be called before any route is added, so it
 * runs for all of them, WebSocket upgrades included).
 */
export function registerAuth(app: FastifyInstance, config: RouterConfig): void {
  if (!authEnabled(config)) return;
  const book = new ApiKeyBook(config.cluster.auth.keys, config.cluster.auth.defaultPriority, config.cluster.admin.key);
  app.addHook('onRequest', async (req) => {
    const path = req.url.split('?')[0];
    if (isPublic(path)) return;
    const key = presentedKey(req.headers);
    if (key === undefined) {
      throw new RouterError('MISSING_API_KEY', 'this router needs an API key: send Authorization: Bearer <key> or x-api-key: <key>');
    }
    const client = book.find(key);
    if (!client) throw new RouterError('INVALID_API_KEY', 'the API key is not valid');
    clients.set(req.raw, client);
    if (isOperator(path) && !client.admin) {
      throw new RouterError('ADMIN_FORBIDDEN', `the API key '${client.id}' may not use the operator endpoints (it needs admin: true in cluster.auth.keys)`);
    }
  });
  // A refused WebSocket upgrade: after its error answer nothing else will use or close the raw
  // socket (the WebSocket plugin only closes those its own hook saw), so close it here.
  app.addHook('onResponse', async (req, reply) => {
    if (reply.statusCode >= 400 && req.raw.headers.upgrade !== undefined && !clients.has(req.raw)) req.raw.socket.destroy();
  });
}
