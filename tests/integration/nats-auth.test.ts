/**
 * NATS authentication through configuration: user/password and token, for the
 * controller and for worker processes (by MLX_ROUTER_* environment variables).
 */
import { Controller } from '../../src/controller/controller';
import { silentLogger } from '../../src/logger';
import { startNatsServer, type NatsServerHandle } from '../../src/nats-server';
import { chat, spawnCli, STARTUP_MS, testConfig, waitFor, CLI, MODEL } from '../helpers/cluster';

describe.each([
  ['user/password', ['--user', 'router', '--pass', 's3cret'], { 'nats.user': 'router', 'nats.pass': 's3cret' }, { MLX_ROUTER_NATS_USER: 'router', MLX_ROUTER_NATS_PASS: 's3cret' }, { 'nats.user': 'router', 'nats.pass': 'wrong' }],
  ['token', ['--auth', 'tok-123'], { 'nats.token': 'tok-123' }, { MLX_ROUTER_NATS_TOKEN: 'tok-123' }, { 'nats.token': 'nope' }],
])('NATS auth by %s', (_name, serverArgs, good, workerEnv, bad) => {
  let nats: NatsServerHandle;
  beforeAll(async () => {
    nats = await startNatsServer({ args: serverArgs });
  });
  afterAll(async () => nats?.stop());

  test('auth - controller and worker connect with the configured credentials and serve a request', async () => {
    const controller = await Controller.start({ config: testConfig({ 'nats.servers': [nats.url], ...good }), log: silentLogger() });
    const worker = spawnCli('auth-w', [CLI, 'worker', '--nats', nats.url, '--id', 'auth-w', '--heartbeat-ms', '100', '--ttft-ms', '0', '--token-ms', '0'], workerEnv);
    try {
      await waitFor(() => controller.deps.registry.forModel(MODEL).length === 1, 'the worker online', STARTUP_MS);
      const res = await chat(controller.url, { maxTokens: 3 });
      expect(res.status).toBe(200);
      expect(res.json.metadata.selectedWorker).toBe('auth-w');
    } finally {
      worker.kill('SIGTERM');
      expect((await worker.exited).code).toBe(0);
      await controller.stop();
    }
  });

  test('auth - wrong credentials stop the controller from starting with an authorization error', async () => {
    await expect(Controller.start({ config: testConfig({ 'nats.servers': [nats.url], ...bad }), log: silentLogger() })).rejects.toThrow(/auth/i);
  });
});
