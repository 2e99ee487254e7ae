/**
 * Several controllers on a three-node NATS cluster (routes, JetStream on every node): sessions
 * stay on one worker whichever controller takes a turn, a worker's loss moves only its sessions,
 * an explicit move made by one controller is followed by the other (JetStream key-value), a
 * breaker one controller opens is evidence for the other, and without JetStream hashing alone
 * still keeps the controllers in agreement.
 */
import { connect } from '@nats-io/transport-node';
import { Controller } from '../../src/controller/controller';
import { rendezvousPick } from '../../src/rendezvous';
import { silentLogger } from '../../src/logger';
import { startNatsServer, type NatsServerHandle } from '../../src/nats-server';
import { chat, chatStream, MODEL, testConfig, waitFor, type WorkerProcess } from '../helpers/cluster';
import { spawnClusterWorker, startNatsCluster, type NatsCluster } from '../helpers/nats-cluster';

const WORKERS = ['w1', 'w2', 'w3'];

async function startController(seeds: string[], overrides: Record<string, unknown> = {}): Promise<Controller> {
  const config = testConfig({
    'nats.servers': seeds,
    'nats.randomize': false,
    'nats.reconnect.waitMs': 250,
    'discovery.offlineAfterMs': 5000,
    'cluster.requestRouting.session.sharedReplicas': 3,
    // attemptTimeoutMs is only the last-resort cap of a producing attempt: high enough for the
    // long streams below on a loaded machine. A hung worker is still cut at firstChunkTimeoutMs.
    'cluster.requestRouting.attemptTimeoutMs': 30_000,
    ...overrides,
  });
  return Controller.start({ config, log: silentLogger() });
}

async function stopAll(workers: WorkerProcess[]): Promise<void> {
  for (const w of workers) if (w.process.exitCode === null && w.process.signalCode === null) w.kill('SIGKILL');
  await Promise.all(workers.map((w) => w.exited));
}

function online(c: Controller, ids: string[]): boolean {
  const have = c.deps.registry.forModel(MODEL).map((w) => w.id);
  return ids.every((id) => have.includes(id)) && have.length === ids.length;
}

/** One turn of `session` on `url`: the worker that answered (the request must succeed). */
async function turn(url: string, session: string): Promise<string> {
  const r = await chat(url, { headers: { 'x-session-id': session }, maxTokens: 4 });
  expect(r.status).toBe(200);
  return r.headers.get('x-mlx-worker') as string;
}

describe('two controllers on a three-node NATS cluster', () => {
  let nats: NatsCluster;
  let a: Controller;
  let b: Controller;
  const workers: WorkerProcess[] = [];

  beforeAll(async () => {
    nats = await startNatsCluster();
    // Spread: controller a on n1, b on n2; worker i on node i.
    a = await startController(nats.seedsFrom(0));
    b = await startController(nats.seedsFrom(1));
    for (let i = 0; i < WORKERS.length; i++) workers.push(spawnClusterWorker(nats.seedsFrom(i), { id: WORKERS[i], maxConcurrent: 64, tokenMs: 1 }));
    await waitFor(() => online(a, WORKERS) && online(b, WORKERS), 'three workers online on both controllers', 20_000);
    await waitFor(async () => (await a.sessionMoves) && (await b.sessionMoves), 'the shared session bucket open on both controllers', 20_000);
  }, 60_000);

  afterAll(async () => {
    await a?.stop();
    await b?.stop();
    await stopAll(workers);
    await nats?.stop();
  });

  test('processes spread over the NATS nodes as their seed lists say', () => {
    const port = (c: Controller) => String(c.deps.nc.info?.port);
    expect(port(a)).toBe(String(nats.nodes[0].clientPort));
    expect(port(b)).toBe(String(nats.nodes[1].clientPort));
  });

  test('sessions - every turn of a session reaches one worker whichever controller takes it, under concurrent load', async () => {
    const sessions = Array.from({ length: 12 }, (_, i) => `affinity-${i}`);
    const seen = new Map<string, string[]>();
    // Every session runs its turns in order, alternating controllers; all sessions at once.
    await Promise.all(
      sessions.map(async (s, i) => {
        const got: string[] = [];
        for (let t = 0; t < 8; t++) got.push(await turn((t + i) % 2 === 0 ? a.url : b.url, s));
        seen.set(s, got);
      }),
    );
    for (const s of sessions) {
      const got = seen.get(s) as string[];
      expect(new Set(got).size).toBe(1);
      // Agreement comes from the hash, not from a store: the choice is the rendezvous one.
      expect(got[0]).toBe(rendezvousPick(s, WORKERS, (w) => w));
    }
    // Twelve sessions do not all hash to one worker.
    expect(new Set([...seen.values()].map((g) => g[0])).size).toBeGreaterThan(1);
  }, 60_000);

  test("capacity - one controller counts the other's requests at a worker while they run, and not after", async () => {
    let s = '';
    for (let i = 0; !s; i++) if (rendezvousPick(`load-${i}`, WORKERS, (w) => w) === 'w1') s = `load-${i}`;
    // Six long streams (about 1.5 s each at 1 ms a token; the last-resort attempt cap is 30 s here)
    // through a, all to w1 (one session).
    const long = Array.from({ length: 6 }, () => chatStream(a.url, { headers: { 'x-session-id': s }, maxTokens: 1500 }));
    await waitFor(() => (b.deps.registry.get('w1')?.foreignInFlight ?? 0) >= 6, "b to count a's six requests at w1", 10_000);
    expect(b.deps.registry.get('w1')?.outstanding).toBe(0);
    // Least-outstanding on b now avoids w1: requests without a session go to the others.
    for (let i = 0; i < 4; i++) {
      const r = await chat(b.url, { maxTokens: 2 });
      expect(r.headers.get('x-mlx-worker')).not.toBe('w1');
    }
    for (const r of await Promise.all(long)) {
      expect(r.status).toBe(200);
      expect(r.events.at(-1)?.data).toBe('[DONE]');
    }
    await waitFor(() => b.deps.registry.get('w1')?.foreignInFlight === 0, 'the count to drop once they ended', 10_000);
  }, 60_000);

  test('sessions - a move one controller makes (its worker hangs) is followed by the other through JetStream key-value', async () => {
    // A session whose hashed worker is w3, so it can be hung without touching the others' sessions.
    let s = '';
    for (let i = 0; !s; i++) if (rendezvousPick(`move-${i}`, WORKERS, (w) => w) === 'w3') s = `move-${i}`;
    expect(await turn(a.url, s)).toBe('w3');
    const w3 = workers[2];
    w3.kill('SIGSTOP');
    try {
      // a's attempt to w3 times out at its TTFT limit (2 s in tests) and fails over by the hash over what is left.
      const moved = await turn(a.url, s);
      expect(moved).toBe(rendezvousPick(s, ['w1', 'w2'], (w) => w));
      w3.kill('SIGCONT');
      await waitFor(() => online(b, WORKERS), 'w3 back online on b', 10_000);
      // b has never seen this session fail, and its hash still says w3: only the shared move says otherwise.
      await waitFor(() => b.deps.sessions.get(s) === moved, 'b to learn the move', 10_000);
      for (let t = 0; t < 4; t++) expect(await turn(t % 2 ? a.url : b.url, s)).toBe(moved);
    } finally {
      w3.kill('SIGCONT');
    }
  }, 60_000);

  test('breakers - a breaker one controller opens is evidence for the other; the other closing it makes the first probe early', async () => {
    const id = 'w2';
    expect(b.deps.breakers.state(id).kind).toBe('closed');
    // a trips its breaker on w2 (as that many counted failures in a row do).
    const threshold = testConfig().cluster.requestRouting.circuitBreaker.failureThreshold;
    for (let i = 0; i < threshold; i++) a.deps.breakers.failure(id);
    expect(a.deps.breakers.state(id).kind).toBe('open');
    await waitFor(() => b.deps.breakers.state(id).kind === 'open', 'b to open its breaker for w2 on the evidence', 5000);
    // While open on b, b sends w2 nothing.
    for (let i = 0; i < 6; i++) {
      const r = await chat(b.url, { maxTokens: 2 });
      expect(r.status).toBe(200);
      expect(r.headers.get('x-mlx-worker')).not.toBe(id);
    }
    // The evidence opens b only for peerOpenMs (5 s), not the 30 s of a first trip of its own.
    await waitFor(() => b.deps.breakers.state(id).kind === 'half-open', 'b to half-open by its own clock', 10_000);
    // b's own probes decide: two successes on w2 (a session hashed to it) close b's breaker.
    let s = '';
    for (let i = 0; !s; i++) if (rendezvousPick(`probe-${i}`, WORKERS, (w) => w) === id) s = `probe-${i}`;
    for (let t = 0; t < 2; t++) expect(await turn(b.url, s)).toBe(id);
    expect(b.deps.breakers.state(id).kind).toBe('closed');
    // b says so; a, open for ~30 s by itself, half-opens now and probes by its own judgement.
    await waitFor(() => a.deps.breakers.state(id).kind === 'half-open', 'a to half-open on b closing', 5000);
    for (let t = 0; t < 2; t++) expect(await turn(a.url, s)).toBe(id);
    expect(a.deps.breakers.state(id).kind).toBe('closed');
  }, 40_000);
});

describe('two controllers on NATS without JetStream', () => {
  let server: NatsServerHandle;
  let a: Controller;
  let b: Controller;
  const workers: WorkerProcess[] = [];

  beforeAll(async () => {
    server = await startNatsServer();
    a = await startController([server.url], { 'cluster.requestRouting.session.sharedReplicas': 1 });
    b = await startController([server.url], { 'cluster.requestRouting.session.sharedReplicas': 1 });
    for (const id of WORKERS) workers.push(spawnClusterWorker([server.url], { id, maxConcurrent: 64 }));
    await waitFor(() => online(a, WORKERS) && online(b, WORKERS), 'three workers online on both controllers', 20_000);
  }, 30_000);

  afterAll(async () => {
    await a?.stop();
    await b?.stop();
    await stopAll(workers);
    await server?.stop();
  });

  test('sessions - without the shared bucket the controllers still agree, by hashing alone', async () => {
    // No bucket: JetStream is not there (both controllers keep trying, quietly, in the background).
    expect(a.deps.sessionMoves).toBeUndefined();
    expect(b.deps.sessionMoves).toBeUndefined();
    for (let i = 0; i < 8; i++) {
      const s = `plain-${i}`;
      const want = rendezvousPick(s, WORKERS, (w) => w);
      for (let t = 0; t < 4; t++) expect(await turn(t % 2 ? a.url : b.url, s)).toBe(want);
    }
  }, 30_000);
});

describe('a controller started before JetStream is ready', () => {
  let nats: NatsCluster;
  let c: Controller | undefined;

  afterAll(async () => {
    await c?.stop();
    await nats?.stop();
  });

  test('sessions - it keeps trying in the background and opens the shared bucket once JetStream has a leader', async () => {
    nats = await startNatsCluster();
    // One node of three: no JetStream quorum, so the bucket cannot be created.
    await nats.kill(1);
    await nats.kill(2);
    // Until the lone node notices, it may still act as leader: wait for JetStream to say no.
    const probe = await connect({ servers: nats.nodes[0].url });
    try {
      await waitFor(
        async () => {
          try {
            const msg = await probe.request('$JS.API.INFO', new Uint8Array(0), { timeout: 1000 });
            return (JSON.parse(new TextDecoder().decode(msg.data)) as { error?: unknown }).error !== undefined;
          } catch {
            return true;
          }
        },
        'JetStream to lose its quorum',
        30_000,
        200,
      );
    } finally {
      await probe.close();
    }
    c = await startController(nats.seedsFrom(0));
    const ctl = c;
    expect(ctl.deps.sessionMoves).toBeUndefined();
    await nats.restart(1);
    await nats.restart(2);
    await waitFor(() => ctl.deps.sessionMoves, 'the bucket to open once the cluster is whole', 60_000, 100);
  }, 90_000);
});
