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
