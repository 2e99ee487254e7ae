/**
 * GET /v1/stream: the same request JSON over a WebSocket, one message per chunk, then one done
 * or error message, with the same guarantees as SSE.
 */
import WebSocket from 'ws';
import { MODEL, startCluster, waitFor, type Cluster } from '../helpers/cluster';
import { expectedAnswer } from '../helpers/expected';

let cluster: Cluster;
beforeAll(async () => {
  cluster = await startCluster({
    workers: [
      { id: 'ws1', tokenMs: 5 },
      { id: 'ws2', tokenMs: 5 },
    ],
  });
});
afterAll(async () => cluster?.stop());

interface Session {
  ws: WebSocket;
  messages: any[];
  /** Resolves with the messages of one request, up to and including its done or error message. */
  request(body: unknown): Promise<any[]>;
  close(): Promise<void>;
}

async function connect(): Promise<Session> {
  const ws = new WebSocket(cluster.url.replace('http', 'ws') + '/v1/stream');
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  const messages: any[] = [];
  let waiter: (() => void) | undefined;
  ws.on('message', (data) => {
    messages.push(JSON.parse(String(data)));
    waiter?.();
  });
  return {
    ws,
    messages,
    async request(body) {
      const from = messages.length;
      ws.send(typeof body === 'string' ? body : JSON.stringify(body));
      await waitFor(() => messages.slice(from).some((m) => m.type === 'done' || m.type === 'error'), 'done or error', 10_000, 5);
      return messages.slice(from);
    },
    close: () =>
      new Promise((resolve) => {
        if (ws.readyState === ws.CLOSED) return resolve();
        ws.once('close', () => resolve());
        ws.close();
      }),
  };
}

function content(messages: any[]): string {
  return messages.map((m) => m.choices?.[0]?.delta?.content ?? '').join('');
}

test('websocket - a request streams chunks then one done message with usage and metadata', async () => {
  const s = await connect();
  try {
    const expected = await expectedAnswer({ content: 'over a socket', max_tokens: 20 });
    const msgs = await s.request({ model: MODEL, messages: [{ role: 'user', content: 'over a socket' }], max_tokens: 20, stream_options: { include_usage: true } });
    expect(msgs.filter((m) => m.object === 'chat.completion.chunk').length).toBeGreaterThan(1);
    expect(content(msgs)).toBe(expected.text);
    const done = msgs.at(-1);
    expect(done.type).toBe('done');
    expect(done.finish_reason).toBe('length');
    expect(done.usage).toEqual(expected.usage);
    expect(['ws1', 'ws2']).toContain(done.metadata.selectedWorker);
    // The socket serves the next request too.
    const again = await s.request({ model: MODEL, messages: [{ role: 'user', content: 'over a socket' }], max_tokens: 20 });
    expect(content(again)).toBe(expected.text);
  } finally {
    await s.close();
  }
});

test('websocket - bad JSON, a bad field and an unknown model get an error message, and the socket stays usable', async () => {
  const s = await connect();
  try {
    const [bad] = await s.request('{nope');
    expect(bad).toMatchObject({ type: 'error', status: 400, error: { router_code: 'REQUEST_VALIDATION_FAILED', param: 'body' } });
    const [field] = await s.request({ model: MODEL, messages: 'hi' });
    expect(field).toMatchObject({ type: 'error', error: { router_code: 'REQUEST_VALIDATION_FAILED', param: 'messages' } });
    const [model] = await s.request({ model: 'nope', messages: [{ role: 'user', content: 'x' }] });
    expect(model).toMatchObject({ type: 'error', status: 404, error: { router_code: 'MODEL_NOT_FOUND' } });
    const ok = await s.request({ model: MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: 3 });
    expect(ok.at(-1).type).toBe('done');
  } finally {
    await s.close();
  }
});

test('websocket - a worker killed mid-stream is resumed with identical content', async () => {
  const s = await connect();
  try {
    const expected = await expectedAnswer({ content: 'ws resume', max_tokens: 150 });
    const from = s.messages.length;
    s.ws.send(JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'ws resume' }], max_tokens: 150 }));
    await waitFor(() => s.messages.slice(from).filter((m) => m.choices?.[0]?.delta?.content).length >= 3, 'a few chunks');
    const worker = s.messages[from].routing['x-mlx-worker'];
    cluster.workers.get(worker)!.kill('SIGKILL');
    await waitFor(() => s.messages.slice(from).some((m) => m.type === 'done' || m.type === 'error'), 'the end', 10_000);
    const msgs = s.messages.slice(from);
    expect(msgs.at(-1).type).toBe('done');
    expect(content(msgs)).toBe(expected.text);
    expect(msgs.at(-1).metadata.resumes).toBe(1);
    await cluster.addWorker({ id: worker, tokenMs: 5 });
  } finally {
    await s.close();
  }
});

test('websocket - closing the socket mid-stream cancels the worker', async () => {
  const s = await connect();
  const cancels: string[] = [];
  const sub = cluster.nc.subscribe('mlx.v1.worker.*.cancel', { callback: (_e, m) => void cancels.push(m.subject) });
  await cluster.nc.flush();
  try {
    s.ws.send(JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'bye' }], max_tokens: 5000 }));
    await waitFor(() => s.messages.length >= 3, 'a few chunks');
    await s.close();
    await waitFor(() => cancels.length === 1, 'a cancel', 2000);
    await waitFor(() => cluster.controller.deps.mux.size === 0, 'no pending replies');
  } finally {
    sub.unsubscribe();
  }
});
