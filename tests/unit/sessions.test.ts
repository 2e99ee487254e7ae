/** SessionRegistry: session → worker, TTL refreshed on use, least-recently-used size cap. */
import { SessionRegistry } from '../../src/controller/sessions';
import { FakeClock } from '../helpers/fake-clock';

function setup(ttlMs = 1000, maxSessions = 100) {
  const clock = new FakeClock();
  return { clock, sessions: new SessionRegistry({ ttlMs, maxSessions, clock }) };
}

test('sessions - an unknown session has no worker', () => {
  const { sessions } = setup();
  expect(sessions.get('nope')).toBeUndefined();
});

test('sessions - a session expires after ttlMs of idleness', async () => {
  const { clock, sessions } = setup(1000);
  sessions.set('s1', 'w1');
  await clock.advance(999);
  expect(sessions.size).toBe(1);
  await clock.advance(1);
  expect(sessions.get('s1')).toBeUndefined();
  expect(sessions.size).toBe(0);
});

test('sessions - each use refreshes the TTL', async () => {
  const { clock, sessions } = setup(1000);
  sessions.set('s1', 'w1');
  for (let i = 0; i < 5; i++) {
    await clock.advance(800);
    expect(sessions.get('s1')).toBe('w1');
  }
  // 4000 ms after set, alive because it was used; now left idle.
  await clock.advance(1000);
  expect(sessions.get('s1')).toBeUndefined();
});

test('sessions - set moves a session to another worker and restarts its TTL', async () => {
  const { clock, sessions } = setup(1000);
  sessions.set('s1', 'w1');
  await clock.advance(900);
  sessions.set('s1', 'w2');
  expect(sessions.size).toBe(1);
  await clock.advance(900);
  expect(sessions.get('s1')).toBe('w2');
});

test('sessions - over the size cap the least recently used session goes first', () => {
  const { sessions } = setup(60_000, 2);
  sessions.set('a', 'w1');
  sessions.set('b', 'w2');
  expect(sessions.get('a')).toBe('w1'); // a is now more recent than b
  sessions.set('c', 'w3');
  expect(sessions.size).toBe(2);
  expect(sessions.get('b')).toBeUndefined();
  expect(sessions.get('a')).toBe('w1');
  expect(sessions.get('c')).toBe('w3');
});

test('sessions - the size never exceeds the cap', () => {
  const { sessions } = setup(60_000, 3);
  for (let i = 0; i < 50; i++) sessions.set(`s${i}`, 'w1');
  expect(sessions.size).toBe(3);
  expect(['s47', 's48', 's49'].map((s) => sessions.get(s))).toEqual(['w1', 'w1', 'w1']);
  expect(sessions.get('s46')).toBeUndefined();
});

test('sessions - delete forgets a session', () => {
  const { sessions } = setup();
  sessions.set('s1', 'w1');
  sessions.delete('s1');
  expect(sessions.get('s1')).toBeUndefined();
  expect(sessions.size).toBe(0);
});
