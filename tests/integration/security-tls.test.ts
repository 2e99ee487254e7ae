/**
 * TLS to NATS for controller and worker processes, with certificates made here by openssl: server
 * verification (the router trusts only the configured CA) and mutual TLS (the server admits only
 * clients with a certificate from that CA).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { Controller } from '../../src/controller/controller';
import { silentLogger } from '../../src/logger';
import { startNatsServer, type NatsServerHandle } from '../../src/nats-server';
import { chat, CLI, MODEL, spawnCli, testConfig, waitFor } from '../helpers/cluster';

let dir: string;
let nats: NatsServerHandle;
const f = (name: string): string => join(dir, name);

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: 'ignore' });
}

/** A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA. */
function makeCertificates(): void {
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=mlx-test-ca', '-keyout', f('ca.key'), '-out', f('ca.pem')]);
  writeFileSync(f('server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  writeFileSync(f('client.ext'), 'extendedKeyUsage=clientAuth\n');
  for (const [name, ext] of [['server', 'server.ext'], ['client', 'client.ext']]) {
    openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=mlx-test-${name}`, '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`)]);
    openssl(['x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', f(ext), '-out', f(`${name}.pem`)]);
  }
  // A second CA nobody trusts, for the server-verification check.
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=other-ca', '-keyout', f('other.key'), '-out', f('other.pem')]);
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'mlx-tls-'));
  makeCertificates();
  nats = await startNatsServer({ args: ['--tls', '--tlscert', f('server.pem'), '--tlskey', f('server.key'), '--tlscacert', f('ca.pem'), '--tlsverify'] });
}, 60_000);

afterAll(async () => {
  await nats?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('tls - controller and worker connect with mutual TLS and serve a request', async () => {
  const tls = { 'nats.tls.enabled': true, 'nats.tls.caFile': f('ca.pem'), 'nats.tls.certFile': f('client.pem'), 'nats.tls.keyFile': f('client.key') };
  const controller = await Controller.start({ config: testConfig({ 'nats.servers': [nats.url], ...tls }), log: silentLogger() });
  const worker = spawnCli('tls-w', [CLI, 'worker', '--nats', nats.url, '--id', 'tls-w', '--heartbeat-ms', '100', '--ttft-ms', '0', '--token-ms', '0'], {
    MLX_ROUTER_NATS_TLS_ENABLED: 'true',
    MLX_ROUTER_NATS_TLS_CA_FILE: f('ca.pem'),
    MLX_ROUTER_NATS_TLS_CERT_FILE: f('client.pem'),
    MLX_ROUTER_NATS_TLS_KEY_FILE: f('client.key'),
  });
  try {
    await waitFor(() => controller.deps.registry.forModel(MODEL).length === 1, `the TLS worker online (${worker.output()})`, 20_000);
    const res = await chat(controller.url, { maxTokens: 3 });
    expect(res.status).toBe(200);
    expect(res.json.metadata.selectedWorker).toBe('tls-w');
  } finally {
    worker.kill('SIGTERM');
    expect((await worker.exited).code).toBe(0);
    await controller.stop();
  }
});

test('tls - a client without a certificate is refused (mutual TLS)', async () => {
  const err = await connect({ servers: nats.url, reconnect: false, tls: { caFile: f('ca.pem') } }).then(() => undefined, (e: Error) => e);
  // Under TLS 1.3 the server checks the client's certificate after the client has finished its
  // side of the handshake, so the refusal reaches the client either as the certificate alert or
  // as the connection being reset: both are a refusal, and no connection was made.
  expect(err).toBeDefined();
  expect(err?.message).toMatch(/certificate|ECONNRESET|socket hang up|closed/i);
});

test('tls - the router refuses a server its CA did not sign (server verification)', async () => {
  const config = testConfig({ 'nats.servers': [nats.url], 'nats.tls.enabled': true, 'nats.tls.caFile': f('other.pem'), 'nats.tls.certFile': f('client.pem'), 'nats.tls.keyFile': f('client.key') });
  const err = await Controller.start({ config, log: silentLogger() }).then(() => undefined, (e: Error) => e);
  expect(err?.message).toMatch(/verify/i);
});
