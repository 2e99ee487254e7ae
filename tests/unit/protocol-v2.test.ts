/** Protocol v2 helpers (src/protocol-v2.ts, src/worker/request-v2.ts, src/worker/delta-relay.ts). */
import { deltaBreaksResume, mergeDelta, wireRequestFor } from '../../src/protocol-v2';
import { readWireRequestV2 } from '../../src/worker/request-v2';
import { DeltaRelay } from '../../src/worker/delta-relay';
import type { WireRequest } from '../../src/protocol';

const body = { model: 'm', messages: [{ role: 'user', content: [{ type: 'text', text: 'hi' }] }], tools: [{ type: 'function' }], session_id: 's', seed: 4 };
const request: WireRequest = { model: 'm', messages: [{ role: 'user', content: 'hi' }], stream: false, body, endpoint: 'chat.completions', needs: ['chat', 'tools'] };

test('protocol v2 - a v2 worker gets the body as sent (without session_id); a v1 worker the v1 subset only', () => {
  expect(wireRequestFor(2, request, undefined)).toEqual({ v: 2, endpoint: 'chat.completions', body: { model: 'm', messages: body.messages, tools: body.tools, seed: 4 } });
  expect(wireRequestFor(1, request, 'Hel')).toEqual({ model: 'm', messages: [{ role: 'user', content: 'hi' }], stream: false, continuation: 'Hel' });
  expect(wireRequestFor(2, request, 'Hel')).toMatchObject({ v: 2, continuation: 'Hel' });
  // The client's body itself is never changed (a copy is made only to take session_id out).
  expect(body.session_id).toBe('s');
  const plain = { model: 'm', messages: body.messages };
  expect((wireRequestFor(2, { ...request, body: plain }, undefined) as { body: unknown }).body).toEqual(plain);
});

test('protocol v2 - the worker reads a v2 request: text view beside the whole body; bad fields are named', () => {
  const read = readWireRequestV2({ v: 2, endpoint: 'chat.completions', body: { ...body, stream: true, max_completion_tokens: 9, stop: 'x' } });
  expect(read).toMatchObject({ model: 'm', messages: [{ role: 'user', content: 'hi' }], stream: true, max_tokens: 9, stop: ['x'] });
  expect(typeof read !== 'string' && read.body?.tools).toEqual(body.tools);
  expect(readWireRequestV2({ v: 2, endpoint: 'images', body })).toMatch(/endpoint/);
  expect(readWireRequestV2({ v: 2, body: { model: 'm', messages: [] } })).toMatch(/messages/);
  expect(readWireRequestV2({ v: 2, body: { ...body, n: 10_000 } })).toMatch(/n must be/);
  expect(readWireRequestV2({ v: 2, endpoint: 'completions', body: { model: 'm', prompt: ['a', 'b'] } })).toMatchObject({ messages: [{ role: 'user', content: 'a\nb' }] });
});

test('protocol v2 - deltas merge as the SDKs merge them: text appends, tool call arguments append by index', () => {
  const message: Record<string, unknown> = {};
  mergeDelta(message, { role: 'assistant', content: null, tool_calls: [{ index: 0, id: 'c1', type: 'function', function: { name: 'f', arguments: '' } }] });
  mergeDelta(message, { tool_calls: [{ index: 0, function: { arguments: '{"a":' } }] });
  mergeDelta(message, { tool_calls: [{ index: 0, function: { arguments: '1}' } }, { index: 1, id: 'c2', function: { name: 'g', arguments: '{}' } }] });
  expect(message).toEqual({
    role: 'assistant',
    content: null,
    tool_calls: [
      { index: 0, id: 'c1', type: 'function', function: { name: 'f', arguments: '{"a":1}' } },
      { index: 1, id: 'c2', function: { name: 'g', arguments: '{}' } },
    ],
  });
});

test('protocol v2 - only plain text of choice 0 can be resumed', () => {
  expect(deltaBreaksResume({ index: 0, delta: { content: 'x' }, logprobs: { content: [] } })).toBe(false);
  expect(deltaBreaksResume({ index: 0, delta: { tool_calls: [] } })).toBe(true);
  expect(deltaBreaksResume({ index: 0, delta: { refusal: 'no' } })).toBe(true);
  expect(deltaBreaksResume({ index: 1, delta: { content: 'x' } })).toBe(true);
});

test('delta relay - buffered: deltas become whole choices with their finish reasons and logprobs', () => {
  const relay = new DeltaRelay();
  relay.push({ index: 0, delta: { content: 'Hel' }, logprobs: { content: [{ token: 'Hel' }] } });
  relay.push({ index: 1, delta: { content: 'Yo' }, finish_reason: 'length' });
  relay.push({ index: 0, delta: { content: 'lo' }, logprobs: { content: [{ token: 'lo' }] }, finish_reason: 'stop' });
  expect(relay.text).toBe('Hello');
  expect(relay.choices('stop', 2)).toEqual([
    { index: 0, message: { role: 'assistant', content: 'Hello' }, logprobs: { content: [{ token: 'Hel' }, { token: 'lo' }] }, finish_reason: 'stop' },
    { index: 1, message: { role: 'assistant', content: 'Yo' }, logprobs: null, finish_reason: 'length' },
  ]);
});

test('delta relay - streamed: one turn of deltas is one chunk; plain text of a choice joins, tool fragments stay apart', async () => {
  const sent: unknown[][] = [];
  const relay = new DeltaRelay((choices) => sent.push(choices));
  relay.push({ index: 0, delta: { content: 'a' } });
  relay.push({ index: 0, delta: { content: 'b' } });
  relay.push({ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: '{' } }] } });
  relay.push({ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: '}' } }] }, finish_reason: 'tool_calls' });
  expect(sent).toHaveLength(0);
  await new Promise((r) => setImmediate(r));
  expect(sent).toEqual([
    [
      { index: 0, delta: { content: 'ab' } },
      { index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: '{' } }] } },
      { index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: '}' } }] } },
    ],
  ]);
  expect(relay.finishes('stop')).toEqual([{ index: 0, finish_reason: 'tool_calls' }]);
});
