/**
 * Controllers know each other (controller heartbeats): `/v1/cluster` lists the peers, and a
 * controller killed with requests in flight stops counting against the workers within its
 * heartbeat expiry: the others' view of each worker's in-flight returns to their own, and the
 * worker cancels the dead controller's attempts, so the live controller keeps admitting.
 */
import { Controller } from '../../src/controller/controller';
import { silentLogger } from '../../src/logger';
import { startNatsServer, type NatsServerHandle } from '../../src/nats-server';
import { chat, chatStream, MODEL, testConfig, waitFor, type WorkerProcess } from '../helpers/cluster';
import { spawnClusterWorker, spawnController, type ControllerProcess } from '../helpers/nats-cluster';

/** A controller silent this long is gone (discovery.offlineAfterMs, for controllers and workers alike). */
const EXPIRE_MS = 1000;
/** The dead controller's streams would run this long if nobody cancelled them. */
const STREAM_TOKENS = 300;
const TOKEN_MS = 50;

let nats: NatsServerHandle;
let a: Controller;
let b: ControllerProcess | undefined;
let worker: WorkerProcess;

beforeAll(async () => {
  nats = await startNatsServer();
  worker = spawnClusterWorker([nats.url], { id: 'w1', maxConcurrent: 4, tokenMs: TOKEN_MS });
  a = await Controller.start({ config: testConfig({ 'nats.servers': [nats.url], 'discovery.offlineAfterMs': EXPIRE_MS }), log: silentLogger() });
  b = await spawnController('cb', [nats.url], { MLX_ROUTER_DISCOVERY_OFFLINE_AFTER_MS: String(EXPIRE_MS) });
  await waitFor(() => a.deps.registry.forModel(MODEL).length === 1, 'w1 online at a', 20_000);
  await waitFor(async () => (await chat(b!.url, { maxTokens: 2 })).status === 200, 'b serving', 20_000);
}, 60_000);

afterAll(async () => {
  await a?.stop();
  for (const p of [b, worker]) if (p && p.process.exitCode === null && p.process.signalCode === null) p.kill('SIGKILL');
  await Promise.all([b?.exited, worker?.exited]);
  await nats?.stop();
});

test('peers - /v1/cluster lists the other controller (id, url, last seen) beside its own id', async () => {
  const body = await waitFor(async () => {
    const json = (await (await fetch(`${a.url}/v1/cluster`)).json()) as { controller: { id: string }; peers: Array<Record<string, unknown>> };
    // b's warm-up request may still be in its last heartbeat: wait for one without it. b's first
    // heartbeats go out before its HTTP port is bound (they carry no url yet): wait for one with it.
    return json.peers.length === 1 && json.peers[0].inFlight === 0 && json.peers[0].url !== null ? json : undefined;
  }, 'a hearing b, idle', 10_000);
  expect(body.controller.id).toBe(a.id);
  expect(body.peers[0]).toMatchObject({ url: b!.url, inFlight: 0 });
  expect(body.peers[0].inFlightByWorker).toEqual({});
  expect(body.peers[0].id).not.toBe(a.id);
  expect(body.peers[0].lastSeenAgoMs).toBeLessThan(EXPIRE_MS);
});

test('peers - a controller SIGKILLed with requests in flight stops counting within its expiry; the other keeps admitting', async () => {
  const w1 = () => a.deps.registry.get('w1')!;
  // Three long streams through b: they hold three of w1's four slots for about 15 s.
  let firstEvents = 0;
  const onB = Array.from({ length: 3 }, () =>
    chatStream(b!.url, { maxTokens: STREAM_TOKENS }, (_e, i) => void (i === 0 && firstEvents++)).catch(() => undefined),
  );
  await waitFor(() => firstEvents === 3, 'three streams through b under way', 10_000);
  // a counts them as another controller's load: from w1's heartbeat and from b's own.
  await waitFor(() => w1().foreignInFlight === 3 && a.deps.peers?.list()[0]?.inFlight === 3, 'a counting b\'s three attempts', 5000);

  b!.kill('SIGKILL');
  const killedAt = Date.now();
  await b!.exited;
  await Promise.all(onB);
  // Within the expiry (plus a heartbeat period and slack for a loaded machine), and long before
  // the orphaned streams would have ended on their own (STREAM_TOKENS * TOKEN_MS = 15 s).
  await waitFor(() => w1().foreignInFlight === 0 && a.deps.peers?.list().length === 0, 'a no longer counting b', 10_000);
  const forgottenMs = Date.now() - killedAt;
  // The worker cancelled b's attempts: it reports its slots free again.
  await waitFor(() => w1().reportedInFlight === 0, 'w1 reporting its slots free', 10_000);
  const freedMs = Date.now() - killedAt;
  expect(forgottenMs).toBeGreaterThanOrEqual(EXPIRE_MS - 200);
  expect(forgottenMs).toBeLessThan(EXPIRE_MS + 4000);
  expect(freedMs).toBeLessThan(EXPIRE_MS + 4000);

  // All four slots serve a's clients, at once, without one refusal.
  const answers = await Promise.all(Array.from({ length: 4 }, () => chat(a.url, { maxTokens: 5 })));
  expect(answers.map((r) => r.status)).toEqual([200, 200, 200, 200]);
  expect(answers.map((r) => r.headers.get('x-mlx-retries'))).toEqual(['0', '0', '0', '0']);
  expect(worker.output()).toMatch(/cancelling an attempt: its controller is gone/);
  process.stdout.write(`controller killed: its in-flight no longer counted after ${forgottenMs} ms, worker slots free after ${freedMs} ms (expiry ${EXPIRE_MS} ms)\n`);
}, 60_000);
