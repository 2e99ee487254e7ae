import type { Middleware, RouteContext } from '../src/context';
import { defineMiddleware, type MiddlewareDeps } from '../src/define';

export type SessionOptions = Record<string, never>;

export type SessionDeps = Pick<MiddlewareDeps, 'sessions'>;

/**
 * session: sticky routing. The session id comes from the `x-session-id` header or the body's
 * `session_id` (read by the HTTP front into `ctx.sessionId`). The known worker becomes
 * `ctx.stickyWorker`; `select` honours it only while it is still a candidate (online, serving the
 * model, breaker closed) and not saturated. After a success the session moves to the worker that
 * actually answered, so a failover moves the session too.
 */
export const session = defineMiddleware<SessionOptions, SessionDeps>({ name: 'session', defaults: {}, factory: sessionMiddleware });

function sessionMiddleware(_options: SessionOptions, deps: SessionDeps): Middleware {
  return async function session(ctx: RouteContext, next): Promise<void> {
    const id = ctx.sessionId;
    if (!id) return next();
    ctx.stickyWorker = deps.sessions.get(id);
    await next();
    const answered = ctx.attempts[ctx.attempts.length - 1];
    if (answered?.outcome !== 'success' || !answered.worker || answered.worker === ctx.stickyWorker) return;
    if (ctx.stickyWorker) ctx.log.info({ session: id, from: ctx.stickyWorker, to: answered.worker }, 'session moved');
    deps.sessions.set(id, answered.worker);
  };
}
