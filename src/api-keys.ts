/**
 * Client API keys (`cluster.auth.keys`): how a key is made, how it is stored (only its hash ever
 * reaches a file), and how a presented key is recognised.
 *
 * Hash: `sha256:<64 hex>` of the whole key. A key made by `mlx-router keys create` holds 32 random
 * bytes (256 bits), so a fast hash cannot be brute-forced and a slow one (scrypt, bcrypt) would
 * only cost CPU on every request, or need a cache of plain keys in memory. Passwords chosen by
 * people would need a slow hash; these keys are never chosen by people (docs/security.md).
 * Every check compares the presented key's digest with every configured hash in constant time,
 * without stopping at a match, so timing tells nothing about which key, or how much of it, matched.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { ClientKey } from './types';

/** One entry of `cluster.auth.keys`, as in the configuration file. */
export interface ApiKeyEntry {
  /** Shown in logs, metrics labels and answer metadata; never the key itself. */
  id: string;
  /** `sha256:<64 hex digits>` of the key. */
  hash: string;
  /** Models the key may use; absent or empty: every model. */
  models?: string[];
  /** Requests per minute (0 or absent: no limit). */
  rpm?: number;
  /** Tokens per minute, counted from the usage answers report (0 or absent: no limit). */
  tpm?: number;
  /** Requests at once (0 or absent: no limit). */
  concurrency?: number;
  /** Priority class (a name of cluster.auth.priorityWeights); absent: cluster.auth.defaultPriority. */
  priority?: string;
  /** May read the operator endpoints (/metrics, /v1/cluster...) and take admin actions. */
  admin?: boolean;
}

export const KEY_PREFIX = 'mlxr-';
export const HASH_PATTERN = /^sha256:[0-9a-f]{64}$/;
export const KEY_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;
const ENTRY_FIELDS = new Set(['id', 'hash', 'models', 'rpm', 'tpm', 'concurrency', 'priority', 'admin']);

/** A new key: the prefix and 32 random bytes, base64url. */
export function generateKey(): string {
  return KEY_PREFIX + randomBytes(32).toString('base64url');
}

export function hashKey(key: string): string {
  return `sha256:${createHash('sha256').update(key, 'utf8').digest('hex')}`;
}

/** Why `value` is not a valid `cluster.auth.keys` list, or undefined when it is. */
export function checkKeyEntries(value: unknown): string | undefined {
  if (!Array.isArray(value)) return 'must be a list of {id, hash, ...} entries';
  const ids = new Set<string>();
  const hashes = new Set<string>();
  for (const [i, raw] of value.entries()) {
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return `entry ${i}: must be an object`;
    const e = raw as Record<string, unknown>;
    const unknown = Object.keys(e).find((k) => !ENTRY_FIELDS.has(k));
    if (unknown !== undefined) return `entry ${i}: unknown field '${unknown}' (known: ${[...ENTRY_FIELDS].join(', ')})`;
    if (typeof e.id !== 'string' || !KEY_ID_PATTERN.test(e.id)) return `entry ${i}: id must be 1-64 characters of [A-Za-z0-9._-]`;
    if (ids.has(e.id)) return `entry ${i}: id '${e.id}' is listed twice`;
    ids.add(e.id);
    if (typeof e.hash !== 'string' || !HASH_PATTERN.test(e.hash)) {
      return `key '${e.id}': hash must be sha256:<64 lower-case hex digits> (make one with mlx-router keys create; never put the key itself in a file)`;
    }
    if (hashes.has(e.hash)) return `key '${e.id}': the same hash is listed twice`;
    hashes.add(e.hash);
    if (e.models !== undefined && (!Array.isArray(e.models) || e.models.some((m) => typeof m !== 'string' || m.length === 0))) {
      return `key '${e.id}': models must be a list of model names`;
    }
    for (const f of ['rpm', 'tpm', 'concurrency'] as const) {
      const v = e[f];
      if (v !== undefined && (typeof v !== 'number' || !Number.isInteger(v) || v < 0)) return `key '${e.id}': ${f} must be a whole number >= 0 (0: no limit)`;
    }
    if (e.priority !== undefined && (typeof e.priority !== 'string' || e.priority.length === 0)) return `key '${e.id}': priority must be a class name`;
    if (e.admin !== undefined && typeof e.admin !== 'boolean') return `key '${e.id}': admin must be true or false`;
  }
  return undefined;
}

/** The key a request presents: `Authorization: Bearer <key>`, else `x-api-key: <key>`. */
export function presentedKey(headers: Readonly<Record<string, string | string[] | undefined>>): string | undefined {
  const auth = headers.authorization;
  if (typeof auth === 'string') {
    const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(auth);
    if (m) return m[1];
  }
  const x = headers['x-api-key'];
  if (typeof x === 'string' && x.trim().length > 0) return x.trim();
  return undefined;
}

const digestOf = (hash: string): Buffer => Buffer.from(hash.slice('sha256:'.length), 'hex');

/** The configured keys, by hash; recognises a presented key in constant time. */
export class ApiKeyBook {
  private readonly entries: Array<{ digest: Buffer; client: ClientKey }>;

  /**
   * `extraAdmin`: a plain admin bearer token (cluster.admin.key, from the environment) also
   * recognised, as the client `admin`.
   */
  constructor(keys: readonly ApiKeyEntry[], defaultPriority: string, extraAdmin = '') {
    this.entries = keys.map((k) => ({
      digest: digestOf(k.hash),
      client: Object.freeze({
        id: k.id,
        models: k.models && k.models.length > 0 ? Object.freeze([...k.models]) : undefined,
        rpm: k.rpm ?? 0,
        tpm: k.tpm ?? 0,
        concurrency: k.concurrency ?? 0,
        priority: k.priority ?? defaultPriority,
        admin: k.admin === true,
      }),
    }));
    if (extraAdmin.length > 0) {
      this.entries.push({
        digest: digestOf(hashKey(extraAdmin)),
        client: Object.freeze({ id: 'admin', rpm: 0, tpm: 0, concurrency: 0, priority: defaultPriority, admin: true }),
      });
    }
  }

  /** True when any API key is configured (cluster.auth.keys): every client must then present one. */
  get size(): number {
    return this.entries.length;
  }

  /** The client whose key this is, or undefined. Compares with every entry, in constant time. */
  find(key: string): ClientKey | undefined {
    const digest = createHash('sha256').update(key, 'utf8').digest();
    let found: ClientKey | undefined;
    for (const e of this.entries) {
      // No early exit: every entry is compared, whichever matched.
      if (timingSafeEqual(digest, e.digest) && found === undefined) found = e.client;
    }
    return found;
  }
}

/** Whether the key may use the model. */
export function mayUseModel(client: ClientKey | undefined, model: string): boolean {
  return !client?.models || client.models.includes(model);
}
