/**
 * The one place NATS connection options are built from configuration (auth, TLS, reconnect).
 */
import { readFileSync } from 'node:fs';
import { connect, credsAuthenticator, nkeyAuthenticator, type NatsConnection, type NodeConnectionOptions } from '@nats-io/transport-node';
import { ConfigError, type RouterConfig } from './config';

export function connectionOptions(cfg: RouterConfig['nats'], name: string): NodeConnectionOptions {
  const opts: NodeConnectionOptions = {
    servers: cfg.servers,
    name,
    noRandomize: !cfg.randomize,
    reconnect: cfg.reconnect.enabled,
    maxReconnectAttempts: cfg.reconnect.maxAttempts,
    reconnectTimeWait: cfg.reconnect.waitMs,
    // The router must learn of a dead server quickly; the defaults (2 min) are far too slow.
    pingInterval: 10_000,
    maxPingOut: 2,
    // Request/reply inboxes under our own prefix, which NATS permissions can name (docs/security.md).
    inboxPrefix: cfg.inboxPrefix,
  };
  if (cfg.user) {
    opts.user = cfg.user;
    opts.pass = cfg.pass;
  }
  if (cfg.token) opts.token = cfg.token;
  if (cfg.credsFile) {
    try {
      opts.authenticator = credsAuthenticator(readFileSync(cfg.credsFile));
    } catch (err) {
      throw new ConfigError(`nats.credsFile: cannot read ${cfg.credsFile}: ${(err as Error).message}`, { cause: err });
    }
  }
  if (cfg.nkeySeedFile) {
    if (cfg.credsFile) throw new ConfigError('nats.nkeySeedFile: set either nats.credsFile or nats.nkeySeedFile, not both');
    let seed: Uint8Array;
    try {
      seed = new TextEncoder().encode(readFileSync(cfg.nkeySeedFile, 'utf8').trim());
    } catch (err) {
      throw new ConfigError(`nats.nkeySeedFile: cannot read ${cfg.nkeySeedFile}: ${(err as Error).message}`, { cause: err });
    }
    if (!/^SU[A-Z2-7]{56}$/.test(new TextDecoder().decode(seed))) throw new ConfigError(`nats.nkeySeedFile: ${cfg.nkeySeedFile} does not hold a user NKey seed (SU...)`);
    opts.authenticator = nkeyAuthenticator(seed);
  }
  if (cfg.tls.enabled || cfg.tls.caFile || cfg.tls.certFile) {
    opts.tls = {
      ...(cfg.tls.caFile ? { caFile: cfg.tls.caFile } : {}),
      ...(cfg.tls.certFile ? { certFile: cfg.tls.certFile } : {}),
      ...(cfg.tls.keyFile ? { keyFile: cfg.tls.keyFile } : {}),
    };
  }
  return opts;
}

export async function connectNats(cfg: RouterConfig['nats'], name: string, timeoutMs = 5000): Promise<NatsConnection> {
  return connect({ ...connectionOptions(cfg, name), timeout: timeoutMs });
}

/** Waits for `work`, but never more than `ms` (its failure is ignored: the caller goes on either way). */
async function within(work: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)));
  try {
    await Promise.race([work.catch(() => undefined), bound]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Drains `nc` (pending messages flushed, subscriptions ended), but never waits more than `ms`:
 * while NATS is down a drain or flush waits for a reconnect that may never come, and a process
 * told to stop must stop. After the bound the connection is closed as it is.
 */
export async function drainWithin(nc: NatsConnection, ms = 2000): Promise<void> {
  if (nc.isClosed()) return;
  await within(nc.drain(), ms);
  if (!nc.isClosed()) await nc.close().catch(() => undefined);
}

/** Flushes `nc`, waiting at most `ms` (a flush while disconnected waits for the reconnect). */
export async function flushWithin(nc: NatsConnection, ms = 1000): Promise<void> {
  await within(nc.flush(), ms);
}
