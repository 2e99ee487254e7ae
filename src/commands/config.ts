import type { Flags } from '../flags';
import { describeKeys } from '../config';
import { configFromFlags } from './shared';

function valueAt(obj: unknown, path: string): unknown {
  return path.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], obj);
}

/** A value worth masking: not empty (an empty key list or password shows as it is). */
function isSet(v: unknown): boolean {
  return Array.isArray(v) ? v.length > 0 : Boolean(v);
}

/**
 * `mlx-router config`: every key with its effective value, default and environment variable. A key
 * the schema marks `sensitive` (a password, token or API key) prints as `***` when it is set.
 */
export async function printConfig(flags: Flags): Promise<number> {
  const { config, file } = configFromFlags(flags);
  process.stdout.write(`# config file: ${file ?? '(none; defaults)'}\n`);
  for (const key of describeKeys()) {
    const raw = valueAt(config, key.key);
    const value = key.sensitive && isSet(raw) ? '***' : raw;
    process.stdout.write(`${key.key} = ${JSON.stringify(value)}    # ${key.doc} (default ${JSON.stringify(key.default)}; env ${key.env})\n`);
  }
  return 0;
}
