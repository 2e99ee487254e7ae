/**
 * `mlx-router up`: a whole local cluster in one command. Connects to the configured NATS or, when
 * the default one does not answer, starts `nats-server` as a child on a free port (servers the user
 * named must answer, else it exits 1; `--nats local` always starts one); then N synthetic workers
 * and the controllers (in this process: one, or `--controllers N` on consecutive ports). SIGINT or
 * SIGTERM stops the controllers, then the workers
 * (they deregister), then NATS, and leaves no process behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { dirname, resolve } from 'node:path';
import { numberFlag, UsageError, type Flags } from '../flags';
import { Controller } from '../controller/controller';
import { describeKeys } from '../config';
import { createLogger } from '../logger';
import { connectNats } from '../nats';
import { natsServerAvailable, startNatsServer, type NatsServerHandle } from '../nats-server';
import { configFromFlags, waitForSignal } from './shared';

const INSTALL_HINT = `no NATS server answers and no 'nats-server' binary is on PATH.
Install one:  apt-get install nats-server   (Debian/Ubuntu)
              brew install nats-server     (macOS)
or point mlx-router at a running server:  --nats nats://HOST:4222`;

/** `--nats local`: always start a private nats-server, whatever else answers. */
export const LOCAL_NATS = 'local';

/**
 * True when the user chose the NATS servers (`--nats URL`, or `nats.servers` set away from its
 * default in the file or environment): then an unreachable server is an error, never a reason to
 * start a private one the user did not ask for.
 */
function serversNamed(flags: Flags, servers: readonly string[]): boolean {
  if (typeof flags.nats === 'string') return true;
  const fallback = describeKeys().find((k) => k.key === 'nats.servers')?.default;
  return JSON.stringify(servers) !== JSON.stringify(fallback);
}

function stopChild(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((done) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      done();
    });
    child.kill('SIGTERM');
  });
}

export async function runUp(flags: Flags): Promise<number> {
  const workers = numberFlag(flags, 'workers', { min: 1, max: 64 }) ?? 3;
  const controllerCount = numberFlag(flags, 'controllers', { min: 1, max: 16 }) ?? 1;
  const local = flags.nats === LOCAL_NATS;
  const { config, file } = configFromFlags(local ? { ...flags, nats: undefined } : flags, {
    'controller.port': numberFlag(flags, 'port', { max: 65535 }),
  });
  if (config.controller.port !== 0 && config.controller.port + controllerCount - 1 > 65535) {
    throw new UsageError(`--controllers ${controllerCount} from port ${config.controller.port} would pass port 65535`);
  }
  const log = createLogger('mlx-router', config.log.level);
  const signal = waitForSignal();
  const children: ChildProcess[] = [];
  let nats: NatsServerHandle | undefined;
  const controllers: Controller[] = [];
  let stopping = false;

  const shutdown = async (): Promise<void> => {
    stopping = true;
    await Promise.all(controllers.map((c) => c.stop().catch((err) => log.error({ err }, 'controller stop failed'))));
    await Promise.all(children.map((c) => stopChild(c, 15_000)));
    await nats?.stop();
  };
  // A last resort if this process dies another way: never leave a nats-server behind.
  const onExit = (): void => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    if (nats && nats.process.exitCode === null) nats.process.kill('SIGKILL');
  };
  process.once('exit', onExit);

  try {
    let servers = config.nats.servers;
    let unreachable = '';
    const probe = local
      ? undefined
      : await connectNats({ ...config.nats, reconnect: { ...config.nats.reconnect, enabled: false } }, 'mlx-router-up-probe', 1500).catch((err: Error) => {
          unreachable = err.message;
          return undefined;
        });
    if (!probe && !local && serversNamed(flags, servers)) {
      process.stderr.write(
        `mlx-router up: cannot connect to NATS at ${servers.join(',')}: ${unreachable}\n` +
          `Start that server or name a reachable one with --nats URL; '--nats ${LOCAL_NATS}' starts a private nats-server instead.\n`,
      );
      signal.cancel();
      return 1;
    }
    if (probe) {
      await probe.close();
      log.info({ servers }, 'using the configured NATS');
    } else {
      if (!natsServerAvailable()) {
        process.stderr.write(`mlx-router up: ${INSTALL_HINT}\n`);
        signal.cancel();
        return 1;
      }
      // Several controllers share session moves through JetStream key-value: give them one.
      nats = await startNatsServer({ detached: true, jetstream: controllerCount > 1 });
      servers = [nats.url];
      log.info({ url: nats.url }, 'started nats-server');
    }

    const cli = resolve(__dirname, '..', 'cli.js');
    // Worker ids unique to this run: two `up`s on one NATS must never share an id (the second
    // would be refused as a duplicate, docs/security.md).
    const run = randomBytes(3).toString('hex');
    for (let i = 1; i <= workers; i++) {
      const id = `worker-${i}-${run}`;
      const args = [cli, 'worker', '--nats', servers.join(','), '--id', id];
      if (file) args.push('--config', file);
      // Own process group, so Ctrl-C reaches only `up`, which stops the controller first (its
      // streams finish) and then the workers. The IPC channel ties each worker to this process:
      // if `up` dies without stopping them, the channel closes and they stop themselves.
      const child = spawn(process.execPath, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], detached: true });
      child.channel?.unref();
      child.on('exit', (code, sig) => {
        if (!stopping) log.error({ worker: id, code, signal: sig }, 'worker exited');
      });
      children.push(child);
    }

    // Consecutive ports from controller.port (any free port each when it is 0).
    for (let i = 0; i < controllerCount; i++) {
      const port = config.controller.port === 0 ? 0 : config.controller.port + i;
      controllers.push(
        await Controller.start({
          config: { ...config, nats: { ...config.nats, servers }, controller: { ...config.controller, port } },
          log: controllerCount > 1 ? log.child({ controller: i + 1 }) : log,
          baseDir: file ? dirname(file) : process.cwd(),
        }),
      );
    }
    const urls = controllers.map((c) => c.url.replace('0.0.0.0', '127.0.0.1'));
    const url = urls[0];
    const more = controllerCount > 1 ? `  (${controllerCount} controllers: ${urls.join(' ')})` : '';
    process.stdout.write(
      `\nmlx-router is up: ${url}  (NATS ${servers.join(',')}, ${workers} workers)${more}\n\n` +
        `  curl ${url}/v1/chat/completions -H 'content-type: application/json' \\\n` +
        `    -d '{"model":"${config.worker.models[0]}","messages":[{"role":"user","content":"Hello"}]}'\n\n` +
        `Ctrl-C stops everything.\n\n`,
    );
    const sig = await signal.promise;
    log.info({ signal: sig }, 'stopping the cluster (again to force)');
    // A second signal during the drain (an impatient Ctrl-C) must still leave nothing behind.
    const force = waitForSignal();
    void force.promise.then(async () => {
      log.warn('forced stop');
      onExit();
      // Reap what was just killed (briefly), so nothing is left even as a zombie.
      const procs = [...children, ...(nats ? [nats.process] : [])].filter((c) => c.exitCode === null && c.signalCode === null);
      await Promise.race([Promise.all(procs.map((c) => new Promise((r) => c.once('exit', r)))), new Promise((r) => setTimeout(r, 1000))]);
      process.exit(130);
    });
    try {
      await shutdown();
    } finally {
      force.cancel();
    }
    return 0;
  } catch (err) {
    signal.cancel();
    await shutdown();
    throw err;
  } finally {
    process.off('exit', onExit);
  }
}
