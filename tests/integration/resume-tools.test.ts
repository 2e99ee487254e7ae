/**
 * Stream resume meets tool calls (docs/streaming.md): a stream that breaks after a tool call
 * began reaching the client is never resumed (no engine can continue it exactly); it ends with an
 * error event (plain text resumes: tests/integration/streaming-resume.test.ts).
 */
import { chatStream, startCluster, type Cluster } from '../helpers/cluster';

let cluster: Cluster;

beforeAll(async () => {
  // Slow deltas, so the test can kill the worker between two argument fragments.
  cluster = await startCluster({ workers: [{ id: 'w1', tokenMs: 150 }, { id: 'w2', tokenMs: 150 }] });
});

afterAll(async () => {
  await cluster?.stop();
});

const tool = { type: 'function', function: { name: 'lookup', parameters: { type: 'object', properties: { query: { type: 'string' }, limit: { type: 'integer' } } } } };

test('resume - a stream broken inside a tool call ends with an error event, never resumed', async () => {
  let killed = false;
  const res = await chatStream(
    cluster.url,
    { body: { tools: [tool], tool_choice: 'required' } },
    (event) => {
      if (killed || event.data === '[DONE]' || event.event !== 'message') return;
      const chunk = JSON.parse(event.data) as { choices?: Array<{ delta?: { tool_calls?: Array<{ function?: { arguments?: string } }> } }> };
      if (chunk.choices?.[0]?.delta?.tool_calls?.[0]?.function?.arguments) {
        const serving = cluster.controller.deps.registry.online().find((w) => w.outstanding > 0);
        if (serving) cluster.workers.get(serving.id)?.kill('SIGKILL');
        killed = serving !== undefined;
      }
    },
  );
  expect(killed).toBe(true);
  expect(res.status).toBe(200);
  const last = res.events[res.events.length - 1];
  expect(last.event).toBe('error');
  const error = JSON.parse(last.data).error;
  expect(error.router_code).toBe('STREAM_INTERRUPTED');
  // One attempt only: no resume was tried although w2 can continue text.
  expect(error.attempts).toHaveLength(1);
  expect(res.events.some((e) => e.data === '[DONE]')).toBe(false);
});
