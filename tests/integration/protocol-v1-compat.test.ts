/**
 * v1 workers in a v2 cluster: a worker that heartbeats `version: 1` keeps getting v1 requests
 * (the validated subset, text content), is never sent what v1 cannot carry (tools, parts), and
 * its answers reach the client as before.
 */
import type { Msg } from '@nats-io/transport-node';
import { decode } from '../../src/protocol';
import { chat, MODEL, startCluster, STEADY, waitFor, type Cluster } from '../helpers/cluster';
import { startFakeWorker, type FakeWorker } from '../helpers/fake-worker';

let cluster: Cluster;
let v1: FakeWorker;
const received: Array<Record<string, unknown>> = [];

beforeAll(async () => {
  cluster = await startCluster({ config: STEADY });
  v1 = startFakeWorker(cluster.nc, 'old1', [MODEL], (reply, msg: Msg) => {
    received.push(decode<Record<string, unknown>>(msg.data) ?? {});
    reply({ type: 'result', text: 'old answer', finish_reason: 'stop', usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 } });
  });
  await waitFor(() => cluster.controller.deps.registry.online().some((w) => w.id === 'old1'), 'v1 worker online');
});

afterAll(async () => {
  v1?.stop();
  await cluster?.stop();
});

test('v1 compat - a v1 worker gets the v1 subset (text content, no body) and its answer reaches the client', async () => {
  const res = await chat(cluster.url, {
    body: { messages: [{ role: 'user', content: [{ type: 'text', text: 'Hi ' }, { type: 'text', text: 'there' }] }], seed: 3, user: 'u' },
  });
  expect(res.status).toBe(200);
  expect(res.json.choices[0].message.content).toBe('old answer');
  expect(received.at(-1)).toEqual({ model: MODEL, messages: [{ role: 'user', content: 'Hi there' }], stream: false, max_tokens: 16 });
});

test('v1 compat - a request that needs tools is a 400 naming the capability, never sent to the v1 worker', async () => {
  const before = received.length;
  const res = await chat(cluster.url, { body: { tools: [{ type: 'function', function: { name: 'f' } }], tool_choice: 'required' } });
  expect(res.status).toBe(400);
  expect(res.json.error.message).toContain("'tools'");
  expect(received.length).toBe(before);
});

test('v1 compat - a body larger than one NATS message is a 413 for a v1 worker (no parts)', async () => {
  const res = await chat(cluster.url, { content: 'x'.repeat(2 * 1024 * 1024) });
  expect(res.status).toBe(413);
  expect(res.json.error.router_code).toBe('REQUEST_TOO_LARGE');
});
