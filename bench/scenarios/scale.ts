/**
 * Scenario 6: throughput with 1, 2, 4 and 8 worker processes (least-outstanding spreads the load),
 * each step measured right after a floor round, and the controller's CPU time per 1,000 requests
 * (its own process.cpuUsage) against the floor server's.
 */
import { Lab, type Proc } from '../lab';
import { runLoad } from '../load';
import { phase, requireClean, type BenchRun, type Phase } from '../measure';
import { fmt, median } from '../stats';
import { floorTarget, routerTarget, verify } from './targets';

export async function scale(run: BenchRun): Promise<void> {
  const lab = await Lab.start();
  try {
    const responder = await lab.child({ role: 'responder' });
    const floor = await lab.child({ role: 'floor' });
    const router = await lab.child({ role: 'router' });
    const workers: Proc[] = [];
    const floorT = floorTarget(floor.url, false);
    const routerT = routerTarget(router.url, false);
    await verify(run.client, floorT, 'floor');
    requireClean('warm-up floor', await runLoad(run.client, floorT, { concurrency: 64, durationMs: run.pick(1000, 100) }));
    const rounds = run.pick(2, 1);
    const raw: Record<number, { floor: Phase[]; router: Phase[] }> = {};
    for (const n of [1, 2, 4, 8]) {
      while (workers.length < n) workers.push(lab.worker({ id: `w${workers.length + 1}` }));
      await lab.waitOnline(router, n);
      if (n === 1) {
        await verify(run.client, routerT, 'router');
        requireClean('warm-up router', await runLoad(run.client, routerT, { concurrency: 64, durationMs: run.pick(1000, 100) }));
      }
      const step = { floor: [] as Phase[], router: [] as Phase[] };
      for (let r = 1; r <= rounds; r++) {
        step.floor.push(await phase(run, floorT, { concurrency: 64, durationMs: run.pick(2500, 120), label: `6 · ${n} worker${n > 1 ? 's' : ' '} · round ${r}/${rounds} · floor ` }, { server: floor, backend: [responder], nats: lab.nats.process }));
        step.router.push(await phase(run, routerT, { concurrency: 64, durationMs: run.pick(2500, 120), label: `6 · ${n} worker${n > 1 ? 's' : ' '} · round ${r}/${rounds} · router` }, { server: router, backend: workers, nats: lab.nats.process }));
        requireClean('floor', step.floor[r - 1]);
        requireClean(`router with ${n} workers`, step.router[r - 1]);
      }
      raw[n] = step;
      const m = (p: Phase[], f: (x: Phase) => number | undefined): number => median(p.map((x) => f(x) ?? Number.NaN));
      const workersCpu = m(step.router, (x) => x.cpu.backend);
      run.add({
        scenario: 6,
        name: `${n} worker${n > 1 ? 's' : ''}: throughput at 64 connections`,
        value: m(step.router, (x) => x.load.rps),
        unit: 'req/s',
        baseline: { label: 'floor', value: m(step.floor, (x) => x.load.rps) },
        note: `all ${n} worker processes together: ${fmt(workersCpu)} ms CPU per 1,000 requests`,
      });
      run.add({
        scenario: 6,
        name: `${n} worker${n > 1 ? 's' : ''}: controller CPU per 1,000 requests`,
        value: m(step.router, (x) => x.cpu.server),
        unit: 'ms',
        baseline: { label: 'floor server', value: m(step.floor, (x) => x.cpu.server) },
      });
    }
    run.raw.scale = raw;
  } finally {
    await lab.stop();
  }
}
