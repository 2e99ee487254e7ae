/**
 * The reliability chain against real nats-server and worker processes: circuit breakers, and
 * proof that the order in cluster.pipeline really drives behaviour. Faults are real: --fail-rate 1, and SIGSTOP for a hung worker (SIGCONT to wake it).
 */
import { ConfigError } from '../../src/config';
import { Controller } from '../../src/controller/controller';
import { silentLogger } from '../../src/logger';
import { startNatsServer } from '../../src/nats-server';
import { chat, metricsText, metricValue, signalWorker, STEADY, startCluster, startTogether, testConfig, waitFor, type Cluster } from '../helpers/cluster';

type Reply = Awaited<ReturnType<typeof chat>>;

const CLOSED = 0;
const HALF_OPEN = 1;
const OPEN = 2;

async function breakerState(cluster: Cluster, worker: string): Promise<number | undefined> {
  return metricValue(await metricsText(cluster.url), 'mlx_router_breaker_state', { worker });
}

async function transitions(cluster: Cluster, worker: string, from: string, to: string): Promise<number> {
  return metricValue(await metricsText(cluster.url), 'mlx_router_breaker_transitions_total', { worker, from, to }) ?? 0;
}

describe('breaker opens', () => {
  let cluster: Cluster;
  const openMs = 60_000;

  beforeAll(async () => {
    cluster = await startCluster({
      workers: [{ id: 'a-bad', failRate: 1 }, { id: 'b-good' }],
      config: {
        ...STEADY,
        // Round-robin orders workers by id: a-bad takes turns 0 and 2, so it fails twice in 3 requests.
        'cluster.requestRouting.strategy': 'round-robin',
        'cluster.requestRouting.circuitBreaker.failureThreshold': 2,
        'cluster.requestRouting.circuitBreaker.timeoutMs': openMs,
        'cluster.requestRouting.circuitBreaker.maxTimeoutMs': openMs * 2,
      },
    });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  test('breaker - opens after failureThreshold consecutive failures and the worker stops being selected', async () => {
    const replies: Reply[] = [];
    for (let i = 0; i < 10; i++) replies.push(await chat(cluster.url, { content: `q${i}` }));
    for (const r of replies) {
      expect(r.status).toBe(200);
      expect(r.json.metadata.selectedWorker).toBe('b-good');
    }
    const trips = replies.map((r) => r.json.metadata.circuitBreakerTrips);
    // Request 1 failed once on a-bad, request 3 failed the second time and tripped it.
    expect(trips).toEqual([0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    expect(replies[2].json.metadata).toMatchObject({ retryCount: 1, failedWorkers: ['a-bad'] });
    // After the trip a-bad is filtered out before selection: no attempt goes near it.
    for (const r of replies.slice(3)) {
      expect(r.json.metadata.retryCount).toBe(0);
      expect(r.json.metadata.attempts).toEqual([expect.objectContaining({ worker: 'b-good', outcome: 'success' })]);
    }
    expect(await breakerState(cluster, 'a-bad')).toBe(OPEN);
    expect(await breakerState(cluster, 'b-good')).toBe(CLOSED);
    expect(await transitions(cluster, 'a-bad', 'closed', 'open')).toBe(1);
  });

  test('breaker - when every breaker is open the answer is 503 CIRCUIT_BREAKER_OPEN with Retry-After until half-open', async () => {
    await cluster.stopWorker('b-good');
    await waitFor(() => !cluster.controller.deps.registry.online().some((w) => w.id === 'b-good'), 'b-good to leave');
    const r = await chat(cluster.url);
    expect(r.status).toBe(503);
    expect(r.json.error.router_code).toBe('CIRCUIT_BREAKER_OPEN');
    // Open for 60 s ± 10% jitter, tripped a few seconds ago at most.
    const retryAfter = Number(r.headers.get('retry-after'));
    expect(retryAfter).toBeGreaterThanOrEqual(45);
    expect(retryAfter).toBeLessThanOrEqual(66);
  });
});

describe('breaker recovers', () => {
  let cluster: Cluster;
  const openMs = 1500;
  const attemptMs = 400;

  beforeAll(async () => {
    cluster = await startCluster({
      workers: [{ id: 'a' }, { id: 'b' }],
      config: {
        'cluster.requestRouting.strategy': 'round-robin',
        'cluster.requestRouting.attemptTimeoutMs': attemptMs,
        'cluster.requestRouting.circuitBreaker.failureThreshold': 2,
        'cluster.requestRouting.circuitBreaker.successThreshold': 2,
        'cluster.requestRouting.circuitBreaker.halfOpenPermits': 1,
        'cluster.requestRouting.circuitBreaker.timeoutMs': openMs,
        // A stopped worker sends no heartbeats: keep it "online" so it is the breaker that decides.
        'discovery.offlineAfterMs': 20_000,
      },
    });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  test('breaker - a hung worker trips it, and once healthy it is probed half-open by the clock and closes', async () => {
    signalWorker(cluster, 'a', 'SIGSTOP');
    const hung: Reply[] = [];
    let thirdSentAt = 0;
    for (let i = 0; i < 3; i++) {
      thirdSentAt = Date.now();
      hung.push(await chat(cluster.url, { content: `hung ${i}` }));
    }
    for (const r of hung) {
      expect(r.status).toBe(200);
      expect(r.json.metadata.selectedWorker).toBe('b');
    }
    // Turns 0 and 2 went to a and timed out; the second timeout tripped the breaker.
    expect(hung.map((r) => r.json.metadata.timeouts)).toEqual([1, 0, 1]);
    expect(hung.map((r) => r.json.metadata.circuitBreakerTrips)).toEqual([0, 0, 1]);
    expect(hung[2].json.metadata.attempts[0]).toMatchObject({ worker: 'a', outcome: 'ambiguous', code: 'WORKER_TIMEOUT' });
    expect(await breakerState(cluster, 'a')).toBe(OPEN);
    // The trip came when the third request's attempt on a timed out: not before this.
    const trippedNoEarlierThan = thirdSentAt + attemptMs;

    // While open, a is not tried at all.
    const whileOpen = await chat(cluster.url);
    expect(whileOpen.json.metadata).toMatchObject({ selectedWorker: 'b', retryCount: 0 });

    signalWorker(cluster, 'a', 'SIGCONT');
    // No request is sent meanwhile: the clock alone turns it half-open (1500 ms ± 10%).
    await waitFor(async () => (await breakerState(cluster, 'a')) === HALF_OPEN, 'a to turn half-open', 5000, 50);
    expect(Date.now() - trippedNoEarlierThan).toBeGreaterThanOrEqual(openMs * 0.9 - 20);

    const after: Reply[] = [];
    for (let i = 0; i < 6; i++) after.push(await chat(cluster.url, { content: `back ${i}` }));
    for (const r of after) {
      expect(r.status).toBe(200);
      expect(r.json.metadata.retryCount).toBe(0);
    }
    // successThreshold 2: two probes on a close it, and a keeps getting its turns afterwards.
    expect(after.filter((r) => r.json.metadata.selectedWorker === 'a').length).toBeGreaterThanOrEqual(3);
    expect(await breakerState(cluster, 'a')).toBe(CLOSED);
    expect(await transitions(cluster, 'a', 'closed', 'open')).toBe(1);
    expect(await transitions(cluster, 'a', 'open', 'half-open')).toBe(1);
    expect(await transitions(cluster, 'a', 'half-open', 'closed')).toBe(1);
    expect(await transitions(cluster, 'a', 'half-open', 'open')).toBe(0);
  });
});

describe('cluster.pipeline order drives behaviour', () => {
  // Same workers, same limits; only the pipeline differs.
  const attemptMs = 600;
  const config = {
    'cluster.requestRouting.strategy': 'round-robin',
    'cluster.requestRouting.attemptTimeoutMs': attemptMs,
    'discovery.offlineAfterMs': 20_000,
  };
  let full: Cluster;
  let stripped: Cluster;

  beforeAll(async () => {
    [full, stripped] = await startTogether([
      startCluster({ workers: [{ id: 'a-hung' }, { id: 'b-ok' }], config }),
      startCluster({ workers: [{ id: 'a-hung' }, { id: 'b-ok' }], config: { ...config, 'cluster.pipeline': ['metrics', 'select', 'timeout', 'health'] } }),
    ]);
    signalWorker(full, 'a-hung', 'SIGSTOP');
    signalWorker(stripped, 'a-hung', 'SIGSTOP');
  });

  afterAll(async () => {
    await Promise.all([full?.stop(), stripped?.stop()]);
  });

  test('pipeline - with the default pipeline a cluster with one hung worker of two keeps answering', async () => {
    expect(full.controller.pipeline.names).toEqual(['metrics', 'limits', 'session', 'retry', 'hedge', 'breaker', 'priority', 'select', 'timeout', 'health']);
    const replies: Reply[] = [];
    for (let i = 0; i < 4; i++) replies.push(await chat(full.url, { content: `q${i}` }));
    expect(replies.map((r) => r.status)).toEqual([200, 200, 200, 200]);
    expect(replies.map((r) => r.json.metadata.selectedWorker)).toEqual(['b-ok', 'b-ok', 'b-ok', 'b-ok']);
    expect(replies.map((r) => r.json.metadata.timeouts)).toEqual([1, 0, 1, 0]);
  });

  test('pipeline - without retry and breaker in cluster.pipeline the same cluster visibly fails with 504s', async () => {
    expect(stripped.controller.pipeline.names).toEqual(['metrics', 'select', 'timeout', 'health']);
    const replies: Reply[] = [];
    for (let i = 0; i < 4; i++) replies.push(await chat(stripped.url, { content: `q${i}` }));
    expect(replies.map((r) => r.status)).toEqual([504, 200, 504, 200]);
    for (const r of [replies[0], replies[2]]) {
      expect(r.json.error.router_code).toBe('WORKER_TIMEOUT');
      expect(r.headers.get('x-mlx-worker')).toBe('a-hung');
      expect(r.headers.get('x-mlx-retries')).toBe('0');
    }
  });

  test('pipeline - an unknown name in cluster.pipeline fails Controller.start with a ConfigError naming it', async () => {
    const nats = await startNatsServer();
    try {
      const config = testConfig({ 'nats.servers': [nats.url], 'cluster.pipeline': ['metrics', 'retry', 'breakr', 'select'] });
      let started: Controller | undefined;
      const err = await Controller.start({ config, log: silentLogger() }).then(
        (c) => {
          started = c;
          return undefined;
        },
        (e: unknown) => e,
      );
      await started?.stop();
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as Error).message).toContain("'breakr'");
    } finally {
      await nats.stop();
    }
  });
});
