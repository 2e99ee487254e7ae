/**
 * A protocol-v1 worker scripted by the test, inside the test process: it heartbeats like a real
 * one and answers each request with whatever `script` publishes, so wire faults (sequence gaps,
 * duplicates, missing final messages) can be injected exactly.
 */
import { randomUUID } from 'node:crypto';
import { headers, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import { encode, HDR_INSTANCE, HDR_SEQ, HDR_TOKEN, makeSubjects, type Heartbeat, type WireReply } from '../../src/protocol';

export interface FakeWorker {
  stop(): void;
}

export type Reply = (body: WireReply, seq?: number) => void;

export function startFakeWorker(nc: NatsConnection, id: string, models: string[], script: (reply: Reply, msg: Msg) => void): FakeWorker {
  const subjects = makeSubjects();
  const instance = randomUUID();
  const hb: Heartbeat = {
    type: 'heartbeat', version: 1, id, models, engine: 'fake', max_concurrent: 8, in_flight: 0, state: 'ready', interval_ms: 100, instance,
  };
  const beat = (): void => nc.publish(subjects.heartbeat, encode(hb));
  const subs: Subscription[] = [
    nc.subscribe(subjects.infer(id), {
      callback: (_err, msg) => {
        const reply: Reply = (body, seq) => {
          // Like a real worker: the attempt's token and this instance on every message.
          const h = headers();
          h.set(HDR_TOKEN, msg.headers?.get(HDR_TOKEN) ?? '');
          h.set(HDR_INSTANCE, instance);
          if (seq !== undefined) h.set(HDR_SEQ, String(seq));
          nc.publish(msg.reply!, encode(body), { headers: h });
        };
        script(reply, msg);
      },
    }),
    nc.subscribe(subjects.discover, { callback: () => beat() }),
    // Every worker listens on its control (cancel) subject; liveness probes rely on it.
    nc.subscribe(subjects.cancel(id), { callback: () => undefined }),
  ];
  beat();
  const timer = setInterval(beat, 100);
  return {
    stop() {
      clearInterval(timer);
      for (const s of subs) s.unsubscribe();
    },
  };
}
