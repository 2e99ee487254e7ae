/** BreakerBook (src/controller/breakers.ts) on a FakeClock: every transition, exactly. */
import { BreakerBook, type BreakerKind, type BreakerOptions } from '../../src/controller/breakers';
import { FakeClock } from '../helpers/fake-clock';

function book(patch: Partial<BreakerOptions> = {}) {
  const clock = new FakeClock();
  const transitions: Array<[string, BreakerKind, BreakerKind]> = [];
  const b = new BreakerBook({
    failureThreshold: 3,
    successThreshold: 2,
    timeoutMs: 1000,
    maxTimeoutMs: 10_000,
    halfOpenPermits: 1,
    clock,
    // 0.5 gives a jitter factor of exactly 1: open durations are the base values.
    random: () => 0.5,
    onTransition: (w, from, to) => transitions.push([w, from, to]),
    ...patch,
  });
  return { clock, b, transitions };
}

/** Open time of the current trip: `until - now` right after it opened. */
function openFor(b: BreakerBook, clock: FakeClock, worker = 'w1'): number {
  const s = b.state(worker);
  if (s.kind !== 'open') throw new Error(`expected open, got ${s.kind}`);
  return s.until - clock.now();
}

/** Trips a closed or half-open breaker once. */
function trip(b: BreakerBook, threshold = 3, worker = 'w1'): void {
  if (b.state(worker).kind === 'half-open') {
    expect(b.failure(worker)).toBe(true);
    return;
  }
  for (let i = 1; i < threshold; i++) expect(b.failure(worker)).toBe(false);
  expect(b.failure(worker)).toBe(true);
}

test('breakers - an unknown worker is closed and allowed', () => {
  const { b } = book();
  expect(b.state('w1')).toEqual({ kind: 'closed', failures: 0 });
  expect(b.allows('w1')).toBe(true);
  expect(b.acquire('w1')).toBe(true);
});

test('breakers - opens after failureThreshold consecutive failures, not before', () => {
  const { b } = book({ failureThreshold: 3 });
  expect(b.failure('w1')).toBe(false);
  expect(b.failure('w1')).toBe(false);
  expect(b.state('w1')).toEqual({ kind: 'closed', failures: 2 });
  expect(b.failure('w1')).toBe(true);
  expect(b.state('w1').kind).toBe('open');
  expect(b.allows('w1')).toBe(false);
  expect(b.acquire('w1')).toBe(false);
});

test('breakers - a success resets the consecutive failure count', () => {
  const { b } = book({ failureThreshold: 3 });
  b.failure('w1');
  b.failure('w1');
  b.success('w1');
  expect(b.state('w1')).toEqual({ kind: 'closed', failures: 0 });
  b.failure('w1');
  b.failure('w1');
  expect(b.state('w1').kind).toBe('closed');
  expect(b.failure('w1')).toBe(true);
});

test('breakers - workers have independent breakers', () => {
  const { b } = book({ failureThreshold: 1 });
  b.failure('w1');
  expect(b.state('w1').kind).toBe('open');
  expect(b.state('w2').kind).toBe('closed');
});

test('breakers - turns half-open by the clock alone, with no call in between', async () => {
  const { b, clock, transitions } = book();
  trip(b);
  expect(openFor(b, clock)).toBe(1000);
  await clock.advance(999);
  expect(b.state('w1').kind).toBe('open');
  expect(b.retryAfterMs(['w1'])).toBe(1);
  await clock.advance(1);
  // Only reads happen here: state() applies the clock.
  expect(b.state('w1')).toEqual({ kind: 'half-open', inUse: 0, successes: 0, trips: 1 });
  expect(b.allows('w1')).toBe(true);
  expect(b.retryAfterMs(['w1'])).toBe(0);
  expect(transitions).toEqual([
    ['w1', 'closed', 'open'],
    ['w1', 'open', 'half-open'],
  ]);
});

test('breakers - the metrics snapshot sees half-open by the clock too', async () => {
  const { b, clock } = book({ failureThreshold: 1 });
  b.failure('w1');
  expect(b.snapshot()).toEqual([['w1', 'open']]);
  await clock.advance(1000);
  expect(b.snapshot()).toEqual([['w1', 'half-open']]);
});

test.each([1, 2])('breakers - admits exactly %i half-open probe(s)', async (permits) => {
  const { b, clock } = book({ halfOpenPermits: permits });
  trip(b);
  await clock.advance(1000);
  for (let i = 0; i < permits; i++) {
    expect(b.allows('w1')).toBe(true);
    expect(b.acquire('w1')).toBe(true);
  }
  expect(b.allows('w1')).toBe(false);
  expect(b.acquire('w1')).toBe(false);
  expect(b.acquire('w1')).toBe(false);
  expect(b.state('w1')).toMatchObject({ kind: 'half-open', inUse: permits });
});

test('breakers - release frees a half-open permit for the next probe', async () => {
  const { b, clock } = book({ halfOpenPermits: 1 });
  trip(b);
  await clock.advance(1000);
  expect(b.acquire('w1')).toBe(true);
  expect(b.acquire('w1')).toBe(false);
  b.release('w1');
  expect(b.state('w1')).toMatchObject({ kind: 'half-open', inUse: 0, successes: 0 });
  expect(b.acquire('w1')).toBe(true);
});

test('breakers - successThreshold successes close it; one is not enough', async () => {
  const { b, clock, transitions } = book({ successThreshold: 2, halfOpenPermits: 1 });
  trip(b);
  await clock.advance(1000);
  expect(b.acquire('w1')).toBe(true);
  b.success('w1');
  // Still half-open, and the success gave the permit back for the second probe.
  expect(b.state('w1')).toMatchObject({ kind: 'half-open', inUse: 0, successes: 1 });
  expect(b.acquire('w1')).toBe(true);
  b.success('w1');
  expect(b.state('w1')).toEqual({ kind: 'closed', failures: 0 });
  expect(transitions.at(-1)).toEqual(['w1', 'half-open', 'closed']);
});

test('breakers - one half-open failure reopens it for twice as long', async () => {
  const { b, clock, transitions } = book({ timeoutMs: 1000 });
  trip(b);
  await clock.advance(1000);
  expect(b.acquire('w1')).toBe(true);
  expect(b.failure('w1')).toBe(true);
  expect(b.state('w1')).toMatchObject({ kind: 'open', trips: 2 });
  expect(openFor(b, clock)).toBe(2000);
  expect(transitions.map(([, from, to]) => `${from}->${to}`)).toEqual(['closed->open', 'open->half-open', 'half-open->open']);
});

test('breakers - the open time doubles with each repeated trip up to maxTimeoutMs', async () => {
  const { b, clock } = book({ timeoutMs: 1000, maxTimeoutMs: 5000 });
  trip(b);
  const durations: number[] = [];
  for (let i = 0; i < 5; i++) {
    durations.push(openFor(b, clock));
    await clock.advance(durations[i]);
    trip(b);
  }
  durations.push(openFor(b, clock));
  expect(durations).toEqual([1000, 2000, 4000, 5000, 5000, 5000]);
});

test('breakers - closing after recovery starts the next trip from the base time again', async () => {
  const { b, clock } = book({ timeoutMs: 1000, successThreshold: 1 });
  trip(b);
  await clock.advance(1000);
  trip(b); // second trip: 2000
  await clock.advance(2000);
  b.success('w1');
  expect(b.state('w1').kind).toBe('closed');
  trip(b);
  expect(openFor(b, clock)).toBe(1000);
});

test('breakers - jitter keeps the open time within ±10% of its base, and never above the cap', () => {
  const low = book({ random: () => 0, timeoutMs: 1000, maxTimeoutMs: 10_000 });
  trip(low.b);
  expect(openFor(low.b, low.clock)).toBeCloseTo(900, 9);

  const high = book({ random: () => 0.999999, timeoutMs: 1000, maxTimeoutMs: 10_000 });
  trip(high.b);
  const d = openFor(high.b, high.clock);
  expect(d).toBeLessThan(1100);
  expect(d).toBeGreaterThan(1099.99);

  const capped = book({ random: () => 0.999999, timeoutMs: 1000, maxTimeoutMs: 1000 });
  trip(capped.b);
  expect(openFor(capped.b, capped.clock)).toBe(1000);

  const cappedLow = book({ random: () => 0, timeoutMs: 1000, maxTimeoutMs: 1000 });
  trip(cappedLow.b);
  expect(openFor(cappedLow.b, cappedLow.clock)).toBeCloseTo(900, 9);
});

test('breakers - jitter with Math.random spreads within the bounds', () => {
  for (let i = 0; i < 200; i++) {
    const { b, clock } = book({ random: Math.random, failureThreshold: 1 });
    b.failure('w1');
    const d = openFor(b, clock);
    expect(d).toBeGreaterThanOrEqual(900);
    expect(d).toBeLessThan(1100);
  }
});

test('breakers - late results while open change nothing', () => {
  const { b, clock, transitions } = book({ failureThreshold: 1 });
  b.failure('w1');
  const before = b.state('w1');
  expect(b.failure('w1')).toBe(false);
  b.success('w1');
  b.release('w1');
  expect(b.state('w1')).toEqual(before);
  expect(openFor(b, clock)).toBe(1000);
  expect(transitions).toHaveLength(1);
});

test('breakers - retryAfterMs is the time to the first half-open among the workers, undefined when none is open', async () => {
  const { b, clock } = book({ failureThreshold: 1 });
  expect(b.retryAfterMs(['w1', 'w2'])).toBeUndefined();
  b.failure('w1');
  await clock.advance(400);
  b.failure('w2');
  expect(b.retryAfterMs(['w1', 'w2'])).toBe(600);
  expect(b.retryAfterMs(['w2'])).toBe(1000);
  expect(b.retryAfterMs(['w2', 'w3'])).toBe(1000);
});

test('breakers - onTransition is called once for every change and never for a non-change', async () => {
  const { b, clock, transitions } = book({ failureThreshold: 2, successThreshold: 1 });
  b.failure('w1');
  b.success('w1');
  expect(transitions).toEqual([]);
  trip(b, 2);
  b.state('w1');
  await clock.advance(1000);
  b.state('w1');
  b.state('w1');
  trip(b);
  await clock.advance(2000);
  b.acquire('w1');
  b.success('w1');
  expect(transitions).toEqual([
    ['w1', 'closed', 'open'],
    ['w1', 'open', 'half-open'],
    ['w1', 'half-open', 'open'],
    ['w1', 'open', 'half-open'],
    ['w1', 'half-open', 'closed'],
  ]);
});

test('breakers - forget drops the breaker so the worker starts closed again', () => {
  const { b } = book({ failureThreshold: 1 });
  b.failure('w1');
  b.forget('w1');
  expect(b.snapshot()).toEqual([]);
  expect(b.state('w1')).toEqual({ kind: 'closed', failures: 0 });
  expect(b.allows('w1')).toBe(true);
});

test('breakers - a probe from an earlier half-open period neither frees a permit of nor closes a later one', async () => {
  const clock = new FakeClock();
  const b = new BreakerBook({ failureThreshold: 1, successThreshold: 1, timeoutMs: 100, maxTimeoutMs: 100, halfOpenPermits: 1, clock, random: () => 0.5 });
  b.failure('w1');
  await clock.advance(200);
  const firstPeriod = b.ticket('w1');
  expect(firstPeriod.kind).toBe('half-open');
  expect(b.acquire('w1')).toBe(true); // probe A holds the only permit of the first period
  expect(b.failure('w1', b.ticket('w1'))).toBe(true); // another probe outcome reopens it
  await clock.advance(200);
  const secondPeriod = b.ticket('w1');
  expect(secondPeriod.kind).toBe('half-open');
  expect(b.acquire('w1')).toBe(true); // probe C holds the only permit of the second period
  // Probe A ends late: it must not free C's permit, nor close the breaker.
  b.release('w1', firstPeriod);
  expect(b.allows('w1')).toBe(false);
  b.success('w1', firstPeriod);
  expect(b.state('w1').kind).toBe('half-open');
  b.success('w1', secondPeriod);
  expect(b.state('w1').kind).toBe('closed');
});

describe("peers' evidence", () => {
  test('breakers - a peer opening opens a closed breaker for the given time only, marked as peer-caused', async () => {
    const causes: string[] = [];
    const { clock, b } = book({ onTransition: (_w, _f, to, cause) => causes.push(`${to}:${cause}`) });
    b.peerOpened('w1', 300);
    expect(b.allows('w1')).toBe(false);
    expect(openFor(b, clock)).toBe(300);
    await clock.advance(300);
    expect(b.state('w1').kind).toBe('half-open');
    expect(causes).toEqual(['open:peer', 'half-open:local']);
  });

  test("breakers - after a peer's open, this controller's own probe decides: a failure is a first trip of its own", async () => {
    const { clock, b } = book();
    b.peerOpened('w1', 300);
    await clock.advance(300);
    expect(b.acquire('w1')).toBe(true);
    expect(b.failure('w1')).toBe(true);
    expect(openFor(b, clock)).toBe(1000);
  });

  test('breakers - a peer opening leaves an open or half-open breaker to its own judgement', async () => {
    const { clock, b } = book();
    trip(b);
    const until = (b.state('w1') as { until: number }).until;
    b.peerOpened('w1', 50_000);
    expect((b.state('w1') as { until: number }).until).toBe(until);
    await clock.advance(1000);
    expect(b.state('w1').kind).toBe('half-open');
    b.peerOpened('w1', 50_000);
    expect(b.state('w1').kind).toBe('half-open');
  });

  test('breakers - a peer closing half-opens an open breaker now (probe early); a closed one stays closed', () => {
    const { b, transitions } = book();
    b.peerClosed('w2');
    expect(b.state('w2').kind).toBe('closed');
    trip(b);
    b.peerClosed('w1');
    expect(b.state('w1').kind).toBe('half-open');
    expect(transitions).toEqual([
      ['w1', 'closed', 'open'],
      ['w1', 'open', 'half-open'],
    ]);
  });

  test('breakers - peerOpened with no time (0, NaN) does nothing', () => {
    const { b } = book();
    b.peerOpened('w1', 0);
    b.peerOpened('w1', Number.NaN);
    expect(b.state('w1').kind).toBe('closed');
  });
});
