/**
 * The floor: a bare node:http server that forwards the body as one NATS request (a publish with a
 * reply subject on the shared inbox) and writes back what comes. No validation, no chain.
 *  - `/buffered`, `/stream`: the floor itself, answered by the instant responder;
 *  - `/request`: the same through nats.js's nc.request(), whose own cost is reported beside it;
 *  - `/hold`: only the first chunk, then the stream stays open (the in-flight memory baseline);
 *  - `/worker/<id>`: the body (a valid wire request) to a real worker: the worker's share.
 */
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { connect, type MsgHdrs } from '@nats-io/transport-node';
import { makeSubjects, requestHeaders } from '../../src/protocol';
import { cannedReplies, FLOOR_SUBJECT } from '../payload';
import { sharedInbox, type Running } from './running';

const JSON_HEAD = { 'content-type': 'application/json' };
const SSE_HEAD = { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' };
const DATA = Buffer.from('data: ');
const BLANK = Buffer.from('\n\n');

export async function startFloor(natsUrl: string): Promise<Running> {
  const nc = await connect({ servers: natsUrl });
  const inbox = sharedInbox(nc);
  const messages = (await cannedReplies()).stream.length;
  const subjects = makeSubjects();
  let n = 0;

  const buffered = (body: Buffer, res: ServerResponse, subject = FLOOR_SUBJECT.buffered, headers?: MsgHdrs): void => {
    const reply = inbox.open((msg) => {
      inbox.forget(reply);
      res.writeHead(200, { ...JSON_HEAD, 'content-length': msg.data.length });
      res.end(msg.data);
    });
    nc.publish(subject, body, { reply, headers });
  };
  const toWorker = (worker: string, body: Buffer, res: ServerResponse): void =>
    buffered(body, res, subjects.infer(worker), requestHeaders({ requestId: `floor-${n++}`, attempt: 1, deadlineMs: 30_000, stream: false }));
  const request = (body: Buffer, res: ServerResponse): void => {
    nc.request(FLOOR_SUBJECT.buffered, body, { timeout: 10_000 }).then(
      (msg) => {
        res.writeHead(200, { ...JSON_HEAD, 'content-length': msg.data.length });
        res.end(msg.data);
      },
      () => {
        res.writeHead(502);
        res.end();
      },
    );
  };
  const streamed = (body: Buffer, res: ServerResponse, hold = false): void => {
    let got = 0;
    const reply = inbox.open((msg) => {
      if (got++ === 0) res.writeHead(200, SSE_HEAD);
      res.write(Buffer.concat([DATA, msg.data, BLANK]));
      if (got === messages) {
        inbox.forget(reply);
        res.end('data: [DONE]\n\n');
      }
    });
    // A held stream never ends by itself: forget it when the client goes.
    if (hold) res.on('close', () => inbox.forget(reply));
    nc.publish(hold ? FLOOR_SUBJECT.hold : FLOOR_SUBJECT.stream, body, { reply });
  };

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      if (req.url === '/stream') streamed(body, res);
      else if (req.url === '/hold') streamed(body, res, true);
      else if (req.url === '/request') request(body, res);
      else if (req.url?.startsWith('/worker/')) toWorker(req.url.slice('/worker/'.length), body, res);
      else buffered(body, res);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    stats: () => ({ pendingReplies: inbox.size }),
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      inbox.close();
      await nc.close();
    },
  };
}
