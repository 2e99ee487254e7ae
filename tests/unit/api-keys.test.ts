/** Client API keys: making, hashing, recognising; the cluster.auth configuration. */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApiKeyBook, checkKeyEntries, generateKey, hashKey, mayUseModel, presentedKey } from '../../src/api-keys';
import { loadConfig } from '../../src/config';

test('api keys - a new key is 32 random bytes after the prefix, and its hash is sha256 of it', () => {
  const a = generateKey();
  const b = generateKey();
  expect(a).toMatch(/^mlxr-[A-Za-z0-9_-]{43}$/);
  expect(a).not.toBe(b);
  expect(hashKey('abc')).toBe('sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
});

test('api keys - the book recognises each configured key and nothing else', () => {
  const k1 = generateKey();
  const k2 = generateKey();
  const book = new ApiKeyBook(
    [
      { id: 'one', hash: hashKey(k1), models: ['m1'], rpm: 5, priority: 'high' },
      { id: 'two', hash: hashKey(k2), admin: true },
    ],
    'normal',
  );
  expect(book.size).toBe(2);
  expect(book.find(k1)).toEqual({ id: 'one', models: ['m1'], rpm: 5, tpm: 0, concurrency: 0, priority: 'high', admin: false });
  expect(book.find(k2)).toMatchObject({ id: 'two', models: undefined, priority: 'normal', admin: true });
  expect(book.find(generateKey())).toBeUndefined();
  expect(book.find(k1.slice(0, -1))).toBeUndefined();
  expect(book.find(hashKey(k1))).toBeUndefined();
  expect(book.find('')).toBeUndefined();
});

test('api keys - the plain admin key (cluster.admin.key) is recognised as the client admin', () => {
  const book = new ApiKeyBook([], 'normal', 'an-admin-key-of-16+chars');
  expect(book.find('an-admin-key-of-16+chars')).toMatchObject({ id: 'admin', admin: true });
  expect(book.find('an-admin-key-of-16+chars ')).toBeUndefined();
});

test('api keys - a request presents its key as Authorization: Bearer or x-api-key', () => {
  expect(presentedKey({ authorization: 'Bearer mlxr-abc' })).toBe('mlxr-abc');
  expect(presentedKey({ authorization: 'bearer   mlxr-abc  ' })).toBe('mlxr-abc');
  expect(presentedKey({ 'x-api-key': ' mlxr-xyz ' })).toBe('mlxr-xyz');
  expect(presentedKey({ authorization: 'Basic Zm9vOmJhcg==', 'x-api-key': 'k' })).toBe('k');
  expect(presentedKey({ authorization: 'Bearer' })).toBeUndefined();
  expect(presentedKey({})).toBeUndefined();
});

test('api keys - a model list limits the models; none allows all', () => {
  const base = { id: 'x', rpm: 0, tpm: 0, concurrency: 0, priority: 'normal', admin: false };
  expect(mayUseModel({ ...base, models: ['a'] }, 'a')).toBe(true);
  expect(mayUseModel({ ...base, models: ['a'] }, 'b')).toBe(false);
  expect(mayUseModel(base, 'b')).toBe(true);
  expect(mayUseModel(undefined, 'b')).toBe(true);
});

test('api keys - entries are checked: a plain key, a duplicate id or hash, a bad limit are refused with the reason', () => {
  const h = hashKey('k');
  expect(checkKeyEntries([{ id: 'a', hash: h }])).toBeUndefined();
  expect(checkKeyEntries([{ id: 'a', hash: 'mlxr-plain' }])).toMatch(/never put the key itself/);
  expect(checkKeyEntries([{ id: 'a', hash: h }, { id: 'a', hash: hashKey('j') }])).toMatch(/listed twice/);
  expect(checkKeyEntries([{ id: 'a', hash: h }, { id: 'b', hash: h }])).toMatch(/same hash/);
  expect(checkKeyEntries([{ id: 'a', hash: h, rpm: -1 }])).toMatch(/rpm/);
  expect(checkKeyEntries([{ id: 'a', hash: h, tpm: 1.5 }])).toMatch(/tpm/);
  expect(checkKeyEntries([{ id: 'a', hash: h, key: 'x' }])).toMatch(/unknown field 'key'/);
  expect(checkKeyEntries([{ id: 'has space', hash: h }])).toMatch(/id must be/);
  expect(checkKeyEntries({})).toMatch(/list/);
});

test('config - cluster.auth: keys load from a file; a priority outside the classes, or a plain key, stops start-up naming the key', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mlx-auth-'));
  const file = join(dir, 'auth.yaml');
  writeFileSync(file, `cluster:\n  auth:\n    defaultPriority: silver\n    priorityWeights: {gold: 5, silver: 1}\n    keys:\n      - {id: a, hash: "${hashKey('k')}", priority: gold, models: [m]}\n`);
  const cfg = loadConfig({ file, env: {} });
  expect(cfg.cluster.auth.keys).toEqual([{ id: 'a', hash: hashKey('k'), priority: 'gold', models: ['m'] }]);
  // The classes are exactly those configured (not merged into the default ones).
  expect(cfg.cluster.auth.priorityWeights).toEqual({ gold: 5, silver: 1 });
  expect(() => loadConfig({ env: { MLX_ROUTER_CLUSTER_AUTH_KEYS: JSON.stringify([{ id: 'a', hash: hashKey('k'), priority: 'gold' }]) } })).toThrow(
    /cluster\.auth\.keys: key 'a': priority 'gold' is not a class/,
  );
  let message = '';
  try {
    loadConfig({ env: { MLX_ROUTER_CLUSTER_AUTH_KEYS: JSON.stringify([{ id: 'a', hash: 'mlxr-secret-pasted-by-mistake' }]) } });
  } catch (e) {
    message = (e as Error).message;
  }
  expect(message).toMatch(/cluster\.auth\.keys/);
  expect(message).not.toContain('mlxr-secret-pasted-by-mistake');
  expect(() => loadConfig({ env: { MLX_ROUTER_CLUSTER_AUTH_DEFAULT_PRIORITY: 'gold' } })).toThrow(/cluster\.auth\.defaultPriority/);
  expect(() => loadConfig({ env: { MLX_ROUTER_CLUSTER_AUTH_PRIORITY_WEIGHTS: '{"high":0}' } })).toThrow(/priorityWeights/);
});
