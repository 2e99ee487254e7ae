import type { Middleware, RouteContext } from '../src/context';
import { rendezvousPick } from '../src/rendezvous';
import { defineMiddleware, type MiddlewareDeps } from '../src/define';
import type { SessionMoveLog, WorkerDirectory } from '../src/types';

export type SessionOptions = Record<string, never>;

/**
 * `sessions` holds explicit moves (this controller's own and those its peers shared); `registry`
 * gives the healthy workers for rendezvous hashing (without it only explicit moves count);
 * `sessionMoves` shares this controller's moves with the others (absent: kept locally).
 */
export type SessionDeps = Pick<MiddlewareDeps, 'sessions'> & { registry?: Pick<WorkerDirectory, 'forModel'>; sessionMoves?: SessionMoveLog };

/**
 * session: sticky routing that agrees across controllers. The session id comes from the
 * `x-session-id` header or the body's `session_id` (read by the HTTP front into `ctx.sessionId`).
 * The session's worker is its explicit move, when it has one and that worker is still healthy, or
 * else the rendezvous-hash choice over the healthy workers of the model: the same on every
 * controller, and a worker's loss moves only its own sessions. It becomes `ctx.stickyWorker`;
 * `select` honours it while it is a candidate and not saturated, and otherwise falls back by the
 * same hash over what is left. When the worker that answered is not the one the session had
 * (failover, saturation), that move is recorded and shared, so every controller follows it.
 */
export const session = defineMiddleware<SessionOptions, SessionDeps>({ name: 'session', defaults: {}, factory: sessionMiddleware });

function sessionMiddleware(_options: SessionOptions, deps: SessionDeps): Middleware {
  return async function session(ctx: RouteContext, next): Promise<void> {
    const id = ctx.sessionId;
    if (!id) return next();
    const moved = deps.sessions.get(id);
    const healthy = deps.registry?.forModel(ctx.request.model);
    if (!healthy || healthy.length === 0 || (moved !== undefined && healthy.some((w) => w.id === moved))) {
      ctx.stickyWorker = moved;
    } else {
      ctx.stickyWorker = rendezvousPick(id, healthy, (w) => w.id)?.id;
    }
    await next();
    const answered = ctx.attempts[ctx.attempts.length - 1];
    // The session's own worker, as it stood: a move stays recorded until another replaces it.
    const had = moved ?? ctx.stickyWorker;
    if (answered?.outcome !== 'success' || !answered.worker || answered.worker === had) return;
    if (had) ctx.log.info({ session: id, from: had, to: answered.worker }, 'session moved');
    deps.sessions.set(id, answered.worker);
    deps.sessionMoves?.record(id, answered.worker);
  };
}
