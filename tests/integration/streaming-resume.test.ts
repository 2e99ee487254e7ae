/**
 * Streams that never lie: a worker SIGKILLed mid-stream is resumed on another worker
 * with byte-identical output; without resume the stream ends in an error event, never `[DONE]`.
 */
import { startNatsServer, type NatsServerHandle } from '../../src/nats-server';
import { startCluster, waitFor, type Cluster } from '../helpers/cluster';
import { expectedAnswer } from '../helpers/expected';
import { openStream, summarize } from '../helpers/stream';

const TOKENS = 120;

describe('stream resume on', () => {
  let cluster: Cluster;
  beforeAll(async () => {
    cluster = await startCluster({
      workers: [
        { id: 'r1', tokenMs: 10 },
        { id: 'r2', tokenMs: 10 },
      ],
    });
  });
  afterAll(async () => cluster?.stop());

  test('streaming - SIGKILL mid-stream resumes on the other worker with byte-identical content and usage', async () => {
    const expected = await expectedAnswer({ content: 'resume me', max_tokens: TOKENS });
    const stream = await openStream(cluster.url, { content: 'resume me', maxTokens: TOKENS, body: { stream_options: { include_usage: true } } });
    expect(stream.status).toBe(200);
    const first = stream.headers.get('x-mlx-worker')!;
    expect(['r1', 'r2']).toContain(first);
    // Let a few chunks through, then kill the worker that is answering.
    await stream.readUntil((t) => (t.match(/"content":"/g) ?? []).length >= 4);
    cluster.workers.get(first)!.kill('SIGKILL');
    const s = summarize(await stream.readAll());
    expect(s.errors).toEqual([]);
    expect(s.done).toBe(true);
    expect(s.content).toBe(expected.text);
    expect(s.finishReason).toBe('length');
    expect(s.usage).toEqual(expected.usage);
    expect(s.metadata.resumes).toBe(1);
    expect(s.metadata.selectedWorker).not.toBe(first);
    expect(s.metadata.attempts.map((a: any) => a.outcome)).toEqual(['committed', 'success']);
  });
});

describe('stream resume off', () => {
  let cluster: Cluster;
  beforeAll(async () => {
    cluster = await startCluster({
      workers: [
        { id: 'n1', tokenMs: 10 },
        { id: 'n2', tokenMs: 10 },
      ],
      config: { 'cluster.streaming.resume': false },
    });
  });
  afterAll(async () => cluster?.stop());

  test('streaming - SIGKILL mid-stream without resume ends with an error event and no [DONE]', async () => {
    const stream = await openStream(cluster.url, { content: 'break me', maxTokens: TOKENS });
    const first = stream.headers.get('x-mlx-worker')!;
    await stream.readUntil((t) => (t.match(/"content":"/g) ?? []).length >= 4);
    const killedAt = performance.now();
    cluster.workers.get(first)!.kill('SIGKILL');
    const s = summarize(await stream.readAll());
    const elapsed = performance.now() - killedAt;
    expect(s.done).toBe(false);
    expect(s.finishReason).toBeNull();
    expect(s.errors).toHaveLength(1);
    expect(s.errors[0].router_code).toBe('STREAM_INTERRUPTED');
    expect(s.errors[0].message).toMatch(/went offline/);
    // Detected by heartbeat silence (offlineAfterMs 600, swept every 150 ms), not by a 30 s idle
    // limit; the bound leaves room for a loaded machine.
    expect(elapsed).toBeLessThan(10_000);
    await waitFor(() => cluster.controller.deps.mux.size === 0, 'no pending replies');
  });
});

describe('NATS restart mid-stream', () => {
  let cluster: Cluster;
  let replacement: NatsServerHandle | undefined;
  beforeAll(async () => {
    cluster = await startCluster({
      workers: [
        { id: 'x1', tokenMs: 10 },
        { id: 'x2', tokenMs: 10 },
      ],
    });
  });
  afterAll(async () => {
    await cluster?.stop();
    await replacement?.stop();
  });

  test('streaming - a NATS server restart mid-stream is resumed once the cluster reconnects, with identical content', async () => {
    const expected = await expectedAnswer({ content: 'survive a restart', max_tokens: 200 });
    const stream = await openStream(cluster.url, { content: 'survive a restart', maxTokens: 200 });
    await stream.readUntil((t) => (t.match(/"content":"/g) ?? []).length >= 4);
    await cluster.nats.stop();
    replacement = await startNatsServer({ port: cluster.nats.port });
    const s = summarize(await stream.readAll());
    expect(s.errors).toEqual([]);
    expect(s.done).toBe(true);
    expect(s.content).toBe(expected.text);
    expect(s.metadata.resumes).toBeGreaterThanOrEqual(1);
    // After the commit point every break is STREAM_INTERRUPTED (its cause is in the log), then resumed.
    expect(s.metadata.attempts[0]).toMatchObject({ outcome: 'committed', code: 'STREAM_INTERRUPTED' });
    expect(s.metadata.attempts.at(-1)).toMatchObject({ outcome: 'success' });
  });
});
