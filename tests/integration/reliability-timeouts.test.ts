/**
 * The reliability chain against real nats-server and worker processes: timeouts and failover,
 * buffered and streamed. A hung worker is a real SIGSTOPped
 * process (the harness sends SIGCONT before killing it); a failing one runs with --fail-rate 1.
 */
import { chat, chatStream, metricsText, metricValue, signalWorker, STEADY, startCluster, startTogether, streamedText, type Cluster } from '../helpers/cluster';

type Reply = Awaited<ReturnType<typeof chat>>;
type StreamReply = Awaited<ReturnType<typeof chatStream>>;

/**
 * Slack for upper time bounds: two cores shared with other test runs. Which attempt ended, and
 * why, is checked in each answer's metadata; the bound shows no extra attempt or wait was added.
 */
const MARGIN_MS = 3000;

async function timed<T>(run: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const started = performance.now();
  const value = await run();
  return { value, ms: performance.now() - started };
}

/** The metadata object of a streamed answer: it rides on the chunk with the finish_reason. */
function streamMetadata(r: StreamReply): Record<string, any> {
  const finals = r.events
    .filter((e) => e.event === 'message' && e.data !== '[DONE]')
    .map((e) => JSON.parse(e.data))
    .filter((c) => c.metadata);
  expect(finals).toHaveLength(1);
  return finals[0].metadata;
}

/** A clean stream: 200, SSE, no error event, ends with [DONE]. */
function expectCleanStream(r: StreamReply): void {
  expect(r.status).toBe(200);
  expect(r.headers.get('content-type')).toMatch(/^text\/event-stream/);
  expect(r.events.filter((e) => e.event !== 'message')).toEqual([]);
  expect(r.events[r.events.length - 1].data).toBe('[DONE]');
}

describe('the only worker hung', () => {
  let cluster: Cluster;
  let shortDeadline: Cluster;
  const attemptMs = 800;
  const deadlineMs = 1500;
  // A stopped worker sends no heartbeats: keep it "online" so the timeout is what is tested.
  const config = { 'cluster.requestRouting.attemptTimeoutMs': attemptMs, 'discovery.offlineAfterMs': 20_000 };

  beforeAll(async () => {
    [cluster, shortDeadline] = await startTogether([
      startCluster({ workers: [{ id: 'only' }], config }),
      startCluster({ workers: [{ id: 'only' }], config: { ...config, 'cluster.requestRouting.timeoutMs': deadlineMs } }),
    ]);
    signalWorker(cluster, 'only', 'SIGSTOP');
    signalWorker(shortDeadline, 'only', 'SIGSTOP');
  });

  afterAll(async () => {
    await Promise.all([cluster?.stop(), shortDeadline?.stop()]);
  });

  test('timeout - a hung only worker gives 504 WORKER_TIMEOUT after its attempts, each cut at attemptTimeoutMs', async () => {
    const { value: r, ms } = await timed(() => chat(cluster.url));
    expect(r.status).toBe(504);
    expect(r.json.error).toMatchObject({ code: 'WORKER_TIMEOUT', type: 'server_error' });
    expect(r.headers.get('x-mlx-worker')).toBe('only');
    expect(r.headers.get('x-mlx-retries')).toBe('2');
    const attempts = r.json.error.attempts as Array<{ worker: string; outcome: string; code: string; durationMs: number }>;
    expect(attempts).toHaveLength(3);
    for (const a of attempts) {
      expect(a).toMatchObject({ worker: 'only', outcome: 'ambiguous', code: 'WORKER_TIMEOUT' });
      expect(a.durationMs).toBeGreaterThanOrEqual(attemptMs - 5);
      expect(a.durationMs).toBeLessThan(attemptMs + MARGIN_MS);
    }
    // Three attempts of 800 ms and two backoffs of at most 50 ms (test config).
    expect(ms).toBeGreaterThanOrEqual(3 * attemptMs - 10);
    expect(ms).toBeLessThan(3 * attemptMs + 2 * 50 + MARGIN_MS);
    const m = await metricsText(cluster.url);
    expect(metricValue(m, 'mlx_router_attempts_total', { outcome: 'ambiguous' })).toBe(3);
    expect(metricValue(m, 'mlx_router_timeouts_total', { kind: 'attempt' })).toBe(3);
    expect(metricValue(m, 'mlx_router_requests_total', { status: '504', code: 'WORKER_TIMEOUT', stream: 'false' })).toBe(1);
  });

  test('timeout - a hung only worker gives 504 when the request deadline ends its attempts, not later', async () => {
    const { value: r, ms } = await timed(() => chat(shortDeadline.url));
    expect(r.status).toBe(504);
    // The last attempt's limit is cut to what the request has left: the request deadline passed.
    expect(r.json.error.code).toBe('REQUEST_TIMEOUT');
    const attempts = r.json.error.attempts as Array<{ worker: string; outcome: string; durationMs: number }>;
    expect(attempts.length).toBeGreaterThanOrEqual(2);
    for (const a of attempts) expect(a).toMatchObject({ worker: 'only', outcome: 'ambiguous' });
    // While retries remain an attempt may use at most half of what the request has left
    // (deadlineShare), so the first is cut at min(800, 1500 / 2) and leaves time for a retry.
    expect(attempts[0].durationMs).toBeGreaterThanOrEqual(Math.min(attemptMs, deadlineMs / 2) - 5);
    expect(attempts[attempts.length - 1].durationMs).toBeLessThan(attemptMs);
    expect(ms).toBeGreaterThanOrEqual(deadlineMs - 10);
    expect(ms).toBeLessThan(deadlineMs + MARGIN_MS);
  });
});

describe('one hung worker beside a healthy one', () => {
  let cluster: Cluster;
  const attemptMs = 700;
  const firstChunkMs = 600;

  beforeAll(async () => {
    cluster = await startCluster({
      workers: [{ id: 'a-hung' }, { id: 'b-ok', tokenMs: 2 }],
      config: {
        'cluster.requestRouting.strategy': 'round-robin',
        'cluster.requestRouting.attemptTimeoutMs': attemptMs,
        'cluster.requestRouting.firstChunkTimeoutMs': firstChunkMs,
        // Keep the breaker out of the way: every request that meets a-hung must time out on it.
        'cluster.requestRouting.circuitBreaker.failureThreshold': 100,
        'discovery.offlineAfterMs': 20_000,
      },
    });
    signalWorker(cluster, 'a-hung', 'SIGSTOP');
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  function expectFailedOver(md: Record<string, any>): void {
    expect(md).toMatchObject({ selectedWorker: 'b-ok', retryCount: 1, failedWorkers: ['a-hung'], timeouts: 1 });
    expect(md.attempts).toHaveLength(2);
    expect(md.attempts[0]).toMatchObject({ worker: 'a-hung', outcome: 'ambiguous', code: 'WORKER_TIMEOUT' });
    expect(md.attempts[1]).toMatchObject({ worker: 'b-ok', outcome: 'success', code: null });
  }

  test('timeout - buffered requests that meet the hung worker fail over at its TTFT limit (firstChunkTimeoutMs: workers report progress) and are answered by the other', async () => {
    const runs: Array<{ value: Reply; ms: number }> = [];
    for (let i = 0; i < 4; i++) runs.push(await timed(() => chat(cluster.url, { content: `q${i}` })));
    for (const { value: r } of runs) {
      expect(r.status).toBe(200);
      expect(r.headers.get('x-mlx-worker')).toBe('b-ok');
      expect(r.json.metadata.selectedWorker).toBe('b-ok');
    }
    // Round-robin over two workers: exactly every other request met a-hung first.
    const failedOver = runs.filter((x) => x.value.json.metadata.retryCount === 1);
    const direct = runs.filter((x) => x.value.json.metadata.retryCount === 0);
    expect(failedOver).toHaveLength(2);
    expect(direct).toHaveLength(2);
    for (const { value: r, ms } of failedOver) {
      expectFailedOver(r.json.metadata);
      expect(r.headers.get('x-mlx-retries')).toBe('1');
      expect(r.json.metadata.attempts[0].durationMs).toBeGreaterThanOrEqual(firstChunkMs - 5);
      expect(ms).toBeGreaterThanOrEqual(firstChunkMs - 5);
      expect(ms).toBeLessThan(firstChunkMs + MARGIN_MS);
    }
    for (const { value: r, ms } of direct) {
      expect(r.json.metadata).toMatchObject({ retryCount: 0, failedWorkers: [], timeouts: 0 });
      // Its one attempt (the controller's clock) ended well inside the TTFT limit; the client's clock
      // adds only scheduling slack, never another attempt.
      expect(r.json.metadata.attempts[0].durationMs).toBeLessThan(firstChunkMs);
      expect(ms).toBeLessThan(firstChunkMs + MARGIN_MS);
    }
  });

  test('timeout - concurrent buffered requests all succeed within attemptTimeoutMs + margin', async () => {
    const runs = await Promise.all(Array.from({ length: 6 }, (_, i) => timed(() => chat(cluster.url, { content: `c${i}` }))));
    for (const { value: r, ms } of runs) {
      expect(r.status).toBe(200);
      expect(r.json.metadata.selectedWorker).toBe('b-ok');
      expect(ms).toBeLessThan(attemptMs + MARGIN_MS);
    }
    const failedOver = runs.filter((x) => x.value.json.metadata.retryCount === 1);
    expect(failedOver.length).toBeGreaterThan(0);
    for (const { value: r } of failedOver) expectFailedOver(r.json.metadata);
  });

  test('timeout - a stream whose worker sends no first chunk fails over after firstChunkTimeoutMs and reaches the client clean', async () => {
    const runs: Array<{ value: StreamReply; ms: number }> = [];
    for (let i = 0; i < 2; i++) runs.push(await timed(() => chatStream(cluster.url, { content: `stream ${i}`, maxTokens: 10 })));
    for (const { value: r } of runs) {
      expectCleanStream(r);
      expect(r.headers.get('x-mlx-worker')).toBe('b-ok');
    }
    const failedOver = runs.filter((x) => streamMetadata(x.value).retryCount === 1);
    expect(failedOver).toHaveLength(1);
    const { value: r, ms } = failedOver[0];
    expectFailedOver(streamMetadata(r));
    expect(r.headers.get('x-mlx-retries')).toBe('1');
    expect(ms).toBeGreaterThanOrEqual(firstChunkMs - 5);
    expect(ms).toBeLessThan(firstChunkMs + MARGIN_MS);
    // The client sees exactly the answer to its prompt: the synthetic engine is deterministic.
    const reference = await chat(cluster.url, { content: `stream ${runs.indexOf(failedOver[0])}`, maxTokens: 10 });
    expect(reference.status).toBe(200);
    expect(streamedText(r.text)).toBe(reference.json.choices[0].message.content);
    const m = await metricsText(cluster.url);
    expect(metricValue(m, 'mlx_router_requests_total', { status: '200', code: '', stream: 'true' })).toBe(2);
    expect(metricValue(m, 'mlx_router_timeouts_total', { kind: 'first_chunk' })).toBe(1);
  });
});

describe('a stream whose worker fails before its first chunk', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await startCluster({
      workers: [{ id: 'a-bad', failRate: 1 }, { id: 'b-good', tokenMs: 2 }],
      // Round-robin orders workers by id: the first request meets a-bad first.
      config: { ...STEADY, 'cluster.requestRouting.strategy': 'round-robin' },
    });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  test('retry - a stream that fails before its first chunk is retried on another worker and reaches the client clean', async () => {
    const r = await chatStream(cluster.url, { content: 'Tell me about routers', maxTokens: 12 });
    expectCleanStream(r);
    expect(r.headers.get('x-mlx-worker')).toBe('b-good');
    expect(r.headers.get('x-mlx-retries')).toBe('1');
    const md = streamMetadata(r);
    expect(md).toMatchObject({ selectedWorker: 'b-good', retryCount: 1, failedWorkers: ['a-bad'], timeouts: 0, circuitBreakerTrips: 0 });
    expect(md.requestId).toBe(r.headers.get('x-request-id'));
    expect(md.attempts).toEqual([
      { attempt: 1, worker: 'a-bad', outcome: 'worker_failure', code: 'WORKER_ERROR', durationMs: expect.any(Number) },
      { attempt: 2, worker: 'b-good', outcome: 'success', code: null, durationMs: expect.any(Number) },
    ]);
    // The second request goes to b-good directly (turn 1): the same prompt gives the same text.
    const buffered = await chat(cluster.url, { content: 'Tell me about routers', maxTokens: 12 });
    expect(buffered.json.metadata.retryCount).toBe(0);
    expect(streamedText(r.text)).toBe(buffered.json.choices[0].message.content);
    expect(buffered.json.choices[0].message.content.split(' ')).toHaveLength(12);
  });
});
