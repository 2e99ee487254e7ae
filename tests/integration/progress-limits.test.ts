/**
 * Progress-based limits and fast failure detection (issue 11) against real nats-server and worker
 * processes: workers report progress for buffered answers too; a slow but steady worker is never
 * cut nor blamed; a hung one is cut at its TTFT or idle limit; a killed one is found through NATS
 * "no responders" in about a second; a client's huge max_tokens never opens a breaker; a 1.0
 * worker (no progress) is still served.
 */
import type { Msg, Subscription } from '@nats-io/transport-node';
import { decode, HDR_PROGRESS, type WireReply } from '../../src/protocol';
import { chat, chatStream, signalWorker, startCluster, streamedText, waitFor, type Cluster } from '../helpers/cluster';
import { startFakeWorker } from '../helpers/fake-worker';

/** Slack for upper time bounds: two cores shared with other test runs. */
const MARGIN_MS = 1500;

/** Every reply a worker sends to any controller inbox, as the test's own connection sees it. */
function spyReplies(cluster: Cluster): { replies: Array<{ subject: string; body: WireReply; at: number }>; sub: Subscription } {
  const replies: Array<{ subject: string; body: WireReply; at: number }> = [];
  const sub = cluster.nc.subscribe('_INBOX.>', {
    callback: (_e, msg: Msg) => {
      const body = decode<WireReply>(msg.data);
      if (body && typeof body === 'object') replies.push({ subject: msg.subject, body, at: performance.now() });
    },
  });
  return { replies, sub };
}

function breakerKinds(cluster: Cluster): string[] {
  return cluster.controller.deps.breakers.snapshot().map(([, kind]) => kind);
}

describe('a slow but steady worker', () => {
  let cluster: Cluster;
  beforeAll(async () => {
    cluster = await startCluster({
      // 40 tokens at 60 ms: about 2.4 s, far beyond the TTFT and idle limits, which it always meets.
      workers: [{ id: 'steady', tokenMs: 60, ttftMs: 20 }],
      config: {
        'cluster.requestRouting.firstChunkTimeoutMs': 800,
        'cluster.requestRouting.idleTimeoutMs': 800,
        'cluster.requestRouting.attemptTimeoutMs': 30_000,
        'cluster.requestRouting.circuitBreaker.failureThreshold': 1,
        'discovery.offlineAfterMs': 5000,
      },
    });
  });
  afterAll(async () => cluster?.stop());

  test('progress - a buffered answer longer than every limit is never cut; the worker sends progress messages on the way', async () => {
    const spy = spyReplies(cluster);
    await cluster.nc.flush();
    try {
      const started = performance.now();
      const [buffered, streamed] = await Promise.all([chat(cluster.url, { maxTokens: 40, content: 'slow one' }), chatStream(cluster.url, { maxTokens: 40, content: 'slow two' })]);
      expect(performance.now() - started).toBeGreaterThan(1600);
      expect(buffered.status).toBe(200);
      expect(buffered.json.usage.completion_tokens).toBe(40);
      expect(buffered.json.metadata).toMatchObject({ retryCount: 0, timeouts: 0 });
      expect(streamed.status).toBe(200);
      expect(streamed.events[streamed.events.length - 1].data).toBe('[DONE]');
      expect(streamedText(streamed.text).split(' ')).toHaveLength(40);
      const progress = spy.replies.filter((r) => r.body.type === 'progress');
      // At the first token, then about every 250 ms (worker.progressIntervalMs) over ~2.4 s.
      expect(progress.length).toBeGreaterThanOrEqual(4);
      const tokens = progress.map((p) => (p.body as { tokens: number }).tokens);
      expect(tokens[0]).toBe(1);
      expect([...tokens].sort((a, b) => a - b)).toEqual(tokens);
      // Progress goes to buffered attempts only: the stream's inbox got chunks, no progress.
      const progressSubjects = new Set(progress.map((p) => p.subject));
      expect(progressSubjects.size).toBe(1);
      const streamSubjects = new Set(spy.replies.filter((r) => r.body.type === 'chunk').map((r) => r.subject));
      for (const s of progressSubjects) expect(streamSubjects.has(s)).toBe(false);
      expect(breakerKinds(cluster)).toEqual(['closed']);
      // The selection signal is the time to first token, not the ~2.4 s the answers took.
      expect(cluster.controller.deps.registry.get('steady')!.latencyMs).toBeLessThan(1000);
    } finally {
      spy.sub.unsubscribe();
    }
  });

  test('max_tokens - three requests above the cap are refused with 400 before any worker sees them; the breaker stays closed and normal traffic succeeds', async () => {
    const above = await Promise.all(
      Array.from({ length: 3 }, () => chat(cluster.url, { maxTokens: 1_000_000_000 })),
    );
    for (const r of above) {
      expect(r.status).toBe(400);
      expect(r.json.error).toMatchObject({ router_code: 'REQUEST_VALIDATION_FAILED', param: 'max_tokens' });
      expect(r.headers.get('x-request-id')).toBeTruthy();
    }
    expect(breakerKinds(cluster)).toEqual(['closed']);
    const ok = await chat(cluster.url, { maxTokens: 4 });
    expect(ok.status).toBe(200);
  });
});

describe('the request deadline cuts a producing worker: not its fault', () => {
  let cluster: Cluster;
  beforeAll(async () => {
    cluster = await startCluster({
      workers: [{ id: 'busy', tokenMs: 20, maxConcurrent: 16 }],
      config: {
        'cluster.requestRouting.timeoutMs': 1000,
        'cluster.requestRouting.streamingTimeoutMs': 1000,
        'cluster.requestRouting.circuitBreaker.failureThreshold': 1,
        'discovery.offlineAfterMs': 5000,
      },
    });
  });
  afterAll(async () => cluster?.stop());

  test('breaker - three huge (allowed) answers time out at the deadline while producing; the breaker stays closed and normal traffic succeeds', async () => {
    const huge = await Promise.all([
      chat(cluster.url, { maxTokens: 30_000 }),
      chat(cluster.url, { maxTokens: 30_000 }),
      chatStream(cluster.url, { maxTokens: 30_000 }),
    ]);
    expect(huge[0].json).toMatchObject({ error: { router_code: 'REQUEST_TIMEOUT' } });
    expect(huge[0].status).toBe(504);
    expect(huge[0].json.error.router_code).toBe('REQUEST_TIMEOUT');
    expect(huge[1].status).toBe(504);
    expect(huge[2].events.some((e) => e.event === 'error')).toBe(true);
    expect(breakerKinds(cluster)).toEqual(['closed']);
    const normal = await Promise.all(Array.from({ length: 5 }, (_, i) => chat(cluster.url, { maxTokens: 5, content: `n${i}` })));
    for (const r of normal) expect(r.status).toBe(200);
    expect(breakerKinds(cluster)).toEqual(['closed']);
  });
});

describe('a worker that hangs or dies mid-answer', () => {
  let cluster: Cluster;
  const idleMs = 600;
  beforeAll(async () => {
    cluster = await startCluster({
      workers: [
        { id: 'a', tokenMs: 30 },
        { id: 'b', tokenMs: 30 },
      ],
      config: {
        'cluster.requestRouting.strategy': 'round-robin',
        'cluster.requestRouting.firstChunkTimeoutMs': 1500,
        'cluster.requestRouting.idleTimeoutMs': idleMs,
        'cluster.requestRouting.attemptTimeoutMs': 30_000,
        // A stopped worker sends no heartbeats: keep it "online" so the idle limit is what is tested.
        'discovery.offlineAfterMs': 20_000,
        'cluster.requestRouting.circuitBreaker.failureThreshold': 100,
      },
    });
  });
  afterAll(async () => cluster?.stop());

  /** Waits until worker `id` has sent its first progress or chunk on the spied inboxes. */
  async function firstTokenFrom(spy: ReturnType<typeof spyReplies>, from: () => string | undefined): Promise<void> {
    await waitFor(() => spy.replies.some((r) => r.body.type === 'progress' || r.body.type === 'chunk') && from() !== undefined, 'a first token', 10_000, 5);
  }

  test('SIGSTOP mid-buffered - the answer fails over at the idle limit and is answered by the other worker', async () => {
    const spy = spyReplies(cluster);
    await cluster.nc.flush();
    let stopped: string | undefined;
    try {
      const pending = chat(cluster.url, { maxTokens: 60, content: 'hang in the middle' });
      await firstTokenFrom(spy, () => cluster.controller.deps.registry.online().find((w) => w.outstanding > 0)?.id);
      stopped = cluster.controller.deps.registry.online().find((w) => w.outstanding > 0)!.id;
      const at = performance.now();
      signalWorker(cluster, stopped, 'SIGSTOP');
      const r = await pending;
      const ms = performance.now() - at;
      expect(r.status).toBe(200);
      expect(r.json.metadata.failedWorkers).toEqual([stopped]);
      expect(r.json.metadata.attempts[0]).toMatchObject({ worker: stopped, outcome: 'ambiguous', code: 'WORKER_TIMEOUT' });
      expect(r.json.usage.completion_tokens).toBe(60);
      // Cut by the idle limit (not the 30 s attempt limit); the retry's 60 tokens take ~1.8 s.
      expect(ms).toBeLessThan(idleMs + 60 * 30 + MARGIN_MS * 2);
      expect(r.json.metadata.attempts[0].durationMs).toBeLessThan(idleMs + 60 * 30 + MARGIN_MS);
    } finally {
      spy.sub.unsubscribe();
      if (stopped) signalWorker(cluster, stopped, 'SIGCONT');
    }
  });

  test('SIGKILL mid-buffered and mid-stream - found through "no responders" and failed over within about a second', async () => {
    // Idle limit far away: only the liveness probe can find the dead worker this fast.
    cluster.controller.deps.registry.online();
    const spy = spyReplies(cluster);
    await cluster.nc.flush();
    try {
      const pendingBuffered = chat(cluster.url, { maxTokens: 80, content: 'die in the middle' });
      const pendingStream = chatStream(cluster.url, { maxTokens: 80, content: 'die in the stream' });
      await waitFor(() => cluster.controller.deps.registry.online().filter((w) => w.outstanding > 0).length === 2, 'both attempts running', 10_000, 5);
      await waitFor(() => spy.replies.filter((r) => r.body.type === 'chunk').length > 0 && spy.replies.some((r) => r.body.type === 'progress'), 'first tokens', 10_000, 5);
      // Round-robin put one request on each worker: kill one of them.
      const victim = 'a';
      const at = performance.now();
      signalWorker(cluster, victim, 'SIGKILL');
      await waitFor(() => cluster.controller.deps.registry.get(victim)?.gone === true, 'the killed worker marked offline', 5000, 5);
      const detectedMs = performance.now() - at;
      // About a second: the probe threshold (300 ms) plus a round trip, with room for a loaded machine.
      expect(detectedMs).toBeLessThan(1000 + MARGIN_MS);
      const [buffered, stream] = await Promise.all([pendingBuffered, pendingStream]);
      expect(buffered.status).toBe(200);
      expect(buffered.json.usage.completion_tokens).toBe(80);
      expect(stream.status).toBe(200);
      expect(stream.events[stream.events.length - 1].data).toBe('[DONE]');
      expect(streamedText(stream.text).split(' ')).toHaveLength(80);
      const victims = [buffered.json.metadata.failedWorkers, ((): string[] => {
        const md = stream.events.filter((e) => e.data.includes('"metadata"')).map((e) => JSON.parse(e.data).metadata)[0];
        return md.failedWorkers;
      })()].flat();
      expect(victims).toEqual([victim]);
    } finally {
      spy.sub.unsubscribe();
    }
  });
});

describe('a 1.0 worker (no progress messages)', () => {
  let cluster: Cluster;
  beforeAll(async () => {
    cluster = await startCluster({ config: { 'cluster.requestRouting.firstChunkTimeoutMs': 300, 'cluster.requestRouting.attemptTimeoutMs': 5000 } });
  });
  afterAll(async () => cluster?.stop());

  test('protocol - it is never asked for progress and is not cut at the TTFT limit: only its attempt limit applies', async () => {
    const asked: string[] = [];
    const timers: NodeJS.Timeout[] = [];
    const old = startFakeWorker(cluster.nc, 'old', ['mlx-community/Llama-3.2-3B-Instruct-4bit'], (reply, msg) => {
      asked.push(msg.headers?.get(HDR_PROGRESS) ?? '');
      // A whole answer after 800 ms, beyond the 300 ms TTFT limit.
      timers.push(setTimeout(() => reply({ type: 'result', text: 'old but fine', finish_reason: 'stop', usage: { prompt_tokens: 1, completion_tokens: 3, total_tokens: 4 } }), 800));
    });
    try {
      await cluster.waitForWorkers(['old']);
      const r = await chat(cluster.url);
      expect(r.status).toBe(200);
      expect(r.json.choices[0].message.content).toBe('old but fine');
      expect(asked).toEqual(['']);
    } finally {
      for (const t of timers) clearTimeout(t);
      old.stop();
    }
  });
});

describe('adaptive limits', () => {
  let cluster: Cluster;
  const floorMs = 400;
  const configuredMs = 8000;
  beforeAll(async () => {
    cluster = await startCluster({
      workers: [
        { id: 'x', ttftMs: 5 },
        { id: 'y', ttftMs: 5 },
      ],
      config: {
        'cluster.requestRouting.strategy': 'round-robin',
        'cluster.requestRouting.firstChunkTimeoutMs': configuredMs,
        'cluster.requestRouting.attemptTimeoutMs': 30_000,
        'cluster.requestRouting.adaptiveLimits.floorMs': floorMs,
        'cluster.requestRouting.adaptiveLimits.minSamples': 5,
        'cluster.requestRouting.circuitBreaker.failureThreshold': 100,
        'discovery.offlineAfterMs': 20_000,
      },
    });
  });
  afterAll(async () => cluster?.stop());

  test('adaptive - once a fast worker is learned, a hang before its first token is left after about the floor, not the configured 8 s', async () => {
    // Warm-up: at least five successful attempts on each worker, buffered and streamed.
    for (let i = 0; i < 12; i++) {
      const r = i % 2 === 0 ? await chat(cluster.url, { content: `warm ${i}` }) : await chatStream(cluster.url, { content: `warm ${i}` });
      expect(r.status).toBe(200);
    }
    signalWorker(cluster, 'x', 'SIGSTOP');
    try {
      const runs = [];
      for (let i = 0; i < 2; i++) {
        const started = performance.now();
        const r = await chat(cluster.url, { content: `after ${i}` });
        runs.push({ r, ms: performance.now() - started });
      }
      const failedOver = runs.filter((x) => x.r.json.metadata.retryCount === 1);
      expect(failedOver).toHaveLength(1);
      for (const { r } of runs) expect(r.status).toBe(200);
      const { r, ms } = failedOver[0];
      expect(r.json.metadata.attempts[0]).toMatchObject({ worker: 'x', code: 'WORKER_TIMEOUT' });
      expect(r.json.metadata.attempts[0].durationMs).toBeGreaterThanOrEqual(floorMs - 5);
      expect(ms).toBeLessThan(floorMs + MARGIN_MS);
    } finally {
      signalWorker(cluster, 'x', 'SIGCONT');
    }
  });
});
