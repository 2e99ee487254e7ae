import { BreakerBook } from '../../src/controller/breakers';
import { checkAdmin } from '../../src/controller/cluster-admin';
import { configSummary, describeBreaker, redactUrl } from '../../src/controller/cluster-api';
import { ClusterStats, quantile } from '../../src/controller/cluster-stats';
import { EventBus } from '../../src/controller/events';
import { isRouterError } from '../../src/errors';
import { testConfig } from '../helpers/cluster';
import { FakeClock } from '../helpers/fake-clock';

describe('EventBus', () => {
  test('events - numbered in order, delivered to every listener, operator events kept for replay', () => {
    let now = 1000;
    const bus = new EventBus(3, () => now);
    const got: string[] = [];
    const stop = bus.subscribe((e) => got.push(`${e.seq}:${e.type}`));
    bus.emit({ type: 'worker.up', worker: 'a' });
    bus.emit({ type: 'request', requestId: 'r', status: 200, code: null, durationMs: 5 });
    now = 2000;
    bus.emit({ type: 'worker.down', worker: 'a', reason: 'bye' });
    expect(got).toEqual(['1:worker.up', '2:request', '3:worker.down']);
    // Observations are not replayed; operator events are, after a given sequence number.
    expect(bus.recent().map((e) => e.seq)).toEqual([1, 3]);
    expect(bus.recent(1).map((e) => [e.seq, e.time])).toEqual([[3, 2000]]);
    stop();
    bus.emit({ type: 'worker.up', worker: 'b' });
    expect(got).toHaveLength(3);
    expect(bus.listenerCount).toBe(0);
  });

  test('events - the ring keeps only the last `keep` operator events', () => {
    const bus = new EventBus(2);
    for (const w of ['a', 'b', 'c']) bus.emit({ type: 'worker.up', worker: w });
    expect(bus.recent().map((e) => (e as { worker: string }).worker)).toEqual(['b', 'c']);
  });

  test('events - a throwing listener neither breaks the emitter nor the other listeners', () => {
    const bus = new EventBus();
    const seen: number[] = [];
    bus.subscribe(() => {
      throw new Error('closed socket');
    });
    bus.subscribe((e) => seen.push(e.seq));
    expect(() => bus.emit({ type: 'worker.up', worker: 'a' })).not.toThrow();
    expect(seen).toEqual([1]);
  });
});

describe('ClusterStats', () => {
  test('stats - per worker: outcomes, errors by code, TTFT and tokens/s medians', () => {
    const bus = new EventBus();
    const stats = new ClusterStats(bus);
    bus.emit({ type: 'attempt', requestId: 'r1', worker: 'w', outcome: 'success', code: null, durationMs: 1100, ttftMs: 100, completionTokens: 100 });
    bus.emit({ type: 'attempt', requestId: 'r2', worker: 'w', outcome: 'success', code: null, durationMs: 500, completionTokens: 50 });
    bus.emit({ type: 'attempt', requestId: 'r3', worker: 'w', outcome: 'worker_failure', code: 'WORKER_ERROR', durationMs: 3 });
    bus.emit({ type: 'attempt', requestId: 'r4', worker: null, outcome: 'no_capacity', code: 'NO_WORKERS_AVAILABLE', durationMs: 1 });
    const w = stats.worker('w');
    expect(w.outcomes).toEqual({ success: 2, worker_failure: 1 });
    expect(w.errors).toEqual({ WORKER_ERROR: 1 });
    expect(w.ttftMs).toBe(100);
    // 100 tokens in the 1000 ms after the first token, and 50 in 500 ms: both 100 tokens/s.
    expect(w.tokensPerSecond).toBe(100);
    expect(stats.worker('nobody')).toEqual({ ttftMs: null, tokensPerSecond: null, outcomes: {}, errors: {} });
    stats.forget('w');
    expect(stats.worker('w').outcomes).toEqual({});
    stats.close();
    expect(bus.listenerCount).toBe(0);
  });

  test('stats - requests fall into time buckets with counts, 5xx errors and quantiles; old buckets drop', () => {
    let now = 100_000;
    const bus = new EventBus(200, () => now);
    const stats = new ClusterStats(bus, { bucketMs: 1000, historyMs: 5000, now: () => now });
    for (let i = 1; i <= 100; i++) bus.emit({ type: 'request', requestId: `r${i}`, status: i <= 3 ? 503 : 200, code: null, durationMs: i, ttftMs: i / 2 });
    now = 101_500;
    bus.emit({ type: 'request', requestId: 'late', status: 400, code: 'REQUEST_VALIDATION_FAILED', durationMs: 7 });
    const series = stats.series(3000);
    expect(series.map((p) => p.t)).toEqual([98_000, 99_000, 100_000, 101_000]);
    expect(series[2]).toEqual({ t: 100_000, requests: 100, errors: 3, p50Ms: 50, p99Ms: 99, ttftP50Ms: 25, ttftP99Ms: 49.5 });
    // A 400 is the client's mistake, not an error of the cluster.
    expect(series[3]).toMatchObject({ requests: 1, errors: 0, p50Ms: 7, ttftP50Ms: null });
    expect(series[0]).toMatchObject({ requests: 0, p50Ms: null });
    now = 110_000;
    bus.emit({ type: 'request', requestId: 'later', status: 200, code: null, durationMs: 1 });
    expect(stats.series(5000).reduce((n, p) => n + p.requests, 0)).toBe(1);
  });

  test('stats - samples are capped to the most recent: 2,000 per bucket, 50 per worker', () => {
    const now = 200_000;
    const bus = new EventBus(200, () => now);
    const stats = new ClusterStats(bus, { bucketMs: 1000, historyMs: 5000, now: () => now });
    // 500 slow requests, then 2,000 fast ones: only the fast ones are kept.
    for (let i = 0; i < 500; i++) bus.emit({ type: 'request', requestId: `slow${i}`, status: 200, code: null, durationMs: 10_000 });
    for (let i = 0; i < 2000; i++) bus.emit({ type: 'request', requestId: `fast${i}`, status: 200, code: null, durationMs: 1 + (i % 10) });
    const point = stats.series(1000).find((p) => p.t === 200_000);
    expect(point).toMatchObject({ requests: 2500, p99Ms: 10 });
    // A worker's TTFT median: 10 slow attempts, then 50 fast ones.
    for (let i = 0; i < 10; i++) bus.emit({ type: 'attempt', requestId: `a${i}`, worker: 'w', outcome: 'success', code: null, durationMs: 5000, ttftMs: 4000 });
    for (let i = 0; i < 50; i++) bus.emit({ type: 'attempt', requestId: `b${i}`, worker: 'w', outcome: 'success', code: null, durationMs: 50, ttftMs: 20 });
    expect(stats.worker('w').ttftMs).toBe(20);
    // Five more slow ones replace the five oldest fast ones: the median stays fast.
    for (let i = 0; i < 5; i++) bus.emit({ type: 'attempt', requestId: `c${i}`, worker: 'w', outcome: 'success', code: null, durationMs: 5000, ttftMs: 4000 });
    expect(stats.worker('w').ttftMs).toBe(20);
    stats.close();
  });

  test('stats - quantile of nothing is null; of one value is that value', () => {
    expect(quantile([], 0.5)).toBeNull();
    expect(quantile([4], 0.99)).toBe(4);
    expect(quantile([3, 1, 2], 0.5)).toBe(2);
  });
});

describe('admin key', () => {
  const codeOf = (fn: () => void): string | undefined => {
    try {
      fn();
      return undefined;
    } catch (e) {
      return isRouterError(e) ? `${e.status} ${e.code}` : 'not a RouterError';
    }
  };

  test('admin - no key configured: 403; no bearer: 401; wrong: 403; right: passes', () => {
    const key = 'k'.repeat(20);
    expect(codeOf(() => checkAdmin('', `Bearer ${key}`))).toBe('403 ADMIN_FORBIDDEN');
    expect(codeOf(() => checkAdmin(key, undefined))).toBe('401 ADMIN_UNAUTHORIZED');
    expect(codeOf(() => checkAdmin(key, key))).toBe('401 ADMIN_UNAUTHORIZED');
    expect(codeOf(() => checkAdmin(key, 'Bearer wrong'))).toBe('403 ADMIN_FORBIDDEN');
    expect(codeOf(() => checkAdmin(key, `Bearer ${key}x`))).toBe('403 ADMIN_FORBIDDEN');
    expect(codeOf(() => checkAdmin(key, `Bearer ${key}`))).toBeUndefined();
    expect(codeOf(() => checkAdmin(key, `bearer ${key}`))).toBeUndefined();
  });
});

describe('config summary', () => {
  test('summary - shows what runs, never a password, token or admin key', () => {
    const config = testConfig({
      'nats.servers': ['nats://alice:s3cret-pass@127.0.0.1:4222'],
      'nats.user': 'alice',
      'nats.pass': 's3cret-pass',
      'nats.token': 's3cret-token',
      'cluster.admin.key': 'admin-key-s3cret-0123',
      'worker.openai.apiKey': 's3cret-engine-key',
    });
    const text = JSON.stringify(configSummary(config));
    for (const secret of ['s3cret-pass', 's3cret-token', 'admin-key-s3cret', 's3cret-engine-key', 'alice:']) expect(text).not.toContain(secret);
    expect(configSummary(config)).toMatchObject({ nats: { servers: ['nats://127.0.0.1:4222'], auth: 'token' }, admin: true, pipeline: config.cluster.pipeline });
    expect(redactUrl('tls://u:p@h:1')).toBe('tls://h:1');
  });

  test('summary - a breaker is described with what moves it next', async () => {
    const clock = new FakeClock();
    const config = testConfig({ 'cluster.requestRouting.circuitBreaker.failureThreshold': 2, 'cluster.requestRouting.circuitBreaker.timeoutMs': 1000 });
    const breakers = new BreakerBook({ ...config.cluster.requestRouting.circuitBreaker, clock, random: () => 0.5 });
    expect(describeBreaker(breakers, config, 'w', clock.now())).toEqual({ state: 'closed', failures: 0, next: { to: 'open', afterFailures: 2 } });
    breakers.failure('w');
    breakers.failure('w');
    expect(describeBreaker(breakers, config, 'w', clock.now())).toEqual({ state: 'open', trips: 1, next: { to: 'half-open', inMs: 1000 } });
    await clock.advance(1000);
    expect(describeBreaker(breakers, config, 'w', clock.now())).toMatchObject({ state: 'half-open', probesInUse: 0, next: { to: 'closed', afterSuccesses: 2 } });
    expect(breakers.reset('w')).toBe('half-open');
    expect(describeBreaker(breakers, config, 'w', clock.now())).toMatchObject({ state: 'closed', failures: 0 });
    const off = testConfig({ 'cluster.requestRouting.circuitBreaker.enabled': false });
    expect(describeBreaker(breakers, off, 'w', clock.now())).toEqual({ state: 'disabled' });
  });
});
