import type { Flags } from '../flags';
import { describeKeys } from '../config';
import { configFromFlags } from './shared';

function valueAt(obj: unknown, path: string): unknown {
  return path.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], obj);
}

/**
 * `mlx-router config`: every key with its effective value, default and environment variable. A key
 * the schema marks `sensitive` (a password, token or API key) prints as `***` when it is set.
 */
export async function printConfig(flags: Flags): Promise<number> {
  const { config, file } = configFromFlags(flags);
  process.stdout.write(`# config file: ${file ?? '(none; defaults)'}\n`);
  for (const key of describeKeys()) {
    const value = key.sensitive && valueAt(config, key.key) ? '***' : valueAt(config, key.key);
    process.stdout.write(`${key.key} = ${JSON.stringify(value)}    # ${key.doc} (default ${JSON.stringify(key.default)}; env ${key.env})\n`);
  }
  return 0;
}
