/**
 * A NATS cluster on loopback for integration tests: `size` nats-server processes joined by routes
 * into one cluster, each with JetStream and its own storage in a temp dir, on free ports. Tests
 * kill and restart single nodes; `stop()` ends every process and removes every dir.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { startNatsServer, type NatsServerHandle } from '../../src/nats-server';
import { CLI, spawnCli, waitFor, type WorkerOptions, type WorkerProcess } from './cluster';

export interface NatsClusterNode {
  name: string;
  /** Client URL; stays the same across restarts. */
  url: string;
  clientPort: number;
  routePort: number;
  storeDir: string;
  /** The running process, or undefined while the node is down. */
  server?: NatsServerHandle;
}

export interface NatsCluster {
  nodes: NatsClusterNode[];
  /** Every node's client URL: the seed list for controllers and workers. */
  urls: string[];
  /** The seed list starting at node `i` (a process connects in this order when not randomizing). */
  seedsFrom(i: number): string[];
  /** Kills node `i` (SIGKILL: a crash) and waits until it has exited. */
  kill(i: number): Promise<void>;
  /** Starts node `i` again on its ports with its storage. */
  restart(i: number): Promise<void>;
  stop(): Promise<void>;
}

/** A port nothing listens on now (the kernel's choice); nats-server takes it right after. */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === 'object' ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

export interface NatsClusterOptions {
  size?: number;
  /** JetStream on every node (default true). */
  jetstream?: boolean;
}

export async function startNatsCluster(options: NatsClusterOptions = {}): Promise<NatsCluster> {
  const size = options.size ?? 3;
  const jetstream = options.jetstream ?? true;
  const clusterName = `mlx-test-${process.pid}`;
  const nodes: NatsClusterNode[] = [];
  for (let i = 0; i < size; i++) {
    const clientPort = await freePort();
    const routePort = await freePort();
    nodes.push({
      name: `n${i + 1}`,
      url: `nats://127.0.0.1:${clientPort}`,
      clientPort,
      routePort,
      storeDir: mkdtempSync(join(tmpdir(), `mlx-js-n${i + 1}-`)),
    });
  }
  const routes = nodes.map((n) => `nats://127.0.0.1:${n.routePort}`).join(',');
  const start = async (n: NatsClusterNode): Promise<void> => {
    const args = ['--server_name', n.name, '--cluster_name', clusterName, '--cluster', `nats://127.0.0.1:${n.routePort}`, '--routes', routes];
    if (jetstream) args.push('--jetstream', '--store_dir', n.storeDir);
    n.server = await startNatsServer({ port: n.clientPort, args });
  };
  const cluster: NatsCluster = {
    nodes,
    urls: nodes.map((n) => n.url),
    seedsFrom: (i) => [...nodes.slice(i), ...nodes.slice(0, i)].map((n) => n.url),
    async kill(i) {
      const n = nodes[i];
      const server = n.server;
      n.server = undefined;
      if (!server) return;
      server.process.kill('SIGKILL');
      await server.stop();
    },
    async restart(i) {
      if (!nodes[i].server) await start(nodes[i]);
    },
    async stop() {
      await Promise.all(nodes.map((n) => n.server?.stop()));
      for (const n of nodes) {
        n.server = undefined;
        rmSync(n.storeDir, { recursive: true, force: true });
      }
    },
  };
  try {
    await Promise.all(nodes.map(start));
    await waitForClusterReady(cluster, jetstream);
    return cluster;
  } catch (err) {
    await cluster.stop();
    throw err;
  }
}

/**
 * Waits until every node routes to all the others and, with JetStream, a meta leader answers
 * account info (before that, creating a bucket fails).
 */
export async function waitForClusterReady(cluster: NatsCluster, jetstream = true): Promise<void> {
  const nc = await connect({ servers: cluster.nodes.find((n) => n.server)?.url ?? cluster.urls[0] });
  try {
    const up = cluster.nodes.filter((n) => n.server).length;
    // Each server's INFO lists the client URLs of the cluster it knows (connect_urls).
    await waitFor(async () => {
      const counts = await Promise.all(
        cluster.nodes
          .filter((n) => n.server)
          .map(async (n) => {
            const c = await connect({ servers: n.url, noRandomize: true });
            const known = (c.info?.connect_urls ?? []).length;
            await c.close();
            return known;
          }),
      );
      return counts.every((k) => k >= up);
    }, `a NATS cluster of ${up} routed nodes`, 20_000, 100);
    if (!jetstream) return;
    await waitFor(
      async () => {
        try {
          const msg = await nc.request('$JS.API.INFO', new Uint8Array(0), { timeout: 1000 });
          const info = JSON.parse(new TextDecoder().decode(msg.data)) as { error?: unknown };
          return !info.error;
        } catch {
          return false;
        }
      },
      'a JetStream meta leader',
      30_000,
      200,
    );
  } finally {
    await nc.close();
  }
}

/** Settings every process of a multi-node test shares: seeds tried in order, replicated session moves. */
export const CLUSTER_ENV: Record<string, string> = {
  MLX_ROUTER_NATS_RANDOMIZE: 'false',
  MLX_ROUTER_NATS_RECONNECT_WAIT_MS: '250',
  MLX_ROUTER_CLUSTER_REQUEST_ROUTING_SESSION_SHARED_REPLICAS: '3',
};

/** A synthetic worker process connected to `seeds`, the first one first. */
export function spawnClusterWorker(seeds: string[], options: WorkerOptions): WorkerProcess {
  const args = [CLI, 'worker', '--nats', seeds.join(','), '--id', options.id, '--heartbeat-ms', String(options.heartbeatMs ?? 100)];
  if (options.maxConcurrent !== undefined) args.push('--max-concurrent', String(options.maxConcurrent));
  args.push('--ttft-ms', String(options.ttftMs ?? 0), '--token-ms', String(options.tokenMs ?? 0));
  return spawnCli(options.id, args, CLUSTER_ENV);
}

export interface ControllerProcess extends WorkerProcess {
  url: string;
}

/**
 * A controller process (the built CLI) connected to `seeds`, the first one first, on a free HTTP
 * port; resolves with its URL once it listens. `env` adds MLX_ROUTER_* settings.
 */
export async function spawnController(id: string, seeds: string[], env: Record<string, string> = {}): Promise<ControllerProcess> {
  const proc = spawnCli(id, [CLI, 'controller', '--nats', seeds.join(','), '--port', '0'], {
    ...CLUSTER_ENV,
    MLX_ROUTER_LOG_LEVEL: 'info',
    MLX_ROUTER_DISCOVERY_OFFLINE_AFTER_MS: '600',
    MLX_ROUTER_WORKER_HEARTBEAT_INTERVAL_MS: '100',
    ...env,
  });
  const url = await waitFor(
    () => {
      if (proc.process.exitCode !== null) throw new Error(`controller ${id} exited: ${proc.output()}`);
      const m = /"url":"(http:\/\/[^"]+)".*"msg":"controller listening"/.exec(proc.output());
      return m?.[1];
    },
    `controller ${id} listening`,
    30_000,
  ).catch((err: Error) => {
    proc.kill('SIGKILL');
    throw new Error(`${err.message}; its output: ${proc.output().slice(0, 2000)}`);
  });
  return { ...proc, url };
}
