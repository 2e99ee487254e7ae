/**
 * The floor's buffered path behind fastify, configured as the controller configures it (silent
 * pino logger, no request logging, any content type parsed as JSON), JSON in and JSON out: the
 * framework's share of the router's cost, with no chain and no validation.
 */
import { connect } from '@nats-io/transport-node';
import Fastify, { LogController, type FastifyBaseLogger } from 'fastify';
import { silentLogger } from '../../src/logger';
import { decode, encode } from '../../src/protocol';
import { FLOOR_SUBJECT } from '../payload';
import { sharedInbox, type Running } from './running';

export async function startFastifyFloor(natsUrl: string): Promise<Running> {
  const nc = await connect({ servers: natsUrl });
  const inbox = sharedInbox(nc);
  const app = Fastify({
    loggerInstance: silentLogger() as unknown as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    forceCloseConnections: 'idle',
    return503OnClosing: true,
  });
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'string' }, (_req, body, done) => {
    try {
      done(null, JSON.parse(body as string));
    } catch (err) {
      done(err as Error);
    }
  });
  app.post('/buffered', (req, reply) =>
    new Promise((resolve) => {
      const subject = inbox.open((msg) => {
        inbox.forget(subject);
        resolve(reply.send(decode(msg.data)));
      });
      nc.publish(FLOOR_SUBJECT.buffered, encode(req.body), { reply: subject });
    }),
  );
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  return {
    url,
    stats: () => ({ pendingReplies: inbox.size }),
    async stop() {
      await app.close();
      inbox.close();
      await nc.close();
    },
  };
}
