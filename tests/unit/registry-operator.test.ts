/** WorkerRegistry, the operator's side: status callbacks for the event bus, drained models, host and pid. */
import { WorkerRegistry, type StatusListener } from '../../src/controller/registry';
import { silentLogger } from '../../src/logger';
import type { Heartbeat } from '../../src/protocol';
import { FakeClock } from '../helpers/fake-clock';

const M1 = 'model-one';
const M2 = 'model-two';

function hb(id: string, patch: Partial<Heartbeat> = {}): Heartbeat {
  return { type: 'heartbeat', version: 1, id, models: [M1, M2], engine: 'synthetic', max_concurrent: 4, in_flight: 0, state: 'ready', interval_ms: 1000, ...patch };
}

function setup() {
  const clock = new FakeClock();
  const seen: string[] = [];
  const onStatus: StatusListener = (id, change) => seen.push('state' in change ? `${id} ${change.state}` : `${id} ${change.online ? 'up' : `down (${change.reason})`}`);
  return { clock, seen, registry: new WorkerRegistry({ clock, offlineAfterMs: 1000, log: silentLogger(), onStatus }) };
}

test('registry - tells the status listener when a worker comes, changes state, and goes', async () => {
  const { clock, seen, registry } = setup();
  registry.onHeartbeat(hb('w1'));
  registry.onHeartbeat(hb('w1'));
  registry.onHeartbeat(hb('w1', { state: 'draining' }));
  registry.onHeartbeat(hb('w1', { state: 'draining' }));
  registry.markOffline('w1', 'no responders');
  registry.onHeartbeat(hb('w1', { state: 'ready' }));
  await clock.advance(1000);
  registry.sweep();
  expect(seen).toEqual(['w1 up', 'w1 draining', 'w1 down (no responders)', 'w1 ready', 'w1 up', 'w1 down (heartbeats stopped)']);
});

test('registry - a model out of rotation on a worker is skipped for that model only', () => {
  const { registry } = setup();
  registry.onHeartbeat(hb('w1', { draining_models: [M1], host: 'mac-1', pid: 42 }));
  registry.onHeartbeat(hb('w2'));
  expect(registry.forModel(M1).map((w) => w.id)).toEqual(['w2']);
  expect(registry.forModel(M2).map((w) => w.id).sort()).toEqual(['w1', 'w2']);
  expect(registry.get('w1')).toMatchObject({ host: 'mac-1', pid: 42, drainingModels: [M1] });
  // Garbage from the bus is read as nothing.
  registry.onHeartbeat(hb('w1', { draining_models: 'all' as unknown as string[], host: 7 as unknown as string, pid: 'x' as unknown as number }));
  expect(registry.get('w1')).toMatchObject({ host: '', pid: 0, drainingModels: [] });
  expect(registry.forModel(M1).map((w) => w.id).sort()).toEqual(['w1', 'w2']);
});

test('registry - an admin answer applies at once and reports the change', () => {
  const { seen, registry } = setup();
  registry.onHeartbeat(hb('w1'));
  registry.applyState('w1', 'draining', []);
  expect(registry.forModel(M1)).toEqual([]);
  // The heartbeat that follows says the same: no second report.
  registry.onHeartbeat(hb('w1', { state: 'draining' }));
  registry.applyState('nobody', 'draining', []);
  expect(seen).toEqual(['w1 up', 'w1 draining']);
  expect(registry.all().map((w) => w.id)).toEqual(['w1']);
});
