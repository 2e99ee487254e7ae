/**
 * Controller heartbeats, unit by unit: what a controller believes of a peer's heartbeat
 * (readControllerHeartbeat), the peer table and its expiry (ControllerPeers, on an in-memory bus),
 * the registry discounting a dead peer's in-flight, and a worker's ControllerWatch.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { ControllerPeers, readControllerHeartbeat, type Peer } from '../../src/controller/peers';
import { WorkerRegistry } from '../../src/controller/registry';
import { silentLogger } from '../../src/logger';
import { decode, encode, type ControllerHeartbeat, type Heartbeat } from '../../src/protocol';
import { ControllerWatch } from '../../src/worker/controller-watch';
import { FakeClock } from '../helpers/fake-clock';

function beat(patch: Partial<ControllerHeartbeat> = {}): ControllerHeartbeat {
  return { type: 'controller', id: 'ctl-b', reply_prefix: '_INBOX.b', interval_ms: 100, expire_ms: 1000, in_flight: {}, ...patch };
}

/** Just enough of a NatsConnection: one subject, delivered synchronously, publishes recorded. */
function bus() {
  const published: ControllerHeartbeat[] = [];
  let deliver: ((data: Uint8Array) => void) | undefined;
  const nc = {
    isClosed: () => false,
    publish: (_subject: string, data: Uint8Array) => void published.push(decode<ControllerHeartbeat>(data)!),
    subscribe: (_subject: string, opts: { callback: (err: Error | null, msg: { data: Uint8Array }) => void }) => {
      deliver = (data) => opts.callback(null, { data });
      return { unsubscribe: () => (deliver = undefined) };
    },
  } as unknown as NatsConnection;
  return { nc, published, send: (hb: unknown) => deliver?.(encode(hb)) };
}

function peersOn(clock: FakeClock, own: Record<string, number> = {}) {
  const b = bus();
  const loads: Array<Map<string, number>> = [];
  const expired: Peer[] = [];
  const peers = new ControllerPeers({
    nc: b.nc,
    subject: 'mlx.v1.controller.heartbeat',
    id: 'ctl-a',
    replyPrefix: '_INBOX.a',
    url: () => 'http://127.0.0.1:8080',
    intervalMs: 100,
    expireMs: 1000,
    clock,
    log: silentLogger(),
    ownInFlight: () => own,
    onLoad: (l) => loads.push(l),
    onExpired: (p) => expired.push(p),
  });
  return { ...b, peers, loads, expired };
}

describe('readControllerHeartbeat', () => {
  test('peers - a well-formed heartbeat of another controller is believed, zero counts left out', () => {
    expect(readControllerHeartbeat(beat({ in_flight: { w1: 2, w2: 0 } }), 'ctl-a')).toMatchObject({ id: 'ctl-b', in_flight: { w1: 2 } });
  });

  test.each<[string, unknown]>([
    ['its own', beat({ id: 'ctl-a' })],
    ['not a controller heartbeat', { ...beat(), type: 'heartbeat' }],
    ['a bad id', beat({ id: 'a b' })],
    ['a bad reply prefix', beat({ reply_prefix: 'x y' })],
    ['no expiry', beat({ expire_ms: 0 })],
    ['in_flight not an object', beat({ in_flight: [] as unknown as Record<string, number> })],
    ['a negative count', beat({ in_flight: { w1: -1 } })],
    ['a bad worker id', beat({ in_flight: { 'w 1': 1 } })],
    ['garbage', 'nonsense'],
  ])('peers - %s is not believed', (_what, hb) => {
    expect(readControllerHeartbeat(hb as ControllerHeartbeat, 'ctl-a')).toBeUndefined();
  });
});

describe('ControllerPeers', () => {
  test('peers - announces itself with its own in-flight, and a bye when it stops', () => {
    const clock = new FakeClock();
    const { peers, published } = peersOn(clock, { w1: 2 });
    peers.start();
    peers.stop();
    expect(published).toEqual([
      { type: 'controller', id: 'ctl-a', reply_prefix: '_INBOX.a', interval_ms: 100, expire_ms: 1000, in_flight: { w1: 2 }, url: 'http://127.0.0.1:8080' },
      { type: 'controller', id: 'ctl-a', reply_prefix: '_INBOX.a', interval_ms: 100, expire_ms: 1000, in_flight: {}, url: 'http://127.0.0.1:8080', bye: true },
    ]);
  });

  test('peers - a peer counts until it is silent for its expiry, then it is reported gone with what it held', async () => {
    const clock = new FakeClock();
    const { peers, send, loads, expired } = peersOn(clock);
    peers.start();
    send(beat({ in_flight: { w1: 3 } }));
    send(beat({ id: 'ctl-c', reply_prefix: '_INBOX.c', in_flight: { w1: 1 } }));
    expect(loads.at(-1)).toEqual(new Map([['w1', 4]]));
    expect(peers.list().map((p) => [p.id, p.inFlight])).toEqual([['ctl-b', 3], ['ctl-c', 1]]);
    await clock.advance(600);
    send(beat({ id: 'ctl-c', reply_prefix: '_INBOX.c', in_flight: { w1: 1 } }));
    await clock.advance(399);
    peers.sweep();
    expect(expired).toEqual([]);
    await clock.advance(1);
    peers.sweep();
    expect(expired.map((p) => [p.id, p.inFlight])).toEqual([['ctl-b', { w1: 3 }]]);
    // The live load no longer has b's share.
    expect(loads.at(-1)).toEqual(new Map([['w1', 1]]));
    expect(peers.list().map((p) => p.id)).toEqual(['ctl-c']);
    peers.stop(false);
  });

  test('peers - a bye forgets the peer at once without calling it dead; silence while our own link is down proves nothing', async () => {
    const clock = new FakeClock();
    const { peers, send, expired } = peersOn(clock);
    peers.start();
    send(beat({ in_flight: { w1: 1 } }));
    send(beat({ bye: true }));
    expect(peers.list()).toEqual([]);
    send(beat());
    peers.setTransport(false);
    await clock.advance(5000);
    peers.sweep();
    expect(peers.list().map((p) => p.id)).toEqual(['ctl-b']);
    peers.setTransport(true);
    await clock.advance(999);
    peers.sweep();
    expect(expired).toEqual([]);
    peers.stop(false);
  });

  test('peers - a forged heartbeat under a peer\'s id cannot shorten its expiry', async () => {
    const clock = new FakeClock();
    const { peers, send, expired } = peersOn(clock);
    peers.start();
    send(beat({ expire_ms: 1000 }));
    send(beat({ expire_ms: 1 }));
    await clock.advance(500);
    peers.sweep();
    expect(expired).toEqual([]);
    peers.stop(false);
  });
});

describe('WorkerRegistry and a dead peer\'s in-flight', () => {
  const hb = (in_flight: number): Heartbeat => ({ type: 'heartbeat', version: 1, id: 'w1', models: ['m'], engine: 'synthetic', max_concurrent: 8, in_flight, state: 'ready', interval_ms: 100 });

  test('registry - what a dead peer held stops counting at once, and the discount shrinks as the worker finishes it', () => {
    const registry = new WorkerRegistry({ clock: new FakeClock(), offlineAfterMs: 1000, log: silentLogger() });
    registry.onHeartbeat(hb(5));
    registry.setPeerLoad(new Map([['w1', 2]]));
    expect(registry.get('w1')!.foreignInFlight).toBe(5);
    // The peer holding 3 died; the live one still holds 2.
    registry.orphaned({ w1: 3 });
    expect(registry.get('w1')!.foreignInFlight).toBe(2);
    registry.onHeartbeat(hb(5));
    expect(registry.get('w1')!.foreignInFlight).toBe(2);
    // The worker ends (or cancels) two of the orphans.
    registry.onHeartbeat(hb(3));
    expect(registry.get('w1')!.foreignInFlight).toBe(2);
    // Later the live peer takes more: the one orphan left cannot hide that load.
    registry.onHeartbeat(hb(1));
    registry.setPeerLoad(new Map([['w1', 4]]));
    registry.onHeartbeat(hb(4));
    expect(registry.get('w1')!.foreignInFlight).toBe(4);
  });

  test('registry - without peers\' heartbeats nothing changes: the worker\'s report beyond our own is foreign', () => {
    const registry = new WorkerRegistry({ clock: new FakeClock(), offlineAfterMs: 1000, log: silentLogger() });
    registry.onHeartbeat(hb(3));
    expect(registry.get('w1')!.foreignInFlight).toBe(3);
    registry.orphaned({ unknown: 2 });
    expect(registry.get('w1')!.foreignInFlight).toBe(3);
  });
});

describe('ControllerWatch (worker side)', () => {
  test('peers - an attempt is orphaned once its controller is silent for its expiry; unknown controllers never', async () => {
    const clock = new FakeClock();
    const watch = new ControllerWatch(clock);
    watch.onHeartbeat(beat());
    expect(watch.goneFor('_INBOX.b.7')).toBeUndefined();
    await clock.advance(999);
    expect(watch.goneFor('_INBOX.b.7')).toBeUndefined();
    await clock.advance(1);
    expect(watch.goneFor('_INBOX.b.7')).toBe('ctl-b');
    expect(watch.goneFor('_INBOX.zz.7')).toBeUndefined();
    expect(watch.goneFor('no-dot')).toBeUndefined();
  });

  test('peers - a worker whose own link was down gives every controller a fresh start; a bye forgets', async () => {
    const clock = new FakeClock();
    const watch = new ControllerWatch(clock);
    watch.onHeartbeat(beat());
    watch.setLink(false);
    await clock.advance(5000);
    expect(watch.goneFor('_INBOX.b.1')).toBeUndefined();
    watch.setLink(true);
    expect(watch.goneFor('_INBOX.b.1')).toBeUndefined();
    watch.onHeartbeat(beat({ bye: true }));
    await clock.advance(5000);
    expect(watch.goneFor('_INBOX.b.1')).toBeUndefined();
    expect(watch.size).toBe(0);
  });

  test('peers - a forged heartbeat cannot make a worker cancel sooner than the real expiry (at least 250 ms)', async () => {
    const clock = new FakeClock();
    const watch = new ControllerWatch(clock);
    watch.onHeartbeat(beat({ expire_ms: 1000 }));
    watch.onHeartbeat(beat({ expire_ms: 1 }));
    await clock.advance(999);
    expect(watch.goneFor('_INBOX.b.1')).toBeUndefined();
    const fresh = new ControllerWatch(clock);
    fresh.onHeartbeat(beat({ reply_prefix: '_INBOX.q', expire_ms: 1 }));
    await clock.advance(249);
    expect(fresh.goneFor('_INBOX.q.1')).toBeUndefined();
  });
});
