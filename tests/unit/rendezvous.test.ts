/** Rendezvous hashing: the same choice everywhere, even spread, and minimal movement. */
import { hash53, rendezvousPick, rendezvousWeight } from '../../src/rendezvous';

const ids = (n: number) => Array.from({ length: n }, (_, i) => `worker-${i + 1}`);
const sessions = Array.from({ length: 3000 }, (_, i) => `session-${i}`);
const pick = (s: string, workers: string[]) => rendezvousPick(s, workers, (w) => w) as string;

test('rendezvous - the choice depends only on the session and the set, not on the order of the workers', () => {
  const workers = ids(5);
  const reversed = [...workers].reverse();
  for (const s of sessions.slice(0, 300)) expect(pick(s, reversed)).toBe(pick(s, workers));
});

test('rendezvous - an empty set picks nothing; one worker takes every session', () => {
  expect(rendezvousPick('s', [], (w: string) => w)).toBeUndefined();
  expect(pick('s', ['only'])).toBe('only');
});

test('rendezvous - sessions spread evenly over the workers (each within 20 % of its share)', () => {
  const workers = ids(5);
  const count = new Map<string, number>();
  for (const s of sessions) count.set(pick(s, workers), (count.get(pick(s, workers)) ?? 0) + 1);
  expect(count.size).toBe(5);
  for (const n of count.values()) expect(Math.abs(n - sessions.length / 5)).toBeLessThan(0.2 * (sessions.length / 5));
});

test("rendezvous - losing a worker moves only its own sessions, each to its next choice", () => {
  const workers = ids(5);
  const before = new Map(sessions.map((s) => [s, pick(s, workers)]));
  const lost = 'worker-3';
  const left = workers.filter((w) => w !== lost);
  let moved = 0;
  for (const s of sessions) {
    const now = pick(s, left);
    if (before.get(s) === lost) {
      moved++;
      // The next choice: the highest weight among the rest.
      const second = [...left].sort((x, y) => rendezvousWeight(s, y) - rendezvousWeight(s, x))[0];
      expect(now).toBe(second);
    } else {
      expect(now).toBe(before.get(s));
    }
  }
  expect(moved).toBeGreaterThan(0);
});

test('rendezvous - a worker joining takes only about its share, and only from the others', () => {
  const workers = ids(4);
  const grown = [...workers, 'worker-new'];
  let taken = 0;
  for (const s of sessions) {
    const was = pick(s, workers);
    const now = pick(s, grown);
    if (now !== was) {
      expect(now).toBe('worker-new');
      taken++;
    }
  }
  expect(taken / sessions.length).toBeGreaterThan(0.15);
  expect(taken / sessions.length).toBeLessThan(0.25);
});

test('rendezvous - the hash is stable across runs and keeps (a, bc) apart from (ab, c)', () => {
  // Fixed values: a change of hash would silently split controllers of two versions.
  expect(hash53('')).toBe(3338908027751811);
  expect(hash53('mlx-router')).toBe(hash53('mlx-router'));
  expect(rendezvousWeight('bc', 'a')).not.toBe(rendezvousWeight('c', 'ab'));
});
