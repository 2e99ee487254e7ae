/** Configuration: defaults, partial files, MLX_ROUTER_* overrides, and errors that name the key. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, DEFAULT_PIPELINE, describeKeys, envName, loadConfig } from '../../src/config';

let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'mlx-router-config-'));
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

let files = 0;
function yamlFile(text: string): string {
  const file = join(dir, `c${files++}.yaml`);
  writeFileSync(file, text);
  return file;
}

/** The ConfigError that loading throws, or a failure when it loads. */
function configError(load: () => unknown): ConfigError {
  try {
    load();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

test('config - defaults load with the documented keys and meanings', () => {
  const c = loadConfig({ env: {} });
  const rr = c.cluster.requestRouting;
  expect(c.cluster.pipeline).toEqual(DEFAULT_PIPELINE);
  expect(DEFAULT_PIPELINE).toEqual(['metrics', 'limits', 'session', 'retry', 'hedge', 'breaker', 'priority', 'select', 'timeout', 'health']);
  // Hedging is on by default: never before 20 learned TTFTs, and within a 5 % budget.
  expect(rr.hedge).toEqual({ enabled: true, percentile: 0.95, minSamples: 20, minDelayMs: 50, initialDelayMs: 0, budget: { ratio: 0.05, maxTokens: 10, minPerSecond: 0.1 } });
  // Long enough for a 2,000-token answer at 10 tokens/s: hangs are caught by the TTFT and idle limits.
  expect(rr.timeoutMs).toBe(300000);
  expect(rr.streamingTimeoutMs).toBe(300000);
  expect(rr).toMatchObject({ firstChunkTimeoutMs: 10000, idleTimeoutMs: 10000, deadlineShare: 0.5 });
  expect(rr.retry).toMatchObject({ enabled: true, maxRetries: 2, retryDelayMs: 100, maxRetryDelayMs: 1000 });
  expect(rr.retry.retryOnErrors).toEqual(expect.arrayContaining(['WORKER_UNAVAILABLE', 'WORKER_TIMEOUT']));
  expect(rr.circuitBreaker).toMatchObject({ enabled: true, failureThreshold: 5, successThreshold: 2, halfOpenPermits: 1 });
  expect(rr.strategy).toBe('least-outstanding');
});

test('config - a partial file changes only its keys; every other key keeps its default', () => {
  const defaults = loadConfig({ env: {} });
  const file = yamlFile('cluster:\n  requestRouting:\n    retry:\n      maxRetries: 5\n');
  const c = loadConfig({ file, env: {} });
  expect(c.cluster.requestRouting.retry.maxRetries).toBe(5);
  expect(c.cluster.requestRouting.retry.retryDelayMs).toBe(100);
  const expected = structuredClone(defaults);
  expected.cluster.requestRouting.retry.maxRetries = 5;
  expect(c).toEqual(expected);
});

test('config - an MLX_ROUTER_ variable overrides the file', () => {
  const file = yamlFile('cluster:\n  requestRouting:\n    timeoutMs: 1000\n');
  const c = loadConfig({ file, env: { MLX_ROUTER_CLUSTER_REQUEST_ROUTING_TIMEOUT_MS: '1234' } });
  expect(c.cluster.requestRouting.timeoutMs).toBe(1234);
});

test('config - list variables are comma separated', () => {
  const c = loadConfig({ env: { MLX_ROUTER_NATS_SERVERS: 'nats://a:1, nats://b:2' } });
  expect(c.nats.servers).toEqual(['nats://a:1', 'nats://b:2']);
});

test('config - CLI overrides win over the environment', () => {
  const c = loadConfig({ env: { MLX_ROUTER_CONTROLLER_PORT: '9000' }, overrides: { 'controller.port': 9100 } });
  expect(c.controller.port).toBe(9100);
});

test('config - envName turns a dotted camelCase key into MLX_ROUTER_SNAKE_CASE', () => {
  expect(envName('cluster.requestRouting.circuitBreaker.halfOpenPermits')).toBe('MLX_ROUTER_CLUSTER_REQUEST_ROUTING_CIRCUIT_BREAKER_HALF_OPEN_PERMITS');
  expect(envName('nats.servers')).toBe('MLX_ROUTER_NATS_SERVERS');
});

test('config - every key has a doc, a default and its env variable', () => {
  const keys = describeKeys();
  expect(keys.length).toBeGreaterThan(30);
  for (const k of keys) {
    expect(k.doc.length).toBeGreaterThan(5);
    expect(k.env).toBe(envName(k.key));
    expect(k.default).not.toBeUndefined();
  }
  expect(keys.map((k) => k.key)).toEqual(expect.arrayContaining(['cluster.requestRouting.retry.maxRetries', 'cluster.pipeline', 'nats.servers']));
});

test('config - an unknown key stops loading with a ConfigError naming the key', () => {
  const file = yamlFile('cluster:\n  requestRouting:\n    retry:\n      maxRetrys: 3\n');
  const err = configError(() => loadConfig({ file, env: {} }));
  expect(err.message).toContain('cluster.requestRouting.retry.maxRetrys');
});

test('config - an unknown top-level key is named too', () => {
  const err = configError(() => loadConfig({ file: yamlFile('bogus: 1\n'), env: {} }));
  expect(err.message).toContain('bogus');
});

test('config - a wrong type stops loading with a ConfigError naming the key', () => {
  const file = yamlFile('cluster:\n  requestRouting:\n    timeoutMs: soon\n');
  const err = configError(() => loadConfig({ file, env: {} }));
  expect(err.message).toContain('cluster.requestRouting.timeoutMs');
});

test('config - a wrong type in the environment names the key', () => {
  const err = configError(() => loadConfig({ env: { MLX_ROUTER_CLUSTER_REQUEST_ROUTING_RETRY_MAX_RETRIES: 'many' } }));
  expect(err.message).toContain('cluster.requestRouting.retry.maxRetries');
});

test('config - an unknown strategy names the key', () => {
  const err = configError(() => loadConfig({ file: yamlFile('cluster:\n  requestRouting:\n    strategy: fastest\n'), env: {} }));
  expect(err.message).toContain('cluster.requestRouting.strategy');
});

test.each<[string, string]>([
  ['cluster.requestRouting.circuitBreaker.halfOpenPermits', 'cluster:\n  requestRouting:\n    circuitBreaker:\n      halfOpenPermits: 0\n'],
  ['cluster.requestRouting.circuitBreaker.failureThreshold', 'cluster:\n  requestRouting:\n    circuitBreaker:\n      failureThreshold: 0\n'],
  ['cluster.requestRouting.circuitBreaker.maxTimeoutMs', 'cluster:\n  requestRouting:\n    circuitBreaker:\n      timeoutMs: 5000\n      maxTimeoutMs: 1000\n'],
  ['cluster.requestRouting.retry.maxRetryDelayMs', 'cluster:\n  requestRouting:\n    retry:\n      retryDelayMs: 500\n      maxRetryDelayMs: 100\n'],
  ['cluster.pipeline', 'cluster:\n  pipeline: []\n'],
  ['discovery.offlineAfterMs', 'worker:\n  heartbeatIntervalMs: 5000\ndiscovery:\n  offlineAfterMs: 4000\n'],
  ['worker.synthetic.failRate', 'worker:\n  synthetic:\n    failRate: 1.5\n'],
  ['cluster.requestRouting.attemptTimeoutMs', 'cluster:\n  requestRouting:\n    attemptTimeoutMs: 0\n'],
  ['cluster.requestRouting.idleTimeoutMs', 'cluster:\n  requestRouting:\n    idleTimeoutMs: 0\n'],
  ['cluster.requestRouting.retry.retryOnErrors', 'cluster:\n  requestRouting:\n    retry:\n      retryOnErrors: [WORKER_TIMOUT]\n'],
  ['cluster.streaming.maxBufferedBytes', 'cluster:\n  streaming:\n    maxBufferedBytes: 10\n'],
])('config - %s out of range is a ConfigError naming that key', (key, text) => {
  const err = configError(() => loadConfig({ file: yamlFile(text), env: {} }));
  expect(err.message).toContain(key);
});

test('config - a missing file is a ConfigError naming the file', () => {
  const missing = join(dir, 'nope.yaml');
  const err = configError(() => loadConfig({ file: missing, env: {} }));
  expect(err.message).toContain(missing);
});

test('config - a file that is not valid YAML is a ConfigError', () => {
  configError(() => loadConfig({ file: yamlFile('cluster: [unclosed\n'), env: {} }));
});
