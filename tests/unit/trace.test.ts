import { childTrace, formatTraceparent, nextTraceparent, parseTraceparent, passTracestate, randomHex } from '../../src/trace';

const VALID = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

test('trace - parses a valid version-00 traceparent', () => {
  expect(parseTraceparent(VALID)).toEqual({ traceId: '4bf92f3577b34da6a3ce929d0e0e4736', parentId: '00f067aa0ba902b7', flags: '01' });
  expect(formatTraceparent(parseTraceparent(VALID)!)).toBe(VALID);
});

test.each([
  ['absent', undefined],
  ['empty', ''],
  ['garbage', 'garbage'],
  ['upper case', VALID.toUpperCase()],
  ['version ff', VALID.replace(/^00/, 'ff')],
  ['zero trace id', `00-${'0'.repeat(32)}-00f067aa0ba902b7-01`],
  ['zero parent id', `00-4bf92f3577b34da6a3ce929d0e0e4736-${'0'.repeat(16)}-01`],
  ['version 00 with extra fields', `${VALID}-extra`],
  ['short trace id', '00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01'],
  ['a separator that is no dash', '00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01'],
  ['a character that is no hex digit', '00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01'],
  ['an upper-case hex digit', '00-4bf92f3577b34da6a3ce929d0e0e4736-00F067aa0ba902b7-01'],
  ['a flags field that is no hex', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x'],
])('trace - rejects a traceparent that is %s', (_what, value) => {
  expect(parseTraceparent(value)).toBeUndefined();
});

test('trace - a later version may carry more fields; the first four are read', () => {
  expect(parseTraceparent('01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future')?.traceId).toBe('4bf92f3577b34da6a3ce929d0e0e4736');
});

test('trace - a child keeps the trace id and flags with a new parent id; no parent starts a new trace', () => {
  const parent = parseTraceparent(VALID)!;
  const child = childTrace(parent);
  expect(child.traceId).toBe(parent.traceId);
  expect(child.flags).toBe('01');
  expect(child.parentId).toMatch(/^[0-9a-f]{16}$/);
  expect(child.parentId).not.toBe(parent.parentId);
  const a = parseTraceparent(nextTraceparent(undefined))!;
  const b = parseTraceparent(nextTraceparent('nonsense'))!;
  expect(a.traceId).not.toBe(b.traceId);
  expect(a.flags).toBe('00');
});

test('trace - tracestate passes through only as a sane header value', () => {
  expect(passTracestate('rojo=00f067aa0ba902b7,congo=t61rcWkgMzE')).toBe('rojo=00f067aa0ba902b7,congo=t61rcWkgMzE');
  expect(passTracestate('bad\nvalue')).toBeUndefined();
  expect(passTracestate('x'.repeat(600))).toBeUndefined();
  expect(passTracestate(undefined)).toBeUndefined();
});

test('trace - ids come from a pool refilled in blocks: valid, distinct, across many refills', () => {
  const seen = new Set<string>();
  // 4 KB a block: 3,000 ids of 8 bytes and 16 bytes cross the refill many times.
  for (let i = 0; i < 3000; i++) {
    const t = childTrace(undefined);
    expect(t.traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(t.parentId).toMatch(/^[0-9a-f]{16}$/);
    expect(parseTraceparent(formatTraceparent(t))).toEqual(t);
    seen.add(t.traceId).add(t.parentId);
  }
  expect(seen.size).toBe(6000);
  expect(randomHex(3)).toMatch(/^[0-9a-f]{6}$/);
});
