/** WorkerRegistry: online-ness on the controller's clock, no-responders marking, model filter, peak-EWMA. */
import { WorkerRegistry } from '../../src/controller/registry';
import { silentLogger } from '../../src/logger';
import type { Heartbeat } from '../../src/protocol';
import { FakeClock } from '../helpers/fake-clock';

const M1 = 'model-one';
const M2 = 'model-two';

function hb(id: string, patch: Partial<Heartbeat> = {}): Heartbeat {
  return { type: 'heartbeat', version: 1, id, models: [M1], engine: 'synthetic', max_concurrent: 4, in_flight: 0, state: 'ready', interval_ms: 1000, ...patch };
}

function setup(offlineAfterMs = 3000, latencyDecayMs = 10_000) {
  const clock = new FakeClock();
  return { clock, registry: new WorkerRegistry({ clock, offlineAfterMs, log: silentLogger(), latencyDecayMs }) };
}

const ids = (ws: Array<{ id: string }>) => ws.map((w) => w.id).sort();

test('registry - a heartbeat registers the worker with what it reports', () => {
  const { registry } = setup();
  registry.onHeartbeat(hb('w1', { models: [M1, M2], max_concurrent: 6, in_flight: 2, engine: 'mlx' }));
  expect(registry.get('w1')).toMatchObject({ id: 'w1', models: [M1, M2], maxConcurrent: 6, reportedInFlight: 2, engine: 'mlx', state: 'ready', outstanding: 0, gone: false });
  expect(ids(registry.online())).toEqual(['w1']);
});

test('registry - a worker goes offline after offlineAfterMs of silence on the controller clock', async () => {
  const { clock, registry } = setup(3000);
  registry.onHeartbeat(hb('w1'));
  await clock.advance(2999);
  expect(ids(registry.forModel(M1))).toEqual(['w1']);
  await clock.advance(1);
  expect(registry.forModel(M1)).toEqual([]);
  expect(registry.online()).toEqual([]);
  registry.onHeartbeat(hb('w1'));
  expect(ids(registry.forModel(M1))).toEqual(['w1']);
});

test('registry - heartbeats keep a worker online indefinitely', async () => {
  const { clock, registry } = setup(3000);
  for (let i = 0; i < 10; i++) {
    registry.onHeartbeat(hb('w1'));
    await clock.advance(2000);
  }
  expect(ids(registry.online())).toEqual(['w1']);
});

test('registry - markOffline takes a worker out at once, until its next heartbeat', async () => {
  const { clock, registry } = setup(3000);
  registry.onHeartbeat(hb('w1'));
  registry.onHeartbeat(hb('w2'));
  registry.markOffline('w1', 'no responders');
  expect(ids(registry.forModel(M1))).toEqual(['w2']);
  await clock.advance(100);
  expect(ids(registry.forModel(M1))).toEqual(['w2']);
  registry.onHeartbeat(hb('w1'));
  expect(ids(registry.forModel(M1))).toEqual(['w1', 'w2']);
});

test('registry - a bye takes the worker offline at once', () => {
  const { registry } = setup();
  registry.onHeartbeat(hb('w1'));
  registry.onBye('w1');
  expect(registry.online()).toEqual([]);
});

test('registry - markOffline of an unknown worker is harmless', () => {
  const { registry } = setup();
  expect(() => registry.markOffline('ghost', 'no responders')).not.toThrow();
  expect(registry.get('ghost')).toBeUndefined();
});

test('registry - forModel filters by model, draining and offline', async () => {
  const { clock, registry } = setup(3000);
  registry.onHeartbeat(hb('stale'));
  await clock.advance(3000);
  registry.onHeartbeat(hb('ready1'));
  registry.onHeartbeat(hb('other', { models: [M2] }));
  registry.onHeartbeat(hb('both', { models: [M1, M2] }));
  registry.onHeartbeat(hb('draining', { state: 'draining' }));
  registry.onHeartbeat(hb('gone'));
  registry.markOffline('gone', 'no responders');
  expect(ids(registry.forModel(M1))).toEqual(['both', 'ready1']);
  expect(ids(registry.forModel(M2))).toEqual(['both', 'other']);
  expect(registry.forModel('missing')).toEqual([]);
  // Draining workers are online (they finish their work), just not offered new requests.
  expect(ids(registry.online())).toEqual(['both', 'draining', 'other', 'ready1']);
});

test('registry - models() is the sorted union of online workers models', async () => {
  const { clock, registry } = setup(3000);
  registry.onHeartbeat(hb('old', { models: ['zeta'] }));
  await clock.advance(3000);
  registry.onHeartbeat(hb('w1', { models: [M2, M1] }));
  registry.onHeartbeat(hb('w2', { models: [M1] }));
  expect(registry.models()).toEqual([M1, M2]);
});

test('registry - knowsModel is true for a model any known worker advertised, even offline', async () => {
  const { clock, registry } = setup(3000);
  registry.onHeartbeat(hb('w1', { models: [M2] }));
  await clock.advance(5000);
  expect(registry.forModel(M2)).toEqual([]);
  expect(registry.knowsModel(M2)).toBe(true);
  expect(registry.knowsModel('never-seen')).toBe(false);
});

test('registry - malformed heartbeats are ignored', () => {
  const { registry } = setup();
  registry.onHeartbeat(hb('bad id with spaces'));
  registry.onHeartbeat(hb('x'.repeat(65)));
  registry.onHeartbeat({ ...hb('w1'), models: 'not-a-list' } as unknown as Heartbeat);
  registry.onHeartbeat(null as unknown as Heartbeat);
  expect(registry.online()).toEqual([]);
});

test('registry - a bad max_concurrent becomes 1 and a bad in_flight 0', () => {
  const { registry } = setup();
  registry.onHeartbeat(hb('w1', { max_concurrent: -3, in_flight: Number.NaN }));
  expect(registry.get('w1')).toMatchObject({ maxConcurrent: 1, reportedInFlight: 0 });
});

test('registry - the in-flight count of other controllers is the reported count less our own', () => {
  const { registry } = setup();
  registry.onHeartbeat(hb('w1', { in_flight: 0 }));
  const w = registry.get('w1')!;
  registry.begin(w);
  registry.begin(w);
  registry.onHeartbeat(hb('w1', { in_flight: 5 }));
  expect(w.foreignInFlight).toBe(3);
  // A heartbeat older than our latest requests never makes the count negative.
  registry.begin(w);
  registry.onHeartbeat(hb('w1', { in_flight: 1 }));
  expect(w.foreignInFlight).toBe(0);
});

test('registry - begin and end count outstanding requests, never below zero', () => {
  const { registry } = setup();
  registry.onHeartbeat(hb('w1'));
  const w = registry.get('w1')!;
  registry.begin(w);
  registry.begin(w);
  expect(w.outstanding).toBe(2);
  registry.end(w);
  registry.end(w);
  registry.end(w);
  expect(w.outstanding).toBe(0);
});

test('registry - peak-EWMA: the first sample and any slower sample take over at once', async () => {
  const { clock, registry } = setup();
  registry.onHeartbeat(hb('w1'));
  const w = registry.get('w1')!;
  registry.observeLatency(w, 100);
  expect(w.latencyMs).toBe(100);
  await clock.advance(50_000);
  registry.observeLatency(w, 400);
  expect(w.latencyMs).toBe(400);
});

test('registry - peak-EWMA: faster samples decay in with exp(-dt / decay)', async () => {
  const { clock, registry } = setup(3000, 10_000);
  registry.onHeartbeat(hb('w1'));
  const w = registry.get('w1')!;
  registry.observeLatency(w, 400);
  // Right after a slow sample, a fast one barely moves it.
  registry.observeLatency(w, 100);
  expect(w.latencyMs).toBe(400);
  await clock.advance(10_000);
  registry.observeLatency(w, 100);
  const weight = Math.exp(-1);
  expect(w.latencyMs).toBeCloseTo(400 * weight + 100 * (1 - weight), 9);
  await clock.advance(1_000_000);
  registry.observeLatency(w, 100);
  expect(w.latencyMs).toBeCloseTo(100, 6);
});

test('registry - end with a latency feeds the peak-EWMA', () => {
  const { registry } = setup();
  registry.onHeartbeat(hb('w1'));
  const w = registry.get('w1')!;
  registry.begin(w);
  registry.end(w, 250);
  expect(w.latencyMs).toBe(250);
  registry.begin(w);
  registry.end(w);
  expect(w.latencyMs).toBe(250);
});

test('registry - sweep forgets workers silent for ten times the offline limit, with nothing outstanding', async () => {
  const { clock, registry } = setup(1000);
  registry.onHeartbeat(hb('w1'));
  registry.onHeartbeat(hb('busy'));
  registry.begin(registry.get('busy')!);
  await clock.advance(10_001);
  registry.sweep();
  expect(registry.get('w1')).toBeUndefined();
  expect(registry.get('busy')).toBeDefined();
  expect(registry.knowsModel(M1)).toBe(true);
});

test('registry - forgetting a worker tells its owner, so per-worker state (breakers) goes too', async () => {
  const clock = new FakeClock();
  const forgotten: string[] = [];
  const registry = new WorkerRegistry({ clock, offlineAfterMs: 1000, log: silentLogger(), onForget: (id) => forgotten.push(id) });
  registry.onHeartbeat(hb('old'));
  await clock.advance(5000);
  registry.sweep();
  expect(forgotten).toEqual([]);
  await clock.advance(5001);
  registry.sweep();
  expect(forgotten).toEqual(['old']);
});

test('registry - a worker that goes offline ends the attempts watching it; a NATS loss ends them all', () => {
  const { registry } = setup(1000);
  registry.onHeartbeat(hb('w1'));
  registry.onHeartbeat(hb('w2'));
  const seen: string[] = [];
  const stop1 = registry.watch(registry.get('w1')!, (reason, source) => seen.push(`w1 ${source} ${reason}`));
  registry.watch(registry.get('w2')!, (_reason, source) => seen.push(`w2 ${source}`));
  registry.onBye('w1');
  expect(seen).toEqual(['w1 worker bye']);
  stop1();
  registry.interruptAll('NATS connection lost');
  expect(seen).toEqual(['w1 worker bye', 'w2 transport']);
});

test('registry - prompt_cache (size, epoch) is read from heartbeats; a malformed one reads as absent', () => {
  const { registry } = setup();
  registry.onHeartbeat(hb('w1', { prompt_cache: { size: 10, epoch: 'e1' } }));
  expect(registry.get('w1')?.promptCache).toEqual({ size: 10, epoch: 'e1' });
  registry.onHeartbeat(hb('w1', { prompt_cache: { size: -1, epoch: 'e2' } }));
  expect(registry.get('w1')?.promptCache).toBeUndefined();
  registry.onHeartbeat(hb('w1', { prompt_cache: 'big' as never }));
  expect(registry.get('w1')?.promptCache).toBeUndefined();
  registry.onHeartbeat(hb('w2', { prompt_cache: { size: 4, epoch: 7 as never } }));
  expect(registry.get('w2')?.promptCache).toBeUndefined();
  expect(registry.get('w2')?.state).toBe('ready');
});
