/**
 * Scenarios 1 and 2: the transport's floor and the router over it, measured in interleaved rounds
 * (floor, router, floor, router, ...) so drifts in the machine's load hit both alike; each figure
 * is the median of its rounds. Two steps between floor and router say where the gap goes: the
 * floor behind fastify (the framework's share) and the floor answered by the real synthetic
 * worker (the worker's share); what remains is the controller's own path.
 */
import { Lab } from '../lab';
import { runLoad, type Target } from '../load';
import { phase, requireClean, type BenchRun, type Phase, type Watch } from '../measure';
import { fmt, median } from '../stats';
import { floorRequestTarget, floorTarget, floorWorkerTarget, routerTarget, verify } from './targets';

const ADDED_P50_TARGET_MS = 0.15;
const THROUGHPUT_TARGET = 0.8;

type Key = 'floorBuf' | 'fastifyBuf' | 'workerBuf' | 'routerBuf' | 'floorStream' | 'routerStream' | 'floorRequest';
/** Measured at 64 connections and at 1, in this order in every round. */
const MAIN: Key[] = ['floorBuf', 'fastifyBuf', 'workerBuf', 'routerBuf', 'floorStream', 'routerStream'];
/** Measured at 64 connections only. */
const EXTRA: Key[] = ['floorRequest'];

/** Where CPU goes per 1,000 requests, as a note under a throughput figure. */
export function cpuNote(p: Phase[], serverName: string, backendName: string): string {
  const m = (f: (x: Phase) => number | undefined): string => fmt(median(p.map((x) => f(x) ?? Number.NaN)));
  return `CPU ms per 1,000 req: ${serverName} ${m((x) => x.cpu.server)}, ${backendName} ${m((x) => x.cpu.backend)}, nats-server ${m((x) => x.cpu.nats)}, load generator ${m((x) => x.cpu.loadgen)}`;
}

export async function floorAndRouter(run: BenchRun): Promise<void> {
  const lab = await Lab.start();
  try {
    const responder = await lab.child({ role: 'responder' });
    const floor = await lab.child({ role: 'floor' });
    const fastify = await lab.child({ role: 'fastify' });
    const router = await lab.child({ role: 'router' }, 'router');
    const worker = lab.worker({ id: 'w1' });
    await lab.waitOnline(router, 1);

    const targets: Record<Key, Target> = {
      floorBuf: floorTarget(floor.url, false),
      fastifyBuf: floorTarget(fastify.url, false),
      workerBuf: floorWorkerTarget(floor.url, 'w1'),
      routerBuf: routerTarget(router.url, false),
      floorStream: floorTarget(floor.url, true),
      routerStream: routerTarget(router.url, true),
      floorRequest: floorRequestTarget(floor.url),
    };
    const kind = (k: Key): 'floor' | 'router' => (k.startsWith('router') ? 'router' : 'floor');
    for (const k of [...MAIN, ...EXTRA]) await verify(run.client, targets[k], kind(k));
    const nats = lab.nats.process;
    const watch: Record<Key, Watch> = {
      floorBuf: { server: floor, backend: [responder], nats },
      fastifyBuf: { server: fastify, backend: [responder], nats },
      workerBuf: { server: floor, backend: [worker], nats },
      routerBuf: { server: router, backend: [worker], nats },
      floorStream: { server: floor, backend: [responder], nats },
      routerStream: { server: router, backend: [worker], nats },
      floorRequest: { server: floor, backend: [responder], nats },
    };
    for (const k of [...MAIN, ...EXTRA]) requireClean(`warm-up ${k}`, await runLoad(run.client, targets[k], { concurrency: 64, durationMs: run.pick(1000, 100) }));

    const rounds = run.pick(3, 1);
    const empty = (): Record<Key, Phase[]> => ({ floorBuf: [], fastifyBuf: [], workerBuf: [], routerBuf: [], floorStream: [], routerStream: [], floorRequest: [] });
    const c64 = empty();
    const c1 = empty();
    for (let r = 1; r <= rounds; r++) {
      for (const k of [...MAIN, ...EXTRA]) {
        const p = await phase(run, targets[k], { concurrency: 64, durationMs: run.pick(3000, 100), label: `2 · round ${r}/${rounds} · ${k.padEnd(12)} · 64 conn` }, watch[k]);
        requireClean(k, p);
        c64[k].push(p);
      }
      for (const k of MAIN) {
        const p = await phase(run, targets[k], { concurrency: 1, durationMs: run.pick(2000, 80), label: `2 · round ${r}/${rounds} · ${k.padEnd(12)} · 1 conn ` }, watch[k]);
        requireClean(k, p);
        c1[k].push(p);
      }
    }
    run.raw.floorAndRouter = { c64, c1 };

    const rps = (k: Key): number => median(c64[k].map((p) => p.load.rps));
    const p50 = (k: Key): number => median(c1[k].map((p) => p.load.latency.p50));
    const p99 = (k: Key): number => median(c1[k].map((p) => p.load.latency.p99));
    const cpu = (k: Key, f: (p: Phase) => number | undefined): number => median(c64[k].map((p) => f(p) ?? Number.NaN));

    for (const [mode, k] of [['buffered', 'floorBuf'], ['streamed', 'floorStream']] as const) {
      run.add({ scenario: 1, name: `${mode}: throughput at 64 connections`, value: rps(k), unit: 'req/s', note: cpuNote(c64[k], 'floor server', 'responder') });
      run.add({ scenario: 1, name: `${mode}: latency p50 at 1 connection`, value: p50(k), unit: 'ms' });
      run.add({ scenario: 1, name: `${mode}: latency p99 at 1 connection`, value: p99(k), unit: 'ms' });
      run.add({ scenario: 1, name: `${mode}: floor server CPU per 1,000 requests`, value: cpu(k, (p) => p.cpu.server), unit: 'ms' });
    }
    run.add({
      scenario: 1,
      name: 'buffered through nc.request(): throughput at 64 connections',
      value: rps('floorRequest'),
      unit: 'req/s',
      baseline: { label: 'floor', value: rps('floorBuf') },
      note: `floor server CPU per 1,000 requests ${fmt(cpu('floorRequest', (p) => p.cpu.server))} ms: nats.js builds two Error objects per request() for their stack traces`,
    });

    for (const [mode, f, k] of [['buffered', 'floorBuf', 'routerBuf'], ['streamed', 'floorStream', 'routerStream']] as const) {
      const ratio = rps(k) / rps(f);
      run.add({
        scenario: 2,
        name: `${mode}: throughput at 64 connections`,
        value: rps(k),
        unit: 'req/s',
        baseline: { label: 'floor', value: rps(f) },
        target: `≥ ${THROUGHPUT_TARGET}× floor`,
        met: ratio >= THROUGHPUT_TARGET,
        note: cpuNote(c64[k], 'controller', 'worker'),
      });
      const added = p50(k) - p50(f);
      const split =
        mode === 'buffered'
          ? `of the added ${fmt(added)} ms: fastify ${fmt(p50('fastifyBuf') - p50(f))}, synthetic worker ${fmt(p50('workerBuf') - p50(f))}, ` +
            `the controller's own path ${fmt(added - (p50('fastifyBuf') - p50(f)) - (p50('workerBuf') - p50(f)))} ms`
          : undefined;
      run.add({
        scenario: 2,
        name: `${mode}: latency p50 at 1 connection`,
        value: p50(k),
        unit: 'ms',
        baseline: { label: 'floor', value: p50(f) },
        target: `≤ +${ADDED_P50_TARGET_MS} ms`,
        met: added <= ADDED_P50_TARGET_MS,
        note: split,
      });
      run.add({ scenario: 2, name: `${mode}: latency p99 at 1 connection`, value: p99(k), unit: 'ms', baseline: { label: 'floor', value: p99(f) } });
      run.add({
        scenario: 2,
        name: `${mode}: controller CPU per 1,000 requests`,
        value: cpu(k, (p) => p.cpu.server),
        unit: 'ms',
        baseline: { label: 'floor server', value: cpu(f, (p) => p.cpu.server) },
      });
      run.add({
        scenario: 2,
        name: `${mode}: worker CPU per 1,000 requests`,
        value: cpu(k, (p) => p.cpu.backend),
        unit: 'ms',
        baseline: { label: 'instant responder', value: cpu(f, (p) => p.cpu.backend) },
      });
    }
    // Where the buffered gap goes: one change from the floor at a time.
    run.add({ scenario: 2, name: 'gap, fastify alone (floor behind fastify): throughput at 64', value: rps('fastifyBuf'), unit: 'req/s', baseline: { label: 'floor', value: rps('floorBuf') } });
    run.add({ scenario: 2, name: 'gap, fastify alone: p50 at 1 connection', value: p50('fastifyBuf'), unit: 'ms', baseline: { label: 'floor', value: p50('floorBuf') } });
    run.add({
      scenario: 2,
      name: 'gap, fastify alone: server CPU per 1,000 requests',
      value: cpu('fastifyBuf', (p) => p.cpu.server),
      unit: 'ms',
      baseline: { label: 'floor server', value: cpu('floorBuf', (p) => p.cpu.server) },
    });
    run.add({ scenario: 2, name: 'gap, synthetic worker alone (floor → worker): throughput at 64', value: rps('workerBuf'), unit: 'req/s', baseline: { label: 'floor', value: rps('floorBuf') } });
    run.add({ scenario: 2, name: 'gap, synthetic worker alone: p50 at 1 connection', value: p50('workerBuf'), unit: 'ms', baseline: { label: 'floor', value: p50('floorBuf') } });
    run.add({
      scenario: 2,
      name: 'gap, synthetic worker alone: worker CPU per 1,000 requests',
      value: cpu('workerBuf', (p) => p.cpu.backend),
      unit: 'ms',
      baseline: { label: 'instant responder', value: cpu('floorBuf', (p) => p.cpu.backend) },
    });
  } finally {
    await lab.stop();
  }
}
