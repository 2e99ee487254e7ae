/**
 * Hedging (issue 11) against real nats-server and worker processes: when the first attempt shows
 * no token by the hedge point, the same request goes to another worker; the first token wins and
 * the loser is cancelled, which the losing worker's own log shows (it runs at debug level, where it
 * logs every cancel it honours). Buffered and streamed; a slow first token and a SIGSTOPped worker.
 *
 * The hedge point here is `initialDelayMs` (150 ms): `minSamples` is out of reach, so nothing is
 * learned and the point is the same for every request. Round-robin over ids sends each request's
 * first attempt to `a`; the hedge, refused `a`, takes `b`.
 */
import { chat, chatStream, metricsText, metricValue, signalWorker, startCluster, streamedText, waitFor, type Cluster } from '../helpers/cluster';

/** Slack for upper time bounds: two cores shared with other test runs. */
const MARGIN_MS = 1500;

const HEDGE_CONFIG = {
  'cluster.requestRouting.strategy': 'round-robin',
  'cluster.requestRouting.hedge.initialDelayMs': 150,
  'cluster.requestRouting.hedge.minSamples': 1_000_000,
  'cluster.requestRouting.firstChunkMsPer1kPromptTokens': 0,
  'cluster.requestRouting.firstChunkTimeoutMs': 10_000,
  'cluster.requestRouting.attemptTimeoutMs': 20_000,
  'cluster.requestRouting.circuitBreaker.failureThreshold': 1,
  'discovery.offlineAfterMs': 5000,
};

/** The worker's own log line for a cancel of this request (pino JSON at debug level). */
function cancelLogged(cluster: Cluster, worker: string, requestId: string): boolean {
  return cluster.workers
    .get(worker)!
    .output()
    .split('\n')
    .some((line) => line.includes('"cancelled by controller"') && line.includes(requestId));
}

function breakerKinds(cluster: Cluster): string[] {
  return cluster.controller.deps.breakers.snapshot().map(([, kind]) => kind);
}

function lastData(events: Array<{ data: string }>): any {
  const data = events.filter((e) => e.data !== '[DONE]');
  return JSON.parse(data[data.length - 1].data);
}

async function hedgeCount(cluster: Cluster, outcome: string): Promise<number> {
  return metricValue(await metricsText(cluster.url), 'mlx_router_hedges_total', { outcome }) ?? 0;
}

/** Workers a and b (times to first token as given, debug logs to see cancels) under HEDGE_CONFIG. */
function twoWorkers(aTtftMs: number, bTtftMs: number): Promise<Cluster> {
  return startCluster({
    workers: [
      { id: 'a', ttftMs: aTtftMs, tokenMs: 2, logLevel: 'debug' },
      { id: 'b', ttftMs: bTtftMs, tokenMs: 2, logLevel: 'debug' },
    ],
    config: HEDGE_CONFIG,
  });
}

describe('hedge won: the first worker is slow to its first token', () => {
  let cluster: Cluster;
  beforeAll(async () => {
    cluster = await twoWorkers(6000, 0);
  });
  afterAll(async () => cluster?.stop());

  test('hedge - buffered: b answers long before a would; a is cancelled (its log shows it) and its breaker stays closed', async () => {
    const started = performance.now();
    const r = await chat(cluster.url, { maxTokens: 12, content: 'hedge buffered won' });
    expect(performance.now() - started).toBeLessThan(6000 - 1000);
    expect(r.status).toBe(200);
    expect(r.json.usage.completion_tokens).toBe(12);
    expect(r.json.metadata).toMatchObject({ selectedWorker: 'b', retryCount: 0, failedWorkers: [], hedge: { outcome: 'won', worker: 'b', afterMs: 150 } });
    const attempts = [...r.json.metadata.attempts].sort((x: any, y: any) => x.attempt - y.attempt);
    expect(attempts.map((a: any) => [a.worker, a.outcome, a.code, a.hedge])).toEqual([
      ['a', 'cancelled', 'HEDGE_LOST', undefined],
      ['b', 'success', null, true],
    ]);
    const id = r.headers.get('x-request-id')!;
    await waitFor(() => cancelLogged(cluster, 'a', id), `worker a to log the cancel of ${id}`);
    expect(cancelLogged(cluster, 'b', id)).toBe(false);
    expect(breakerKinds(cluster)).toEqual(['closed', 'closed']);
    expect(await hedgeCount(cluster, 'won')).toBe(1);
  });

  test('hedge - streamed: the client gets b\'s tokens only, once, and a is cancelled', async () => {
    const started = performance.now();
    let firstAt = 0;
    const r = await chatStream(cluster.url, { maxTokens: 12, content: 'hedge streamed won' }, () => {
      firstAt ||= performance.now() - started;
    });
    expect(firstAt).toBeLessThan(6000 - 1000);
    expect(r.status).toBe(200);
    expect(r.headers.get('x-mlx-worker')).toBe('b');
    expect(r.headers.get('x-mlx-retries')).toBe('0');
    expect(r.events[r.events.length - 1].data).toBe('[DONE]');
    expect(streamedText(r.text).trim().split(' ')).toHaveLength(12);
    expect(lastData(r.events).metadata).toMatchObject({ selectedWorker: 'b', hedge: { outcome: 'won', worker: 'b' } });
    const id = r.headers.get('x-request-id')!;
    await waitFor(() => cancelLogged(cluster, 'a', id), `worker a to log the cancel of ${id}`);
    expect(breakerKinds(cluster)).toEqual(['closed', 'closed']);
    expect(await hedgeCount(cluster, 'won')).toBe(2);
  });
});

describe('hedge won: the first worker is SIGSTOPped', () => {
  let cluster: Cluster;
  beforeAll(async () => {
    cluster = await twoWorkers(0, 0);
  });
  afterAll(async () => cluster?.stop());

  test('hedge - a hung worker costs the hedge point, not a TTFT limit; once resumed it honours the cancel', async () => {
    signalWorker(cluster, 'a', 'SIGSTOP');
    let buffered: Awaited<ReturnType<typeof chat>>;
    let streamed: Awaited<ReturnType<typeof chatStream>>;
    try {
      const started = performance.now();
      buffered = await chat(cluster.url, { maxTokens: 8, content: 'hedge stopped buffered' });
      streamed = await chatStream(cluster.url, { maxTokens: 8, content: 'hedge stopped streamed' });
      // Two requests, each hedged at 150 ms; without hedging each would wait its TTFT limit (10 s).
      expect(performance.now() - started).toBeLessThan(2 * 150 + 2 * MARGIN_MS);
    } finally {
      signalWorker(cluster, 'a', 'SIGCONT');
    }
    expect(buffered.status).toBe(200);
    expect(buffered.json.metadata).toMatchObject({ selectedWorker: 'b', hedge: { outcome: 'won', worker: 'b' } });
    expect(streamed.status).toBe(200);
    expect(streamed.headers.get('x-mlx-worker')).toBe('b');
    expect(lastData(streamed.events).metadata).toMatchObject({ hedge: { outcome: 'won', worker: 'b' } });
    for (const r of [buffered, streamed]) {
      const id = r.headers.get('x-request-id')!;
      await waitFor(() => cancelLogged(cluster, 'a', id), `worker a, resumed, to log the cancel of ${id}`);
    }
    // A lost race is not a failure: a's breaker stays closed.
    expect(breakerKinds(cluster)).toEqual(['closed', 'closed']);
  });
});

describe('hedge lost: the first worker\'s token comes before the hedge\'s', () => {
  let cluster: Cluster;
  beforeAll(async () => {
    cluster = await twoWorkers(500, 6000);
  });
  afterAll(async () => cluster?.stop());

  test('hedge - buffered and streamed: a answers, the hedge on b is cancelled (b\'s log shows it), nobody is blamed', async () => {
    const buffered = await chat(cluster.url, { maxTokens: 10, content: 'hedge buffered lost' });
    expect(buffered.status).toBe(200);
    expect(buffered.json.usage.completion_tokens).toBe(10);
    expect(buffered.json.metadata).toMatchObject({ selectedWorker: 'a', retryCount: 0, hedge: { outcome: 'lost', worker: 'b' } });
    const attempts = [...buffered.json.metadata.attempts].sort((x: any, y: any) => x.attempt - y.attempt);
    expect(attempts.map((a: any) => [a.worker, a.outcome, a.code, a.hedge])).toEqual([
      ['a', 'success', null, undefined],
      ['b', 'cancelled', 'HEDGE_LOST', true],
    ]);
    const streamed = await chatStream(cluster.url, { maxTokens: 10, content: 'hedge streamed lost' });
    expect(streamed.status).toBe(200);
    expect(streamed.headers.get('x-mlx-worker')).toBe('a');
    expect(streamedText(streamed.text).trim().split(' ')).toHaveLength(10);
    expect(lastData(streamed.events).metadata).toMatchObject({ selectedWorker: 'a', hedge: { outcome: 'lost', worker: 'b' } });
    for (const r of [buffered, streamed]) {
      const id = r.headers.get('x-request-id')!;
      await waitFor(() => cancelLogged(cluster, 'b', id), `worker b to log the cancel of ${id}`);
      expect(cancelLogged(cluster, 'a', id)).toBe(false);
    }
    expect(breakerKinds(cluster)).toEqual(['closed', 'closed']);
    expect(await hedgeCount(cluster, 'lost')).toBe(2);
  });
});
