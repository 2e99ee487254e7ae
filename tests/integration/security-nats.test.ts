/**
 * The least-privilege bus of docs/security.md, with the shipped nats-server configuration
 * (docs/examples/nats/least-privilege.conf): a controller and a worker process serve requests with
 * their own users, while a rogue — another application's user, or a stolen worker login — cannot
 * read prompts or answers, announce a worker, or inject into the controller's inbox.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Controller } from '../../src/controller/controller';
import { silentLogger } from '../../src/logger';
import { startNatsServer, type NatsServerHandle } from '../../src/nats-server';
import { encode, makeSubjects, PROTOCOL_VERSION, type Heartbeat } from '../../src/protocol';
import { chat, CLI, metricsText, metricValue, MODEL, spawnCli, testConfig, waitFor, type WorkerProcess } from '../helpers/cluster';

const CONF = resolve(__dirname, '../../docs/examples/nats/least-privilege.conf');
const PASSWORDS = { CONTROLLER_1_PASSWORD: 'ctl-pw', WORKER_1_PASSWORD: 'w1-pw', WORKER_2_PASSWORD: 'w2-pw', APP_PASSWORD: 'app-pw' };
const subjects = makeSubjects();

let nats: NatsServerHandle;
let controller: Controller;
let worker: WorkerProcess;
let dir: string;

beforeAll(async () => {
  // The shipped file, with the passwords nats-server would read from its environment filled in.
  let text = readFileSync(CONF, 'utf8');
  for (const [k, v] of Object.entries(PASSWORDS)) text = text.replaceAll(`$${k}`, JSON.stringify(v));
  dir = mkdtempSync(join(tmpdir(), 'mlx-perm-'));
  writeFileSync(join(dir, 'nats.conf'), text);
  nats = await startNatsServer({ args: ['-c', join(dir, 'nats.conf')] });
  controller = await Controller.start({
    config: testConfig({ 'nats.servers': [nats.url], 'nats.user': 'controller-1', 'nats.pass': 'ctl-pw', 'nats.inboxPrefix': '_INBOX_ctl1', 'discovery.offlineAfterMs': 5000 }),
    log: silentLogger(),
  });
  worker = spawnCli('worker-1', [CLI, 'worker', '--nats', nats.url, '--id', 'worker-1', '--heartbeat-ms', '100', '--ttft-ms', '0', '--token-ms', '1'], {
    MLX_ROUTER_NATS_USER: 'worker-1',
    MLX_ROUTER_NATS_PASS: 'w1-pw',
  });
  await waitFor(() => controller.deps.registry.forModel(MODEL).length === 1, 'worker-1 online', 20_000);
});

afterAll(async () => {
  worker?.kill('SIGTERM');
  await worker?.exited;
  await controller?.stop();
  await nats?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Subscribes `nc` to each subject and counts what arrives (a denied subscription gets nothing). */
function listen(nc: NatsConnection, list: string[]): { seen: string[]; denied: () => number } {
  const seen: string[] = [];
  let denied = 0;
  for (const s of list) {
    nc.subscribe(s, {
      callback: (err, m) => {
        if (err) denied++;
        else seen.push(`${m.subject}: ${new TextDecoder().decode(m.data).slice(0, 80)}`);
      },
    });
  }
  return { seen, denied: () => denied };
}

async function droppedHeartbeats(): Promise<number> {
  const text = await metricsText(controller.url);
  let total = 0;
  for (const reason of ['malformed', 'duplicate-id', 'registry-full', 'too-many-models']) total += metricValue(text, 'mlx_router_bus_dropped_total', { subject: 'heartbeat', reason }) ?? 0;
  return total;
}

test('nats permissions - without a login nobody connects', async () => {
  await expect(connect({ servers: nats.url, reconnect: false })).rejects.toThrow(/auth/i);
});

test.each([
  ['another application', 'cannot read prompts or answers, announce a worker, or inject into the inbox', 'app', 'app-pw'],
  ['a stolen worker login (worker-2)', 'cannot read prompts or answers nor take worker-1 over; what it puts in an inbox meets the token check', 'worker-2', 'w2-pw'],
])('nats permissions - %s %s', async (_name, _what, user, pass) => {
  const rogue = await connect({ servers: nats.url, user, pass, reconnect: false });
  try {
    const spy = listen(rogue, ['mlx.>', 'mlx.v1.worker.worker-1.infer', '_INBOX_ctl1.>', '>', subjects.heartbeat]);
    await rogue.flush().catch(() => undefined);
    const droppedBefore = await droppedHeartbeats();
    const secret = `secret prompt ${user}`;
    const res = await chat(controller.url, { content: secret, maxTokens: 8 });
    expect(res.status).toBe(200);
    expect(res.json.metadata.selectedWorker).toBe('worker-1');
    // Announce a fake worker and inject into every reply subject it might guess.
    const fake: Heartbeat = { type: 'heartbeat', version: PROTOCOL_VERSION, id: `fake-${user}`, models: [MODEL], engine: 'rogue', max_concurrent: 64, in_flight: 0, state: 'ready', interval_ms: 100, instance: 'rogue-instance-1' };
    for (let i = 0; i < 20; i++) rogue.publish(subjects.heartbeat, encode(fake));
    rogue.publish(subjects.cancel('worker-1'), encode({ request_id: 'x', attempt: 1 }));
    const injected: unknown[] = [];
    const inbox = controller.deps.mux.register((m) => void injected.push(m));
    try {
      rogue.publish(inbox.subject, encode({ type: 'result', text: 'FORGED', finish_reason: 'stop', usage: {} }));
      await rogue.flush().catch(() => undefined);
      // Heartbeats from the real worker keep arriving meanwhile: give the fakes the same time.
      const beats = controller.deps.registry.get('worker-1')!.lastSeen;
      await waitFor(() => controller.deps.registry.get('worker-1')!.lastSeen > beats + 300, `a few real heartbeats later (worker: ${worker.output()})`, 10_000);
    } finally {
      inbox.close();
    }
    if (user === 'worker-2') {
      // A worker login may publish heartbeats and into controller inboxes (workers must answer):
      // there the bus guard stands — it cannot learn a reply subject (it reads none), an injected
      // reply without the attempt token is dropped (security-bus test), and worker-1's id stays
      // worker-1's (instance rule).
      expect(injected).toHaveLength(1);
      expect(controller.deps.registry.get('worker-1')?.engine).toBe('synthetic');
    } else {
      expect(injected).toEqual([]);
      expect(controller.deps.registry.get(`fake-${user}`)).toBeUndefined();
      expect(await droppedHeartbeats()).toBe(droppedBefore); // refused by the server, never delivered
    }
    expect(spy.seen).toEqual([]);
    // The server refused the subscriptions outright (permissions violation), not just by luck.
    expect(spy.denied()).toBeGreaterThan(0);
    const again = await chat(controller.url, { content: 'after', maxTokens: 4 });
    expect(again.status).toBe(200);
    expect(again.json.choices[0].message.content).not.toContain('FORGED');
  } finally {
    await rogue.close().catch(() => undefined);
  }
});
