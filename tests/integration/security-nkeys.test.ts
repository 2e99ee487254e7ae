/**
 * NKeys and credentials files for controller and worker processes, with keys made here: a
 * nats-server that lists its users by NKey public key (`nats.nkeySeedFile`), and one in
 * decentralized JWT mode (an operator, an account, user JWTs; `nats.credsFile`). Each serves a
 * request end to end; a client without the right key or credentials is refused.
 */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, credsAuthenticator, nkeyAuthenticator, nkeys } from '@nats-io/transport-node';
import { encodeAccount, encodeOperator, encodeUser, fmtCreds } from '@nats-io/jwt';
import { Controller } from '../../src/controller/controller';
import { silentLogger } from '../../src/logger';
import { startNatsServer, type NatsServerHandle } from '../../src/nats-server';
import { chat, CLI, MODEL, spawnCli, testConfig, waitFor } from '../helpers/cluster';

let dir: string;
const f = (name: string): string => join(dir, name);
const text = (b: Uint8Array): string => new TextDecoder().decode(b);

/** Writes a secret the way an operator should: readable by its owner only. */
function secret(name: string, content: string | Uint8Array): string {
  writeFileSync(f(name), content);
  chmodSync(f(name), 0o600);
  return f(name);
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'mlx-nkeys-'));
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Starts a controller and one worker with the given NATS settings (env for the worker), serves one request, stops both. */
async function serveOne(nats: NatsServerHandle, settings: Record<string, string>, env: Record<string, string>, id: string): Promise<void> {
  const controller = await Controller.start({ config: testConfig({ 'nats.servers': [nats.url], ...settings }), log: silentLogger() });
  const worker = spawnCli(id, [CLI, 'worker', '--nats', nats.url, '--id', id, '--heartbeat-ms', '100', '--ttft-ms', '0', '--token-ms', '0'], env);
  try {
    await waitFor(() => controller.deps.registry.forModel(MODEL).length === 1, `worker ${id} online (${worker.output()})`, 20_000);
    const res = await chat(controller.url, { maxTokens: 3 });
    expect(res.status).toBe(200);
    expect(res.json.metadata.selectedWorker).toBe(id);
  } finally {
    worker.kill('SIGTERM');
    expect((await worker.exited).code).toBe(0);
    await controller.stop();
  }
}

describe('nkeys', () => {
  let nats: NatsServerHandle;
  const controllerKey = nkeys.createUser();
  const workerKey = nkeys.createUser();

  beforeAll(async () => {
    const conf = `authorization {\n  users = [\n    { nkey: ${controllerKey.getPublicKey()} }\n    { nkey: ${workerKey.getPublicKey()} }\n  ]\n}\n`;
    writeFileSync(f('nkeys.conf'), conf);
    nats = await startNatsServer({ args: ['-c', f('nkeys.conf')] });
  });

  afterAll(async () => {
    await nats?.stop();
  });

  test('nkeys - controller and worker connect with their NKey seeds and serve a request', async () => {
    const controllerSeed = secret('controller.nk', text(controllerKey.getSeed()));
    const workerSeed = secret('worker.nk', text(workerKey.getSeed()));
    await serveOne(nats, { 'nats.nkeySeedFile': controllerSeed }, { MLX_ROUTER_NATS_NKEY_SEED_FILE: workerSeed }, 'nkey-w');
  });

  test('nkeys - a client without a listed NKey is refused', async () => {
    const none = await connect({ servers: nats.url, reconnect: false }).then(() => undefined, (e: Error) => e);
    expect(none?.message).toMatch(/authorization/i);
    const stranger = nkeys.createUser();
    const other = await connect({ servers: nats.url, reconnect: false, authenticator: nkeyAuthenticator(stranger.getSeed()) }).then(() => undefined, (e: Error) => e);
    expect(other?.message).toMatch(/authorization/i);
  });

  test('nkeys - a seed file that holds no user seed stops start-up with a message naming the key', async () => {
    const bad = secret('bad.nk', 'not a seed');
    const err = await Controller.start({ config: testConfig({ 'nats.servers': [nats.url], 'nats.nkeySeedFile': bad }), log: silentLogger() }).then(() => undefined, (e: Error) => e);
    expect(err?.message).toMatch(/nats\.nkeySeedFile/);
  });
});

describe('credentials files (decentralized JWT auth)', () => {
  let nats: NatsServerHandle;
  const operator = nkeys.createOperator();
  const account = nkeys.createAccount();
  const creds: Record<string, string> = {};

  beforeAll(async () => {
    const operatorJwt = await encodeOperator('mlx-test-operator', operator);
    // No limits on the account (the library's defaults admit no connection at all).
    const accountJwt = await encodeAccount(
      'mlx-test-account',
      account,
      { limits: { conn: -1, subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, leaf: -1 } },
      { signer: operator },
    );
    for (const who of ['controller', 'worker']) {
      const user = nkeys.createUser();
      const jwt = await encodeUser(`mlx-${who}`, user, account);
      creds[who] = secret(`${who}.creds`, fmtCreds(jwt, user));
    }
    const conf = `operator: ${operatorJwt}\nresolver: MEMORY\nresolver_preload: {\n  ${account.getPublicKey()}: ${accountJwt}\n}\n`;
    writeFileSync(f('jwt.conf'), conf);
    nats = await startNatsServer({ args: ['-c', f('jwt.conf')] });
  });

  afterAll(async () => {
    await nats?.stop();
  });

  test('creds - controller and worker connect with credentials files and serve a request', async () => {
    await serveOne(nats, { 'nats.credsFile': creds.controller }, { MLX_ROUTER_NATS_CREDS_FILE: creds.worker }, 'creds-w');
  });

  test('creds - a user signed by another account is refused', async () => {
    const stranger = nkeys.createAccount();
    const user = nkeys.createUser();
    const jwt = await encodeUser('stranger', user, stranger);
    const err = await connect({ servers: nats.url, reconnect: false, authenticator: credsAuthenticator(fmtCreds(jwt, user)) }).then(() => undefined, (e: Error) => e);
    expect(err?.message).toMatch(/authorization/i);
  });
});
