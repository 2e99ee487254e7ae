/** Adaptive limits: a percentile of recent observations times a factor, between floor and ceiling. */
import { AdaptiveLimits } from '../../src/adaptive-limits';

const options = { enabled: true, factor: 4, floorMs: 200, minSamples: 5, window: 16 };

test('adaptive - the configured limit applies until enough observations exist', () => {
  const a = new AdaptiveLimits(options);
  for (let i = 0; i < 4; i++) a.observeTtft('w', 'm', 20);
  expect(a.ttftLimit('w', 'm', 10_000)).toBe(10_000);
  a.observeTtft('w', 'm', 20);
  expect(a.ttftLimit('w', 'm', 10_000)).toBe(200); // 4 × 20 = 80, raised to the floor
});

test('adaptive - a slow worker is judged by its own pace, never above the ceiling', () => {
  const a = new AdaptiveLimits(options);
  for (let i = 0; i < 10; i++) a.observeTtft('slow', 'm', 1500);
  for (let i = 0; i < 10; i++) a.observeTtft('fast', 'm', 100);
  expect(a.ttftLimit('slow', 'm', 10_000)).toBe(6000);
  expect(a.ttftLimit('fast', 'm', 10_000)).toBe(400);
  expect(a.ttftLimit('slow', 'm', 5000)).toBe(5000);
  // Per model, too.
  expect(a.ttftLimit('fast', 'other', 10_000)).toBe(10_000);
});

test('adaptive - only the recent window counts, and gaps are learned apart from TTFT', () => {
  const a = new AdaptiveLimits(options);
  for (let i = 0; i < 16; i++) a.observeTtft('w', 'm', 2000);
  for (let i = 0; i < 16; i++) a.observeTtft('w', 'm', 100);
  expect(a.ttftLimit('w', 'm', 60_000)).toBe(400);
  for (let i = 0; i < 5; i++) a.observeGap('w', 'm', 100);
  expect(a.idleLimit('w', 'm', 10_000)).toBe(400);
});

test('adaptive - disabled learns nothing', () => {
  const a = new AdaptiveLimits({ ...options, enabled: false });
  for (let i = 0; i < 10; i++) a.observeTtft('w', 'm', 10);
  expect(a.ttftLimit('w', 'm', 10_000)).toBe(10_000);
});

test('adaptive - the number of worker+model pairs is bounded', () => {
  const a = new AdaptiveLimits({ ...options, maxKeys: 2 });
  for (const w of ['a', 'b', 'c']) for (let i = 0; i < 5; i++) a.observeTtft(w, 'm', 50);
  expect(a.ttftLimit('a', 'm', 10_000)).toBe(10_000); // forgotten
  expect(a.ttftLimit('c', 'm', 10_000)).toBe(200);
});

test('adaptive - the pair forgotten is the least recently updated, across workers and models', () => {
  const a = new AdaptiveLimits({ ...options, maxKeys: 2 });
  const learn = (w: string, m: string): void => {
    for (let i = 0; i < 5; i++) a.observeTtft(w, m, 50);
  };
  learn('a', 'm1');
  learn('a', 'm2');
  learn('a', 'm1'); // updated: now a/m2 is the oldest
  learn('b', 'm1');
  expect(a.ttftLimit('a', 'm2', 10_000)).toBe(10_000); // forgotten
  expect(a.ttftLimit('a', 'm1', 10_000)).toBe(200);
  expect(a.ttftLimit('b', 'm1', 10_000)).toBe(200);
  // A read is not an update: a/m1 stays the oldest and goes next.
  learn('c', 'm1');
  expect(a.ttftLimit('a', 'm1', 10_000)).toBe(10_000);
  expect(a.ttftLimit('b', 'm1', 10_000)).toBe(200);
  expect(a.ttftLimit('c', 'm1', 10_000)).toBe(200);
});

test('adaptive - a limit read, then a new observation: the next read includes it (the sorted copy is not stale)', () => {
  const a = new AdaptiveLimits({ ...options, floorMs: 1 });
  for (let i = 0; i < 16; i++) a.observeTtft('w', 'm', 10);
  expect(a.ttftLimit('w', 'm', 10_000)).toBe(40);
  expect(a.ttftLimit('w', 'm', 10_000)).toBe(40);
  // The window is 16: one slow observation replaces the oldest; p99 of 16 is the largest.
  a.observeTtft('w', 'm', 100);
  expect(a.ttftLimit('w', 'm', 10_000)).toBe(400);
  // Once it has left the window, the limit comes back down.
  for (let i = 0; i < 16; i++) a.observeTtft('w', 'm', 5);
  expect(a.ttftLimit('w', 'm', 10_000)).toBe(20);
});
