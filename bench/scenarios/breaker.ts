/**
 * Scenario 5: what deciding "may this worker get traffic?" costs, per worker per request, with 1,
 * 10 and 100 candidates: the breaker middleware (BreakerBook.allows over every candidate) over a
 * pass-through middleware on the same context, and BreakerBook.allows alone.
 */
import type { RouteContext } from '../../src/context';
import { breaker } from '../../middleware';
import type { BenchRun } from '../measure';
import { costOver, microWorld, nsPerCall, passThrough, resolvedNext } from '../micro';
import { progress } from '../progress';

const TARGET_NS = 1000;

export async function breakerDecision(run: BenchRun): Promise<void> {
  const iterations = run.pick(2_000, 500);
  const rounds = run.pick(60, 12);
  const bar = progress('5 · breaker decision');
  const raw: Record<string, unknown> = {};
  const counts = [1, 10, 100];
  for (const [i, n] of counts.entries()) {
    bar.update(i / counts.length, `${n} workers`);
    const world = microWorld(n);
    const book = world.deps.breakers;
    // Every worker has a recorded (closed) state, as after real traffic; one in ten is open.
    for (const [j, w] of world.workers.entries()) {
      book.failure(w.id);
      book.success(w.id);
      if (n >= 10 && j % 10 === 9) for (let k = 0; k < 10; k++) book.failure(w.id);
    }
    const mw = breaker({ enabled: true }, { breakers: book });
    const ctx = world.ctx();
    const reset = (): RouteContext => {
      ctx.candidates = world.workers;
      return ctx;
    };
    const r = await costOver(iterations, rounds, () => passThrough(reset(), resolvedNext), () => mw(reset(), resolvedNext));
    const perWorker = r.costNs / n;
    raw[`${n}`] = { requestNs: r.costNs, perWorkerNs: perWorker };
    run.add({
      scenario: 5,
      name: `${n} worker${n > 1 ? 's' : ''}: breaker middleware per worker per request`,
      value: perWorker,
      unit: 'ns',
      target: `< ${TARGET_NS} ns`,
      met: perWorker < TARGET_NS,
      note: `${Math.round(r.costNs)} ns per request${n >= 10 ? '; one worker in ten has an open breaker' : ''}`,
    });
  }
  const world = microWorld(2);
  const [closed, open] = world.workers;
  for (let k = 0; k < 10; k++) world.deps.breakers.failure(open.id);
  world.deps.breakers.failure(closed.id);
  world.deps.breakers.success(closed.id);
  const allows = nsPerCall(iterations * 50, rounds / 4, (i) => world.deps.breakers.allows(i & 1 ? open.id : closed.id));
  const fresh = nsPerCall(iterations * 50, rounds / 4, () => world.deps.breakers.allows('never-seen'));
  bar.done(`1, 10, 100 workers; ${rounds} alternating rounds of ${iterations.toLocaleString('en-US')} requests`);
  run.add({ scenario: 5, name: 'BreakerBook.allows alone (closed and open states)', value: allows, unit: 'ns', target: `< ${TARGET_NS} ns`, met: allows < TARGET_NS });
  run.add({ scenario: 5, name: 'BreakerBook.allows, worker without a recorded state', value: fresh, unit: 'ns', baseline: { label: 'recorded state', value: allows } });
  run.raw.breaker = { ...raw, allowsNs: allows, allowsFreshNs: fresh };
}
