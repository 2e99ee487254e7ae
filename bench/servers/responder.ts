/**
 * The floor's instant responder: the replies a synthetic worker would send, encoded once, sent at
 * once. `hold` sends only the first chunk of a stream and then nothing.
 */
import { connect } from '@nats-io/transport-node';
import { cannedReplies, FLOOR_SUBJECT } from '../payload';
import type { Running } from './running';

export async function startResponder(natsUrl: string): Promise<Running> {
  const nc = await connect({ servers: natsUrl });
  const canned = await cannedReplies();
  nc.subscribe(FLOOR_SUBJECT.buffered, {
    callback: (err, msg) => {
      if (!err) msg.respond(canned.result);
    },
  });
  nc.subscribe(FLOOR_SUBJECT.stream, {
    callback: (err, msg) => {
      if (err || !msg.reply) return;
      for (const m of canned.stream) nc.publish(msg.reply, m.data, { headers: m.headers });
    },
  });
  nc.subscribe(FLOOR_SUBJECT.hold, {
    callback: (err, msg) => {
      if (!err && msg.reply) nc.publish(msg.reply, canned.stream[0].data, { headers: canned.stream[0].headers });
    },
  });
  await nc.flush();
  return { stop: () => nc.close() };
}
