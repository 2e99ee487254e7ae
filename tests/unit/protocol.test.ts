/** Wire protocol v1: JSON bodies, request headers, subjects, the no-responders status. */
import { headers as natsHeaders } from '@nats-io/transport-node';
import {
  decode,
  encode,
  HDR_ATTEMPT,
  HDR_DEADLINE_MS,
  HDR_REQUEST_ID,
  HDR_STREAM,
  isNoResponders,
  makeSubjects,
  readRequestHeaders,
  HDR_PROGRESS,
  requestHeaders,
  WORKER_ID_PATTERN,
  type WireError,
  type WireRequest,
  type WireResult,
} from '../../src/protocol';

test('protocol - encode/decode round trips a request and a result', () => {
  const req: WireRequest = { model: 'm', messages: [{ role: 'user', content: 'héllo ✓ 🚀' }], max_tokens: 5, stop: ['\n'], temperature: 0.5, stream: true };
  expect(decode<WireRequest>(encode(req))).toEqual(req);
  const res: WireResult = { type: 'result', text: 'hi', finish_reason: 'length', usage: { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 } };
  expect(decode<WireResult>(encode(res))).toEqual(res);
});

test('protocol - encode writes UTF-8 JSON', () => {
  const err: WireError = { type: 'error', code: 'WORKER_ERROR', outcome: 'worker_failure', message: 'x' };
  expect(new TextDecoder().decode(encode(err))).toBe(JSON.stringify(err));
});

test.each<[string, Uint8Array]>([
  ['invalid JSON', new TextEncoder().encode('{"type": "result",')],
  ['empty bytes', new Uint8Array(0)],
  ['binary garbage', new Uint8Array([0xff, 0xfe, 0x00, 0x7b])],
])('protocol - decode of %s returns undefined instead of throwing', (_name, data) => {
  expect(decode(data)).toBeUndefined();
});

test('protocol - request headers round trip', () => {
  const h = requestHeaders({ requestId: 'req-1', attempt: 3, deadlineMs: 1234.9, stream: true, token: 'tok-1' });
  expect(h.get(HDR_REQUEST_ID)).toBe('req-1');
  expect(h.get(HDR_STREAM)).toBe('1');
  expect(readRequestHeaders(h)).toEqual({ requestId: 'req-1', attempt: 3, deadlineMs: 1234, stream: true, token: 'tok-1', progress: false });
});

test('protocol - a buffered request carries no stream header and a passed deadline is sent as 0', () => {
  const h = requestHeaders({ requestId: 'req-2', attempt: 1, deadlineMs: -50, stream: false });
  expect(h.has(HDR_STREAM)).toBe(false);
  expect(readRequestHeaders(h)).toEqual({ requestId: 'req-2', attempt: 1, deadlineMs: 0, stream: false, progress: false });
});

test('protocol - progress is asked for on buffered requests only (protocol 1.1)', () => {
  const buffered = requestHeaders({ requestId: 'r', attempt: 1, deadlineMs: 100, stream: false, progress: true });
  expect(buffered.get(HDR_PROGRESS)).toBe('1');
  expect(readRequestHeaders(buffered).progress).toBe(true);
  const streamed = requestHeaders({ requestId: 'r', attempt: 1, deadlineMs: 100, stream: true, progress: true });
  expect(streamed.has(HDR_PROGRESS)).toBe(false);
  expect(readRequestHeaders(streamed).progress).toBe(false);
});

test('protocol - no headers at all read as attempt 1 with no deadline', () => {
  expect(readRequestHeaders(undefined)).toEqual({ requestId: 'unknown', attempt: 1, deadlineMs: Number.POSITIVE_INFINITY, stream: false, progress: false });
});

test('protocol - headers missing attempt and deadline read as attempt 1 with no deadline (as docs/protocol.md says)', () => {
  const h = natsHeaders();
  h.set(HDR_REQUEST_ID, 'req-3');
  expect(readRequestHeaders(h)).toEqual({ requestId: 'req-3', attempt: 1, deadlineMs: Number.POSITIVE_INFINITY, stream: false, progress: false });
});

test('protocol - non-numeric attempt and deadline are read leniently', () => {
  const h = natsHeaders();
  h.set(HDR_ATTEMPT, 'two');
  h.set(HDR_DEADLINE_MS, 'soon');
  expect(readRequestHeaders(h)).toMatchObject({ attempt: 1, deadlineMs: Number.POSITIVE_INFINITY });
});

test('protocol - isNoResponders: an empty body with status 503', () => {
  expect(isNoResponders({ data: new Uint8Array(0), headers: natsHeaders(503, 'No Responders') })).toBe(true);
});

test('protocol - isNoResponders is false for a real answer, another status, or no headers', () => {
  expect(isNoResponders({ data: encode({ type: 'result' }), headers: natsHeaders(503, 'No Responders') })).toBe(false);
  expect(isNoResponders({ data: new Uint8Array(0), headers: natsHeaders(408, 'Request Timeout') })).toBe(false);
  expect(isNoResponders({ data: new Uint8Array(0) })).toBe(false);
});

test('protocol - subjects live under the prefix, one token per worker', () => {
  const s = makeSubjects('mlx.v1');
  expect(s.infer('w-1')).toBe('mlx.v1.worker.w-1.infer');
  expect(s.cancel('w-1')).toBe('mlx.v1.worker.w-1.cancel');
  expect([s.heartbeat, s.bye, s.discover]).toEqual(['mlx.v1.heartbeat', 'mlx.v1.bye', 'mlx.v1.discover']);
  expect(makeSubjects('acme.mlx.v1').heartbeat).toBe('acme.mlx.v1.heartbeat');
});

test('protocol - worker ids are restricted to one safe subject token', () => {
  for (const ok of ['w1', 'gpu_node-07', 'A'.repeat(64)]) expect(WORKER_ID_PATTERN.test(ok)).toBe(true);
  for (const bad of ['', 'a.b', 'a b', 'w*', 'w>', 'A'.repeat(65)]) expect(WORKER_ID_PATTERN.test(bad)).toBe(false);
});
