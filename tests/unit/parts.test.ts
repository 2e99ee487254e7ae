/** PartJoiner (src/parts.ts): numbered parts join in order; anything else is refused, never thrown. */
import { PartJoiner, readPart } from '../../src/parts';
import { headers } from '@nats-io/transport-node';

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);
const text = (b: Uint8Array | undefined | Error): string => (b instanceof Uint8Array ? new TextDecoder().decode(b) : String(b));

test('parts - three parts in order join into the whole message; the joiner is then empty', () => {
  const j = new PartJoiner(1024);
  expect(j.add(bytes('{"a":'), { index: 1, count: 3 })).toBeUndefined();
  expect(j.add(bytes('"hello'), { index: 2, count: 3 })).toBeUndefined();
  expect(j.pending).toBe(true);
  expect(text(j.add(bytes('"}'), { index: 3, count: 3 }))).toBe('{"a":"hello"}');
  expect(j.pending).toBe(false);
});

test('parts - a part out of order, a changed count, a malformed number or too many bytes is an Error', () => {
  const j = new PartJoiner(8);
  expect(j.add(bytes('x'), { index: 2, count: 3 })).toBeInstanceOf(Error);
  j.add(bytes('x'), { index: 1, count: 3 });
  expect(j.add(bytes('x'), { index: 2, count: 4 })).toBeInstanceOf(Error);
  expect(j.add(bytes('x'), { index: 0, count: 0 })).toBeInstanceOf(Error);
  j.add(bytes('12345'), { index: 1, count: 2 });
  expect(text(j.add(bytes('6789'), { index: 2, count: 2 }))).toMatch(/over 8 bytes/);
});

test('parts - the Mlx-Part header reads as index/count; absent means a whole message', () => {
  const h = headers();
  h.set('Mlx-Part', '2/5');
  expect(readPart(h)).toEqual({ index: 2, count: 5 });
  expect(readPart(headers())).toBeUndefined();
  h.set('Mlx-Part', 'two of five');
  expect(readPart(h)).toEqual({ index: 0, count: 0 });
});
