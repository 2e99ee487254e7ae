/**
 * The root cluster.yaml is loaded by every command started in the repository without --config, so
 * it must say exactly what the schema's defaults say, and document every key.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { describeKeys, loadConfig } from '../../src/config';

const FILE = resolve(__dirname, '../../cluster.yaml');

function at(tree: unknown, dotted: string): unknown {
  return dotted.split('.').reduce<unknown>((node, key) => {
    if (typeof node !== 'object' || node === null || !Object.prototype.hasOwnProperty.call(node, key)) return undefined;
    return (node as Record<string, unknown>)[key];
  }, tree);
}

test('cluster.yaml - loading it gives exactly the schema defaults', () => {
  expect(loadConfig({ file: FILE, env: {} })).toEqual(loadConfig({ env: {} }));
});

test('cluster.yaml - sets every schema key, each with a comment naming its environment variable', () => {
  const text = readFileSync(FILE, 'utf8');
  const tree = parseYaml(text) as unknown;
  const keys = describeKeys();
  expect(keys.length).toBeGreaterThan(40);
  const missing = keys.filter((k) => at(tree, k.key) === undefined).map((k) => k.key);
  expect(missing).toEqual([]);
  const undocumented = keys.filter((k) => !text.includes(`env ${k.env}.`)).map((k) => k.key);
  expect(undocumented).toEqual([]);
});

test('cluster.yaml - environment variables still override the values the file sets', () => {
  const config = loadConfig({
    file: FILE,
    env: { MLX_ROUTER_CONTROLLER_PORT: '9123', MLX_ROUTER_CLUSTER_PIPELINE: 'metrics,retry,select' },
  });
  expect(config.controller.port).toBe(9123);
  expect(config.cluster.pipeline).toEqual(['metrics', 'retry', 'select']);
});
