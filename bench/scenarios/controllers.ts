/**
 * Scenario 9: several controllers. Throughput with one controller and with two behind a simple
 * client-side spread (half the connections each), both in front of the same three workers, in the
 * same run; and session stickiness across the two: the share of a session's turns, sent to the
 * controllers in turn, that reach the worker its first turn reached (target 100 %).
 */
import { Lab, type ChildHandle, type Proc } from '../lab';
import { runLoad, type LoadResult } from '../load';
import { requireClean, type BenchRun } from '../measure';
import { median } from '../stats';
import { routerTarget, verify } from './targets';

/** Load through every router at once, the connections split evenly; answered requests per second together. */
async function spread(run: BenchRun, routers: ChildHandle[], concurrency: number, durationMs: number, label: string): Promise<number> {
  const results: LoadResult[] = await Promise.all(
    routers.map((r, i) => runLoad(run.client, routerTarget(r.url, false), { concurrency: concurrency / routers.length, durationMs, label: i === 0 ? label : undefined })),
  );
  for (const r of results) requireClean(label, r);
  return results.reduce((sum, r) => sum + r.requests, 0) / (Math.max(...results.map((r) => r.elapsedMs)) / 1000);
}

export async function severalControllers(run: BenchRun): Promise<void> {
  const lab = await Lab.start();
  try {
    const workers: Proc[] = ['w1', 'w2', 'w3'].map((id) => lab.worker({ id }));
    const one = await lab.child({ role: 'router' }, 'router 1');
    const two = await lab.child({ role: 'router' }, 'router 2');
    for (const r of [one, two]) {
      await lab.waitOnline(r, workers.length);
      await verify(run.client, routerTarget(r.url, false), 'router');
    }
    requireClean('warm-up', await runLoad(run.client, routerTarget(one.url, false), { concurrency: 64, durationMs: run.pick(1000, 100) }));
    requireClean('warm-up', await runLoad(run.client, routerTarget(two.url, false), { concurrency: 64, durationMs: run.pick(1000, 100) }));
    const rounds = run.pick(3, 1);
    const single: number[] = [];
    const double: number[] = [];
    for (let r = 1; r <= rounds; r++) {
      single.push(await spread(run, [one], 64, run.pick(2500, 120), `8 · round ${r}/${rounds} · one controller `));
      double.push(await spread(run, [one, two], 64, run.pick(2500, 120), `8 · round ${r}/${rounds} · two controllers`));
    }
    run.add({
      scenario: 8,
      name: 'two controllers: throughput at 64 connections (client-side spread)',
      value: median(double),
      unit: 'req/s',
      baseline: { label: 'one controller', value: median(single) },
      note: 'same machine: the two controllers share its cores with the workers and nats-server',
    });

    // Stickiness: every session at once, its turns sent alternately to the two controllers.
    const sessions = run.pick(48, 8);
    const turns = run.pick(10, 4);
    let same = 0;
    let total = 0;
    await Promise.all(
      Array.from({ length: sessions }, async (_, s) => {
        let first: string | undefined;
        for (let t = 0; t < turns; t++) {
          const target = routerTarget([one, two][(s + t) % 2].url, false, { 'x-session-id': `bench-session-${s}` });
          const a = await run.client.send(target);
          if (a.status !== 200) throw new Error(`session turn: HTTP ${a.status}: ${a.body.slice(0, 200)}`);
          const worker = String(a.headers['x-mlx-worker']);
          first ??= worker;
          total++;
          if (worker === first) same++;
        }
      }),
    );
    const share = (100 * same) / total;
    run.add({
      scenario: 8,
      name: `session stickiness across two controllers (${sessions} sessions × ${turns} turns)`,
      value: share,
      unit: '%',
      target: '100 %',
      met: share === 100,
    });
    run.raw.controllers = { single, double, stickiness: { same, total } };
  } finally {
    await lab.stop();
  }
}
