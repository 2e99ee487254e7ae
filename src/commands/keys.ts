import { stringify } from 'yaml';
import { checkKeyEntries, generateKey, hashKey, KEY_ID_PATTERN, type ApiKeyEntry } from '../api-keys';
import { numberFlag, UsageError, type Flags } from '../flags';
import { newId } from '../ids';

/**
 * `mlx-router keys create [--id ID] [--models a,b] [--rpm N] [--tpm N] [--concurrency N]
 * [--priority CLASS] [--admin]`: makes a new client API key and prints it once, with the
 * `cluster.auth.keys` entry that holds only its hash. Nothing is written anywhere: the key is on
 * the terminal only, and cannot be recovered from the hash.
 */
export async function runKeys(flags: Flags, positionals: string[]): Promise<number> {
  if (positionals[0] !== 'create' || positionals.length > 1) throw new UsageError(`usage: mlx-router keys create [--id ID] [--models a,b] [--rpm N] [--tpm N] [--concurrency N] [--priority CLASS] [--admin]`);
  const id = typeof flags.id === 'string' ? flags.id : newId('key');
  if (!KEY_ID_PATTERN.test(id)) throw new UsageError(`--id must be 1-64 characters of [A-Za-z0-9._-], got '${id}'`);
  const key = generateKey();
  const entry: ApiKeyEntry = { id, hash: hashKey(key) };
  const models = typeof flags.models === 'string' ? flags.models.split(',').map((m) => m.trim()).filter(Boolean) : [];
  if (models.length > 0) entry.models = models;
  for (const f of ['rpm', 'tpm', 'concurrency'] as const) {
    const n = numberFlag(flags, f, { min: 0 });
    if (n !== undefined && n > 0) entry[f] = n;
  }
  if (typeof flags.priority === 'string') entry.priority = flags.priority;
  if (flags.admin === true) entry.admin = true;
  const why = checkKeyEntries([entry]);
  if (why !== undefined) throw new UsageError(why);
  const snippet = stringify({ cluster: { auth: { keys: [entry] } } });
  process.stdout.write(
    `API key (shown this once; give it to the client, it cannot be recovered from the hash):\n\n  ${key}\n\n` +
      `Add this entry to cluster.auth.keys in the configuration (it holds only the hash):\n\n${snippet}`,
  );
  return 0;
}
