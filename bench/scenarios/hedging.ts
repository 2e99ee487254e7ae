/**
 * Scenario 10: hedging. Two routers in one lab, over the same three synthetic workers: one with the
 * default pipeline (hedging on), one with `hedge.enabled: false`, sent the same streamed requests
 * alternately so both see the same machine and the same worker states.
 *
 * - Healthy cluster: what hedging costs when nothing is wrong, as extra attempts (hedges started
 *   per request, from mlx_router_hedges_total) and time to first token beside the plain router.
 * - One slow worker: one of the three stalls (SIGSTOP for STALL_MS of every STALL_PERIOD_MS, as a
 *   worker with GC pauses or thermal throttling would): p99 time to first token with and without
 *   hedging, and the share of requests hedged.
 *
 * Time to first token is the time to the response headers, which leave with a stream's first chunk.
 */
import { Lab, type ChildHandle, type Proc } from '../lab';
import type { BenchRun } from '../measure';
import { progress } from '../progress';
import { summarize } from '../stats';
import { routerTarget, verify } from './targets';

const STALL_MS = 250;
const STALL_PERIOD_MS = 1000;
/** Workers' own time to first token (ms): small, as a loaded engine's would not be 0. */
const TTFT_MS = 5;
const CONCURRENCY = 4;

async function hedgeCounts(router: ChildHandle): Promise<{ started: number; byOutcome: Record<string, number>; requests: number }> {
  const res = await fetch(`${router.url}/metrics`);
  const text = await res.text();
  const byOutcome: Record<string, number> = {};
  let requests = 0;
  for (const line of text.split('\n')) {
    const h = /^mlx_router_hedges_total\{outcome="([a-z_]+)"\} (\S+)$/.exec(line);
    if (h) byOutcome[h[1]] = Number(h[2]);
    const r = /^mlx_router_requests_total\{[^}]*\} (\S+)$/.exec(line);
    if (r) requests += Number(r[1]);
  }
  const started = (byOutcome.won ?? 0) + (byOutcome.lost ?? 0) + (byOutcome.failed ?? 0);
  return { started, byOutcome, requests };
}

function diff(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) out[k] = (b[k] ?? 0) - (a[k] ?? 0);
  return out;
}

/** `n` requests to each router, alternately, from CONCURRENCY loops; times to first token. */
async function alternate(run: BenchRun, label: string, n: number, hedged: ChildHandle, plain: ChildHandle): Promise<{ hedged: number[]; plain: number[] }> {
  const out = { hedged: [] as number[], plain: [] as number[] };
  const targets = { hedged: routerTarget(hedged.url, true), plain: routerTarget(plain.url, true) };
  const bar = progress(label);
  let left = n;
  const loop = async (): Promise<void> => {
    while (left-- > 0) {
      if (left % 50 === 0) bar.update(1 - left / n, `${out.hedged.length} pairs`);
      for (const which of ['hedged', 'plain'] as const) {
        const a = await run.client.send(targets[which]);
        if (a.status !== 200 || !a.body.endsWith('data: [DONE]\n\n')) throw new Error(`${label}: ${which} answered HTTP ${a.status}: ${a.body.slice(0, 300)}`);
        out[which].push(a.firstMs);
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, loop));
  const h = summarize(out.hedged);
  const p = summarize(out.plain);
  bar.done(`TTFT p50 ${h.p50.toFixed(1)} / ${p.p50.toFixed(1)} ms, p99 ${h.p99.toFixed(1)} / ${p.p99.toFixed(1)} ms (hedged / plain)`);
  return out;
}

export async function hedging(run: BenchRun): Promise<void> {
  const lab = await Lab.start();
  let stalling = false;
  let stall: Promise<void> | undefined;
  try {
    // Heartbeat silence off: a stalled worker stays selectable, as a slow one would.
    const common = { 'discovery.offlineAfterMs': 600_000 };
    const hedged = await lab.child({ role: 'router', overrides: common }, 'router (hedging)');
    const plain = await lab.child({ role: 'router', overrides: { ...common, 'cluster.requestRouting.hedge.enabled': false } }, 'router (no hedging)');
    const workers: Proc[] = ['w1', 'w2', 'w3'].map((id) => lab.worker({ id, ttftMs: TTFT_MS }));
    for (const r of [hedged, plain]) await lab.waitOnline(r, 3);
    await verify(run.client, routerTarget(hedged.url, true), 'router');
    // Enough answers for every worker's pace to be learned (hedge.minSamples, 20), on both routers.
    await alternate(run, '10 · warm-up (learning each worker\'s time to first token)', 60, hedged, plain);

    const before = await hedgeCounts(hedged);
    const healthy = await alternate(run, '10 · healthy cluster', run.pick(1500, 60), hedged, plain);
    const after = await hedgeCounts(hedged);
    const requests = after.requests - before.requests;
    const extra = (100 * (after.started - before.started)) / requests;
    const outcomes = diff(before.byOutcome, after.byOutcome);
    run.raw.hedgeHealthy = { ...healthy, outcomes, requests };
    const hh = summarize(healthy.hedged);
    const hp = summarize(healthy.plain);
    run.add({
      scenario: 10,
      name: 'healthy cluster: extra attempts from hedging',
      value: extra,
      unit: '%',
      target: '≤ 5 % (the budget)',
      met: extra <= 5,
      note: `${after.started - before.started} hedges in ${requests} requests (${Object.entries(outcomes).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`).join(', ') || 'none'}); 3 workers, ${TTFT_MS} ms to first token, ${CONCURRENCY} × 2 clients`,
    });
    run.add({ scenario: 10, name: 'healthy cluster: time to first token p99, hedging on', value: hh.p99, unit: 'ms', baseline: { label: 'hedging off', value: hp.p99 } });

    // One worker stalls for STALL_MS of every STALL_PERIOD_MS.
    const slow = workers[0];
    stalling = true;
    stall = (async () => {
      while (stalling) {
        slow.process.kill('SIGSTOP');
        await new Promise((r) => setTimeout(r, STALL_MS));
        slow.process.kill('SIGCONT');
        await new Promise((r) => setTimeout(r, STALL_PERIOD_MS - STALL_MS));
      }
    })();
    const before2 = await hedgeCounts(hedged);
    const slowRun = await alternate(run, `10 · one worker stalls ${STALL_MS} ms of every ${STALL_PERIOD_MS} ms`, run.pick(1500, 60), hedged, plain);
    const after2 = await hedgeCounts(hedged);
    stalling = false;
    await stall;
    const requests2 = after2.requests - before2.requests;
    const outcomes2 = diff(before2.byOutcome, after2.byOutcome);
    run.raw.hedgeSlowWorker = { ...slowRun, outcomes: outcomes2, requests: requests2 };
    const sh = summarize(slowRun.hedged);
    const sp = summarize(slowRun.plain);
    run.add({
      scenario: 10,
      name: 'one slow worker: time to first token p99, hedging on',
      value: sh.p99,
      unit: 'ms',
      baseline: { label: 'hedging off', value: sp.p99 },
      target: '< hedging off',
      met: sh.p99 < sp.p99,
      note: `p50 ${sh.p50.toFixed(1)} vs ${sp.p50.toFixed(1)} ms; ${((100 * (after2.started - before2.started)) / requests2).toFixed(1)} % of requests hedged (${Object.entries(outcomes2).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`).join(', ') || 'none'}); one of 3 workers SIGSTOPped ${STALL_MS} ms of every ${STALL_PERIOD_MS} ms`,
    });
  } finally {
    stalling = false;
    await stall?.catch(() => undefined);
    await lab.stop();
  }
}
