/** What controllers share over NATS: breaker signals and session moves, read defensively. */
import { isPeerSignal } from '../../src/controller/breaker-signals';
import { moveKey, readMove, sessionOfKey } from '../../src/controller/session-moves';
import type { BreakerSignal } from '../../src/protocol';

const entry = (key: string, value: string, operation: 'PUT' | 'DEL' | 'PURGE' = 'PUT') => ({ key, operation, string: () => value });

test('session moves - any session id becomes a valid key and back', () => {
  for (const s of ['plain', 'with space', 'a.b.c', 'ünïcødé/🙂', '*', '>', '-_=']) {
    const key = moveKey(s);
    expect(key).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(sessionOfKey(key)).toBe(s);
  }
});

test('session moves - a put of a valid worker id is a move', () => {
  expect(readMove(entry(moveKey('s1'), JSON.stringify({ worker: 'w-2', controller: 'c' })))).toEqual({ session: 's1', worker: 'w-2' });
});

test('session moves - deletes, garbage and bad worker ids are ignored, never thrown', () => {
  const key = moveKey('s1');
  expect(readMove(entry(key, '{"worker":"w1"}', 'DEL'))).toBeUndefined();
  expect(readMove(entry(key, 'not json'))).toBeUndefined();
  expect(readMove(entry(key, 'null'))).toBeUndefined();
  expect(readMove(entry(key, '{"worker":42}'))).toBeUndefined();
  expect(readMove(entry(key, '{"worker":"w1.infer.>"}'))).toBeUndefined();
  expect(readMove(entry('', '{"worker":"w1"}'))).toBeUndefined();
});

test("breaker signals - a peer's well-formed open or close is evidence; our own echo and garbage are not", () => {
  const ok: BreakerSignal = { type: 'breaker', controller: 'c2', worker: 'w1', state: 'open' };
  expect(isPeerSignal(ok, 'c1')).toBe(true);
  expect(isPeerSignal({ ...ok, state: 'closed' }, 'c1')).toBe(true);
  expect(isPeerSignal(ok, 'c2')).toBe(false);
  expect(isPeerSignal(undefined, 'c1')).toBe(false);
  expect(isPeerSignal({ ...ok, state: 'half-open' } as unknown as BreakerSignal, 'c1')).toBe(false);
  expect(isPeerSignal({ ...ok, worker: 'w1.>' }, 'c1')).toBe(false);
  expect(isPeerSignal({ ...ok, type: 'heartbeat' } as unknown as BreakerSignal, 'c1')).toBe(false);
  expect(isPeerSignal({ ...ok, controller: 7 } as unknown as BreakerSignal, 'c1')).toBe(false);
});
