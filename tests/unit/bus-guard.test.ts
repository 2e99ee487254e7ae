/** BusGuard: shape and limits of heartbeats and byes, the worker instance rule, reply tokens. */
import { headers, type Msg } from '@nats-io/transport-node';
import { Registry } from 'prom-client';
import { BusGuard, replyProblem } from '../../src/controller/bus-guard';
import { WorkerRegistry } from '../../src/controller/registry';
import { silentLogger } from '../../src/logger';
import { encode, HDR_INSTANCE, HDR_TOKEN, type Heartbeat } from '../../src/protocol';
import { FakeClock } from '../helpers/fake-clock';

const M = 'model-one';

function hb(id: string, instance: string, patch: Partial<Heartbeat> = {}): Uint8Array {
  return encode({ type: 'heartbeat', version: 1, id, instance, models: [M], engine: 'synthetic', max_concurrent: 4, in_flight: 0, state: 'ready', interval_ms: 100, ...patch });
}

function setup(limits: { maxWorkers?: number; maxModels?: number } = {}) {
  const clock = new FakeClock();
  const registry = new WorkerRegistry({ clock, offlineAfterMs: 1000, log: silentLogger() });
  const register = new Registry();
  const guard = new BusGuard({ registry, log: silentLogger(), clock, register, subjectPrefix: 'mlx.v1', maxWorkers: limits.maxWorkers ?? 10, maxModels: limits.maxModels ?? 4 });
  const count = async (subject: string, reason: string): Promise<number> => {
    const m = await register.getSingleMetric('mlx_router_bus_dropped_total')!.get();
    return m.values.find((v) => v.labels.subject === subject && v.labels.reason === reason)?.value ?? 0;
  };
  return { clock, registry, guard, count };
}

test('bus guard - a second instance for a live id is dropped; the live one keeps its state', async () => {
  const { registry, guard, count } = setup();
  guard.heartbeat(hb('w1', 'instance-aaaa'));
  guard.heartbeat(hb('w1', 'instance-bbbb', { state: 'draining', models: [] }));
  expect(registry.get('w1')).toMatchObject({ instance: 'instance-aaaa', state: 'ready', models: [M] });
  expect(await count('heartbeat', 'duplicate-id')).toBe(1);
});

test('bus guard - once the known instance is offline (silence or its own bye), a new instance takes the id', async () => {
  const { clock, registry, guard, count } = setup();
  guard.heartbeat(hb('w1', 'instance-aaaa'));
  await clock.advance(1000);
  guard.heartbeat(hb('w1', 'instance-bbbb'));
  expect(registry.get('w1')?.instance).toBe('instance-bbbb');
  guard.bye(encode({ type: 'bye', id: 'w1', instance: 'instance-aaaa' }));
  expect(registry.isOnline(registry.get('w1')!)).toBe(true);
  expect(await count('bye', 'wrong-instance')).toBe(1);
  guard.bye(encode({ type: 'bye', id: 'w1', instance: 'instance-bbbb' }));
  expect(registry.isOnline(registry.get('w1')!)).toBe(false);
  guard.heartbeat(hb('w1', 'instance-cccc'));
  expect(registry.get('w1')?.instance).toBe('instance-cccc');
});

test('bus guard - limits: new ids beyond maxWorkers and heartbeats beyond maxModels are dropped', async () => {
  const { registry, guard, count } = setup({ maxWorkers: 2, maxModels: 2 });
  for (let i = 0; i < 5; i++) guard.heartbeat(hb(`w${i}`, `instance-${i}xxxxx`));
  expect(registry.size).toBe(2);
  expect(await count('heartbeat', 'registry-full')).toBe(3);
  // Known ids keep beating when the registry is full.
  guard.heartbeat(hb('w0', 'instance-0xxxxx', { in_flight: 3 }));
  expect(registry.get('w0')?.reportedInFlight).toBe(3);
  guard.heartbeat(hb('w1', 'instance-1xxxxx', { models: ['a', 'b', 'c'] }));
  expect(await count('heartbeat', 'too-many-models')).toBe(1);
  expect(registry.get('w1')?.models).toEqual([M]);
});

test('bus guard - malformed heartbeats and byes are dropped and counted, never thrown', async () => {
  const { registry, guard, count } = setup();
  const bad = [new Uint8Array([0xff, 0x00]), encode(null), encode([1]), encode({ type: 'heartbeat', id: 'w1' }), hb('w 1', 'instance-aaaa'), hb('w1', 'short'),
    hb('w1', 'instance-aaaa', { models: [1 as unknown as string] }), hb('w1', 'instance-aaaa', { state: 'bogus' as 'ready' }), hb('w1', 'instance-aaaa', { max_concurrent: -1 })];
  for (const b of bad) expect(() => guard.heartbeat(b)).not.toThrow();
  expect(registry.size).toBe(0);
  expect(await count('heartbeat', 'malformed')).toBe(bad.length);
  for (const b of [encode({ type: 'bye' }), encode({ type: 'bye', id: 'w1' }), new Uint8Array([0x7b])]) guard.bye(b);
  expect(await count('bye', 'malformed')).toBe(3);
  guard.bye(encode({ type: 'bye', id: 'nobody', instance: 'instance-aaaa' }));
  expect(await count('bye', 'unknown-worker')).toBe(1);
});

test('bus guard - a reply is believed only with the attempt token and the live instance', () => {
  const msg = (token?: string, instance?: string): Msg => {
    const h = headers();
    if (token !== undefined) h.set(HDR_TOKEN, token);
    if (instance !== undefined) h.set(HDR_INSTANCE, instance);
    return { headers: token === undefined && instance === undefined ? undefined : h } as Msg;
  };
  expect(replyProblem(msg('t1', 'i1'), 't1', 'i1')).toBeUndefined();
  expect(replyProblem(msg(), 't1', 'i1')).toBe('bad-token');
  expect(replyProblem(msg('t2', 'i1'), 't1', 'i1')).toBe('bad-token');
  expect(replyProblem(msg('t1', 'i2'), 't1', 'i1')).toBe('wrong-instance');
  expect(replyProblem(msg('t1'), 't1', 'i1')).toBe('wrong-instance');
});
