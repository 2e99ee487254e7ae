/**
 * The SSE sink on a real HTTP server, on whatever Node runs the tests (CI runs 20, 22 and 24):
 * chunks batched in one event-loop turn and the end written in the same turn must all arrive, in
 * order, before the body ends. Node 22 wrote the chunked terminator ahead of corked chunks.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { RouterError } from '../../src/errors';
import { SseSink } from '../../src/controller/sse';

async function serve(handler: (res: http.ServerResponse) => void): Promise<{ body: string; status: number }> {
  const server = http.createServer((_req, res) => handler(res));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const { port } = server.address() as AddressInfo;
    const res = await fetch(`http://127.0.0.1:${port}/`);
    return { body: await res.text(), status: res.status };
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

function sink(res: http.ServerResponse): SseSink {
  return new SseSink({ res, completionId: 'chatcmpl-1', model: 'm', created: 1, maxBufferedBytes: 1 << 20, headers: () => ({}) });
}

describe('SseSink on a real socket', () => {
  test('sse - chunks written in the same turn as finish all arrive before [DONE]', async () => {
    const { body } = await serve((res) => {
      const s = sink(res);
      s.write('Hello');
      setTimeout(() => {
        s.write(' wor');
        s.write('ld');
        s.finish('stop', { prompt_tokens: 1, completion_tokens: 3, total_tokens: 4 }, true, { requestId: 'r' });
      }, 5);
    });
    const events = body.split('\n\n').filter(Boolean);
    const contents = events
      .filter((e) => e.startsWith('data: {'))
      .map((e) => JSON.parse(e.slice(6)) as { choices: { delta?: { content?: string }; finish_reason: string | null }[] })
      .flatMap((c) => c.choices);
    expect(contents.map((c) => c.delta?.content ?? '').join('')).toBe('Hello world');
    expect(contents.at(-1)?.finish_reason).toBe('stop');
    expect(body).toContain('"usage":{"prompt_tokens":1');
    expect(events.at(-1)).toBe('data: [DONE]');
  });

  test('sse - an error after commit arrives after the chunks of its turn, with no [DONE]', async () => {
    const { body, status } = await serve((res) => {
      const s = sink(res);
      s.write('partial');
      s.write(' answer');
      s.fail(new RouterError('STREAM_INTERRUPTED', 'worker went away'), {});
    });
    expect(status).toBe(200);
    expect(body).toContain('"content":" answer"');
    expect(body.trimEnd().endsWith('}')).toBe(true);
    expect(body).toContain('event: error\ndata: {"error"');
    expect(body.indexOf('" answer"')).toBeLessThan(body.indexOf('event: error'));
    expect(body).not.toContain('[DONE]');
  });
});

test('sse - the text kept for resume is bounded: past maxKeptChars the stream is no longer resumable', async () => {
  await serve((res) => {
    const s = new SseSink({ res, completionId: 'c', model: 'm', created: 1, maxBufferedBytes: 1 << 20, headers: () => ({}), keepText: true, maxKeptChars: 10 });
    s.write('12345');
    expect(s.tooLongToResume).toBe(false);
    expect(s.streamed).toBe('12345');
    s.write('678901');
    expect(s.tooLongToResume).toBe(true);
    expect(s.streamed).toBe('');
    s.write('more');
    expect(s.streamed).toBe('');
    s.finish('stop', undefined, false, {});
  });
});
