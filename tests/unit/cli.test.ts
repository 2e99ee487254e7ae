/** The CLI's argument handling: bad flags and unknown commands exit 2 with a message naming them. */
import { main, numberFlag, UsageError } from '../../src/cli';

let stderr: jest.SpyInstance;
let stdout: jest.SpyInstance;

beforeEach(() => {
  stderr = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
  stdout = jest.spyOn(process.stdout, 'write').mockImplementation(() => true);
});

afterEach(() => {
  jest.restoreAllMocks();
});

const written = (spy: jest.SpyInstance): string => spy.mock.calls.map((c) => String(c[0])).join('');

test('cli - an unknown flag exits 2 naming the flag', async () => {
  expect(await main(['worker', '--bogus'])).toBe(2);
  expect(written(stderr)).toContain('--bogus');
});

test('cli - a bad number flag exits 2 naming the flag before anything starts', async () => {
  expect(await main(['worker', '--max-concurrent', 'lots'])).toBe(2);
  expect(written(stderr)).toContain('--max-concurrent');
  expect(written(stderr)).toContain("'lots'");
});

test('cli - an unexpected positional argument exits 2 naming it', async () => {
  expect(await main(['controller', 'extra'])).toBe(2);
  expect(written(stderr)).toContain("'extra'");
});

test('cli - an unknown command exits 2 naming it and printing the usage', async () => {
  expect(await main(['launch'])).toBe(2);
  expect(written(stderr)).toContain("unknown command 'launch'");
  expect(written(stderr)).toContain('Usage:');
});

test('cli - no command prints the usage and exits 2; help exits 0', async () => {
  expect(await main([])).toBe(2);
  expect(written(stdout)).toContain('Usage:');
  expect(await main(['--help'])).toBe(0);
  expect(await main(['worker', '--help'])).toBe(0);
});

describe('numberFlag', () => {
  test('cli - numberFlag parses a valid value and leaves an absent flag undefined', () => {
    expect(numberFlag({ port: '8080' }, 'port')).toBe(8080);
    expect(numberFlag({ 'fail-rate': '0.25' }, 'fail-rate', { max: 1, integer: false })).toBe(0.25);
    expect(numberFlag({}, 'port')).toBeUndefined();
  });

  test.each<[string, string, { min?: number; max?: number; integer?: boolean }]>([
    ['abc', 'workers', {}],
    ['', 'workers', {}],
    ['1.5', 'workers', {}],
    ['-1', 'workers', {}],
    ['0', 'max-concurrent', { min: 1 }],
    ['1.01', 'fail-rate', { max: 1, integer: false }],
    ['Infinity', 'port', {}],
  ])('cli - numberFlag rejects %p for --%s with a UsageError naming the flag', (raw, name, opts) => {
    let err: unknown;
    try {
      numberFlag({ [name]: raw }, name, opts);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UsageError);
    expect((err as Error).message).toContain(`--${name}`);
    expect((err as Error).message).toContain(`'${raw}'`);
  });

  test('cli - numberFlag rejects a flag given as a boolean', () => {
    expect(() => numberFlag({ workers: true }, 'workers')).toThrow('--workers');
  });
});

test('cli - config masks the keys the schema marks sensitive, and only those', async () => {
  const env = {
    MLX_ROUTER_NATS_PASS: 'hunter2',
    MLX_ROUTER_NATS_TOKEN: 's3cret-token',
    MLX_ROUTER_WORKER_OPENAI_API_KEY: 'sk-live',
    MLX_ROUTER_WORKER_SYNTHETIC_TOKEN_MS: '7',
  };
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    expect(await main(['config'])).toBe(0);
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
  const out = written(stdout);
  const line = (key: string): string => out.split('\n').find((l) => l.startsWith(`${key} = `)) ?? `(no line for ${key})`;
  for (const key of ['nats.pass', 'nats.token', 'worker.openai.apiKey']) expect(line(key)).toMatch(new RegExp(`^${key.replace(/\./g, '\\.')} = "\\*\\*\\*"`));
  expect(out).not.toMatch(/hunter2|s3cret-token|sk-live/);
  // Sensitive but empty: shown as empty, not as a secret.
  expect(line('cluster.auth.keys')).toMatch(/^cluster\.auth\.keys = \[\] /);
  expect(line('cluster.admin.key')).toMatch(/^cluster\.admin\.key = "" /);
  // Ordinary values whose names merely contain "token" print as they are.
  expect(line('worker.synthetic.tokenMs')).toMatch(/^worker\.synthetic\.tokenMs = 7 /);
  expect(line('cluster.requestRouting.retry.budget.maxTokens')).toMatch(/^cluster\.requestRouting\.retry\.budget\.maxTokens = 100 /);
  expect(line('cluster.requestRouting.retry.budget.tokenRatio')).toMatch(/^cluster\.requestRouting\.retry\.budget\.tokenRatio = 0\.1 /);
});
