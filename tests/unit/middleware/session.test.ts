/** session middleware: sticky worker from the SessionRegistry, moved to whoever actually answered. */
import type { RouteContext } from '../../../src/context';
import { SessionRegistry } from '../../../src/controller/sessions';
import { RouterError } from '../../../src/errors';
import { session } from '../../../middleware/session';
import { makeCtx } from '../../helpers/context';
import { FakeClock } from '../../helpers/fake-clock';

function setup() {
  const clock = new FakeClock();
  const sessions = new SessionRegistry({ ttlMs: 60_000, maxSessions: 100, clock });
  return { clock, sessions, mw: session({}, { sessions }) };
}

/** Records one attempt as the assembler would. */
function record(ctx: RouteContext, worker: string, ok: boolean): void {
  ctx.attempts.push({
    attempt: ctx.attempts.length + 1,
    worker,
    outcome: ok ? 'success' : 'worker_failure',
    code: ok ? null : 'WORKER_ERROR',
    durationMs: 1,
  });
}

test('session - sets the sticky worker from the session registry before next runs', async () => {
  const { clock, sessions, mw } = setup();
  sessions.set('s1', 'w2');
  const ctx = makeCtx({ clock, sessionId: 's1' });
  const next = jest.fn(async () => {
    expect(ctx.stickyWorker).toBe('w2');
    record(ctx, 'w2', true);
  });
  await mw(ctx, next);
  expect(next).toHaveBeenCalledTimes(1);
  expect(sessions.get('s1')).toBe('w2');
});

test('session - a new session is bound to the worker that answered', async () => {
  const { clock, sessions, mw } = setup();
  const ctx = makeCtx({ clock, sessionId: 'fresh' });
  await mw(ctx, async () => {
    expect(ctx.stickyWorker).toBeUndefined();
    record(ctx, 'w3', true);
  });
  expect(sessions.get('fresh')).toBe('w3');
});

test('session - moves to the worker that actually answered after a failover', async () => {
  const { clock, sessions, mw } = setup();
  sessions.set('s1', 'w1');
  const ctx = makeCtx({ clock, sessionId: 's1' });
  await mw(ctx, async () => {
    record(ctx, 'w1', false);
    record(ctx, 'w2', true);
  });
  expect(sessions.get('s1')).toBe('w2');
});

test('session - without a session id the registry is untouched and no sticky worker is set', async () => {
  const { clock, sessions, mw } = setup();
  sessions.set('other', 'w1');
  const ctx = makeCtx({ clock });
  const next = jest.fn(async () => record(ctx, 'w2', true));
  await mw(ctx, next);
  expect(next).toHaveBeenCalledTimes(1);
  expect(ctx.stickyWorker).toBeUndefined();
  expect(sessions.size).toBe(1);
  expect(sessions.get('other')).toBe('w1');
});

test('session - a failed request does not move the session, and the error propagates', async () => {
  const { clock, sessions, mw } = setup();
  sessions.set('s1', 'w1');
  const ctx = makeCtx({ clock, sessionId: 's1' });
  const err = new RouterError('ALL_RETRIES_EXHAUSTED', 'all failed');
  await expect(
    mw(ctx, async () => {
      record(ctx, 'w1', false);
      record(ctx, 'w2', false);
      throw err;
    }),
  ).rejects.toBe(err);
  expect(sessions.get('s1')).toBe('w1');
});

test('session - a failed new session stays unbound', async () => {
  const { clock, sessions, mw } = setup();
  const ctx = makeCtx({ clock, sessionId: 'fresh' });
  await expect(
    mw(ctx, async () => {
      record(ctx, 'w1', false);
      throw new RouterError('WORKER_ERROR', 'failed');
    }),
  ).rejects.toMatchObject({ code: 'WORKER_ERROR' });
  expect(sessions.get('fresh')).toBeUndefined();
  expect(sessions.size).toBe(0);
});

test('session - an expired session gives no sticky worker', async () => {
  const { clock, sessions, mw } = setup();
  sessions.set('s1', 'w1');
  await clock.advance(60_000);
  const ctx = makeCtx({ clock, sessionId: 's1' });
  await mw(ctx, async () => {
    expect(ctx.stickyWorker).toBeUndefined();
    record(ctx, 'w2', true);
  });
  expect(sessions.get('s1')).toBe('w2');
});
