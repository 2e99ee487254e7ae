/** GET /v1/stream with protocol v2: a tool call arrives over the WebSocket delta by delta, as over SSE. */
import WebSocket from 'ws';
import { MODEL, startCluster, waitFor, type Cluster } from '../helpers/cluster';

let cluster: Cluster;
beforeAll(async () => {
  cluster = await startCluster({ workers: [{ id: 'wt1' }] });
});
afterAll(async () => cluster?.stop());

test('websocket - a tool call streams in argument fragments and ends with finish_reason tool_calls', async () => {
  const ws = new WebSocket(cluster.url.replace('http', 'ws') + '/v1/stream');
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  const messages: any[] = [];
  ws.on('message', (data) => messages.push(JSON.parse(String(data))));
  const tool = { type: 'function', function: { name: 'lookup', parameters: { type: 'object', properties: { q: { type: 'string' } }, required: ['q'] } } };
  ws.send(JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'find it' }], tools: [tool], tool_choice: 'required' }));
  await waitFor(() => messages.some((m) => m.type === 'done' || m.type === 'error'), 'done', 10_000, 5);
  ws.close();
  const calls = messages.flatMap((m) => m.choices?.[0]?.delta?.tool_calls ?? []);
  const args = calls.map((c: any) => c.function?.arguments ?? '').filter(Boolean);
  expect(args.length).toBeGreaterThanOrEqual(3);
  expect(Object.keys(JSON.parse(args.join('')))).toEqual(['q']);
  expect(calls[0]).toMatchObject({ index: 0, type: 'function', function: { name: 'lookup' } });
  const done = messages[messages.length - 1];
  expect(done).toMatchObject({ type: 'done', finish_reason: 'tool_calls' });
  expect(messages.some((m) => m.choices?.[0]?.finish_reason === 'tool_calls')).toBe(true);
});
