/** session middleware: sticky worker from the SessionRegistry, moved to whoever actually answered. */
import type { RouteContext } from '../../../src/context';
import { SessionRegistry } from '../../../src/controller/sessions';
import { RouterError } from '../../../src/errors';
import { session } from '../../../middleware/session';
import { rendezvousPick } from '../../../src/rendezvous';
import { makeCtx, makeWorker } from '../../helpers/context';
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

describe('across controllers (rendezvous hashing, shared moves)', () => {
  const workers = ['w1', 'w2', 'w3'].map((id) => makeWorker(id));
  function shared(healthy = workers) {
    const clock = new FakeClock();
    const sessions = new SessionRegistry({ ttlMs: 60_000, maxSessions: 100, clock });
    const moves: Array<[string, string]> = [];
    const registry = { forModel: jest.fn(() => healthy) };
    const mw = session({}, { sessions, registry, sessionMoves: { record: (s, w) => void moves.push([s, w]) } });
    return { clock, sessions, moves, mw, registry };
  }

  test('session - a new session gets the rendezvous choice over the healthy workers, and nothing is written', async () => {
    const { clock, sessions, moves, mw } = shared();
    const ctx = makeCtx({ clock, sessionId: 'chat-42' });
    const hashed = rendezvousPick('chat-42', workers, (w) => w.id)?.id as string;
    await mw(ctx, async () => {
      expect(ctx.stickyWorker).toBe(hashed);
      record(ctx, hashed, true);
    });
    expect(moves).toEqual([]);
    expect(sessions.size).toBe(0);
  });

  test('session - two controllers with the same workers pick the same worker without sharing anything', async () => {
    const one = shared();
    const two = shared([...workers].reverse());
    for (let i = 0; i < 50; i++) {
      const c1 = makeCtx({ sessionId: `s${i}` });
      const c2 = makeCtx({ sessionId: `s${i}` });
      await one.mw(c1, async () => undefined);
      await two.mw(c2, async () => undefined);
      expect(c1.stickyWorker).toBe(c2.stickyWorker);
    }
  });

  test('session - answered elsewhere than its hashed worker (failover, saturation): the move is kept and shared', async () => {
    const { clock, sessions, moves, mw } = shared();
    const hashed = rendezvousPick('chat-7', workers, (w) => w.id)?.id as string;
    const other = workers.find((w) => w.id !== hashed)!.id;
    const ctx = makeCtx({ clock, sessionId: 'chat-7' });
    await mw(ctx, async () => {
      record(ctx, hashed, false);
      record(ctx, other, true);
    });
    expect(sessions.get('chat-7')).toBe(other);
    expect(moves).toEqual([['chat-7', other]]);
    // The next turn follows the move while that worker is healthy, and writes nothing more.
    const next = makeCtx({ clock, sessionId: 'chat-7' });
    await mw(next, async () => record(next, other, true));
    expect(next.stickyWorker).toBe(other);
    expect(moves).toHaveLength(1);
  });

  test('session - a move to a worker that is no longer healthy gives way to the hash over the healthy ones', async () => {
    const healthy = workers.slice(0, 2);
    const { clock, sessions, moves, mw } = shared(healthy);
    sessions.set('chat-9', 'w3');
    const ctx = makeCtx({ clock, sessionId: 'chat-9' });
    const hashed = rendezvousPick('chat-9', healthy, (w) => w.id)?.id as string;
    await mw(ctx, async () => {
      expect(ctx.stickyWorker).toBe(hashed);
      record(ctx, hashed, true);
    });
    // Recorded, so that w3 coming back does not pull the session back and split the controllers.
    expect(sessions.get('chat-9')).toBe(hashed);
    expect(moves).toEqual([['chat-9', hashed]]);
  });
});
