/**
 * Scenario 4: what a failure of the chosen worker costs a request. Each case pairs a request that
 * fails over (first to the bad worker, then to the good one) with a baseline request sent straight
 * to the good worker (a sticky session), alternately, so both see the same machine. The bad worker
 * is the first in the registry, so least-outstanding picks it first whenever it is a candidate.
 * Breaker threshold and retry budget are raised: this measures one failover, not their limits.
 */
import { encode, makeSubjects, type Heartbeat } from '../../src/protocol';
import { Lab, type ChildHandle } from '../lab';
import type { Target } from '../load';
import type { BenchRun } from '../measure';
import { MODEL } from '../payload';
import { progress } from '../progress';
import { summarize } from '../stats';
import { routerTarget, verify } from './targets';

/** The attempt limit in the hang case (ms): small, so the case runs quickly. */
const HANG_LIMIT_MS = 250;
const MECHANISM_TARGET_MS = 5;

const FAILOVER_CONFIG = {
  'discovery.offlineAfterMs': 600_000,
  'cluster.requestRouting.circuitBreaker.failureThreshold': 1_000_000,
  'cluster.requestRouting.retry.budget.maxTokens': 1_000_000,
  'cluster.requestRouting.attemptTimeoutMs': HANG_LIMIT_MS,
  'cluster.requestRouting.firstChunkTimeoutMs': HANG_LIMIT_MS,
};
const NO_DELAY = { 'cluster.requestRouting.retry.retryDelayMs': 0 };

interface Pairs {
  failover: number[];
  baseline: number[];
  /** Failover requests that did not fail over (the bad worker was not a candidate at that moment). */
  missed: number;
  /**
   * Baseline requests that did not go straight to the good worker (on a loaded machine its first
   * chunk can miss the short limit used here): left out of the baseline, and counted.
   */
  baselineOff: number;
}

/** Alternates failover and baseline requests; `before` runs ahead of each failover request. */
async function pairs(run: BenchRun, label: string, n: number, failover: Target, baseline: Target, good: string, before?: () => Promise<void>): Promise<Pairs> {
  const out: Pairs = { failover: [], baseline: [], missed: 0, baselineOff: 0 };
  const bar = progress(label);
  for (let i = 0; i < n; i++) {
    if (i % 5 === 0) bar.update(i / n, `${out.failover.length} failovers`);
    await before?.();
    const a = await run.client.send(failover);
    if (a.status !== 200) throw new Error(`${label}: failover request answered HTTP ${a.status}: ${a.body.slice(0, 300)}`);
    if (a.headers['x-mlx-worker'] !== good) throw new Error(`${label}: answered by ${String(a.headers['x-mlx-worker'])}, expected ${good}`);
    if (Number(a.headers['x-mlx-retries']) >= 1) out.failover.push(a.ms);
    else out.missed++;
    const b = await run.client.send(baseline);
    if (b.status !== 200) throw new Error(`${label}: baseline request answered HTTP ${b.status}: ${b.body.slice(0, 300)}`);
    if (b.headers['x-mlx-retries'] === '0' && b.headers['x-mlx-worker'] === good) out.baseline.push(b.ms);
    else out.baselineOff++;
  }
  if (out.baselineOff > n / 2) throw new Error(`${label}: ${out.baselineOff} of ${n} baseline requests did not go straight to ${good}`);
  const f = summarize(out.failover);
  const base = summarize(out.baseline);
  bar.done(`${out.failover.length} failovers: p50 ${f.p50.toFixed(2)} ms, p99 ${f.p99.toFixed(2)} ms · baseline p50 ${base.p50.toFixed(2)} ms, p99 ${base.p99.toFixed(2)} ms${out.missed ? ` · ${out.missed} did not fail over` : ''}`);
  if (out.failover.length === 0) throw new Error(`${label}: no request failed over`);
  return out;
}

function report(run: BenchRun, name: string, p: Pairs, target?: { text: string; maxExtraP99: number }, note?: string): void {
  const f = summarize(p.failover);
  const b = summarize(p.baseline);
  const notes = [
    `${p.failover.length} failovers`,
    p.missed ? `${p.missed} requests did not fail over and are left out` : '',
    p.baselineOff ? `${p.baselineOff} baseline requests did not go straight to the good worker and are left out` : '',
    note ?? '',
  ]
    .filter(Boolean)
    .join('; ');
  run.add({ scenario: 4, name: `${name}: latency p50`, value: f.p50, unit: 'ms', baseline: { label: 'no failure', value: b.p50 } });
  run.add({
    scenario: 4,
    name: `${name}: latency p99`,
    value: f.p99,
    unit: 'ms',
    baseline: { label: 'no failure', value: b.p99 },
    target: target?.text,
    met: target ? f.p99 - b.p99 <= target.maxExtraP99 : undefined,
    note: notes,
  });
}

/** A router child started first, then the bad worker, then the good one (registry order). */
async function setup(lab: Lab, routers: ChildHandle[], bad: () => Promise<void> | void): Promise<void> {
  await bad();
  for (const r of routers) await lab.waitOnline(r, 1);
  lab.worker({ id: 'good' });
  for (const r of routers) await lab.waitOnline(r, 2);
}

/** Sends the first request of a session: it fails over once and then sticks to the good worker. */
async function stickySession(run: BenchRun, url: string, stream: boolean): Promise<Target> {
  const target = routerTarget(url, stream, { 'x-session-id': `baseline-${stream ? 's' : 'b'}` });
  const a = await run.client.send(target);
  if (a.status !== 200 || a.headers['x-mlx-worker'] !== 'good') throw new Error(`session set-up: HTTP ${a.status} from ${String(a.headers['x-mlx-worker'])}: ${a.body.slice(0, 200)}`);
  return target;
}

async function gone(run: BenchRun): Promise<void> {
  const lab = await Lab.start();
  try {
    // The liveness probe would find the ghost by itself: off, so each request meets it.
    const router = await lab.child({ role: 'router', overrides: { ...FAILOVER_CONFIG, 'discovery.probeAfterMs': 0 } });
    const subjects = makeSubjects();
    // A ghost: it heartbeats but never subscribes, so every request to it gets "no responders".
    const hb: Heartbeat = { type: 'heartbeat', version: 1, id: 'a-ghost', models: [MODEL], engine: 'synthetic', max_concurrent: 1024, in_flight: 0, state: 'ready', interval_ms: 1000, instance: 'ghost-instance' };
    const haunt = async (): Promise<void> => {
      lab.nc.publish(subjects.heartbeat, encode(hb));
      await lab.nc.flush();
    };
    await setup(lab, [router], haunt);
    await verify(run.client, routerTarget(router.url, false), 'router');
    const baseline = await stickySession(run, router.url, false);
    await haunt();
    const p = await pairs(run, '4 · worker gone (no responders)', run.pick(300, 40), routerTarget(router.url, false), baseline, 'good', haunt);
    run.raw.failoverGone = p;
    report(run, 'worker gone (no responders)', p, { text: `≤ +${MECHANISM_TARGET_MS} ms`, maxExtraP99: MECHANISM_TARGET_MS }, 'retried at once, no backoff');
  } finally {
    await lab.stop();
  }
}

async function failsFast(run: BenchRun): Promise<void> {
  const lab = await Lab.start();
  try {
    const paced = await lab.child({ role: 'router', overrides: FAILOVER_CONFIG }, 'router (default backoff)');
    const quick = await lab.child({ role: 'router', overrides: { ...FAILOVER_CONFIG, ...NO_DELAY } }, 'router (no backoff)');
    await setup(lab, [paced, quick], () => void lab.worker({ id: 'a-failing', failRate: 1 }));
    const base = { paced: await stickySession(run, paced.url, false), quick: await stickySession(run, quick.url, false) };
    const p1 = await pairs(run, '4 · worker errors fast, default backoff', run.pick(60, 10), routerTarget(paced.url, false), base.paced, 'good');
    const p2 = await pairs(run, '4 · worker errors fast, no backoff     ', run.pick(300, 40), routerTarget(quick.url, false), base.quick, 'good');
    run.raw.failoverErrors = { defaultBackoff: p1, noBackoff: p2 };
    report(run, 'worker errors fast, default backoff', p1, { text: '≤ +105 ms (backoff cap + 5)', maxExtraP99: 105 }, 'backoff before the retry is uniform in [0, 100 ms] (retryDelayMs, full jitter)');
    report(run, 'worker errors fast, retryDelayMs 0', p2, { text: `≤ +${MECHANISM_TARGET_MS} ms`, maxExtraP99: MECHANISM_TARGET_MS }, 'the mechanism alone');
  } finally {
    await lab.stop();
  }
}

async function hangs(run: BenchRun): Promise<void> {
  const lab = await Lab.start();
  try {
    const router = await lab.child({ role: 'router', overrides: { ...FAILOVER_CONFIG, ...NO_DELAY } });
    let hung: ReturnType<Lab['worker']> | undefined;
    await setup(lab, [router], () => {
      hung = lab.worker({ id: 'a-hung' });
    });
    // Stopped, not dead: its connection stays open, so requests are delivered and never answered.
    hung?.process.kill('SIGSTOP');
    const n = run.pick(12, 2);
    const limit = `≤ +${HANG_LIMIT_MS + MECHANISM_TARGET_MS} ms (limit + ${MECHANISM_TARGET_MS})`;
    for (const stream of [false, true]) {
      const baseline = await stickySession(run, router.url, stream);
      const p = await pairs(run, `4 · worker hangs (SIGSTOP), ${stream ? 'streamed' : 'buffered'}`, n, routerTarget(router.url, stream), baseline, 'good');
      run.raw[`failoverHang${stream ? 'Streamed' : 'Buffered'}`] = p;
      report(run, `worker hangs (SIGSTOP), ${stream ? 'streamed' : 'buffered'}`, p, { text: limit, maxExtraP99: HANG_LIMIT_MS + MECHANISM_TARGET_MS },
        `time to first token (firstChunkTimeoutMs) = ${HANG_LIMIT_MS} ms here (default 10000, or learned per worker), retryDelayMs 0`);
    }
  } finally {
    await lab.stop();
  }
}

/** Tokens of the answer in the "killed" case, and the token pace: long enough to die mid-answer. */
const KILLED_TOKEN_MS = 25;
const KILL_AFTER_MS = 100;

/**
 * A worker SIGKILLed mid-answer (buffered and streamed): found through NATS "no responders" on a
 * liveness probe (discovery.probeAfterMs, 300 ms) rather than heartbeat silence (switched off
 * here), then failed over (buffered) or resumed (streamed) on the good worker. The figure is the
 * time from the kill to the answer, beside a whole answer from the good worker.
 */
/** A streamed answer that was resumed on another worker (its metadata counts resumes) and ended with [DONE]. */
function resumedToTheEnd(body: string): boolean {
  return Number(/"resumes":(\d+)/.exec(body)?.[1] ?? 0) >= 1 && body.includes('data: [DONE]');
}

async function killed(run: BenchRun): Promise<void> {
  const lab = await Lab.start();
  try {
    const router = await lab.child({ role: 'router', overrides: { ...FAILOVER_CONFIG, ...NO_DELAY } });
    const spec = { id: 'a-victim', tokenMs: KILLED_TOKEN_MS };
    // The victim first in the registry: least-outstanding picks it whenever both are idle.
    let victim: ReturnType<Lab['worker']> | undefined;
    await setup(lab, [router], () => {
      victim = lab.worker(spec);
    });
    for (const stream of [false, true]) {
      const fromKill: number[] = [];
      const whole: number[] = [];
      const n = run.pick(8, 2);
      const bar = progress(`4 · worker killed mid-answer, ${stream ? 'streamed' : 'buffered'}`);
      for (let i = 0; i < n; i++) {
        bar.update(i / n, `${fromKill.length} kills`);
        if (!victim) {
          victim = lab.worker(spec);
          // Its first heartbeat (1 s period here) brings it back under the same id.
          await new Promise((r) => setTimeout(r, 1500));
          // (Lab.waitOnline would stop at the killed one's exit.)
          for (let t = 0; ((await router.stats()).workersOnline ?? 0) < 2; t++) {
            if (t > 600) throw new Error('killed: the new victim did not come online');
            await new Promise((r) => setTimeout(r, 25));
          }
        }
        // A whole answer with nothing failing, just before: the baseline.
        const plain = await run.client.send(routerTarget(router.url, stream));
        if (plain.status !== 200) throw new Error(`killed: baseline answered HTTP ${plain.status}`);
        whole.push(plain.ms);
        const pending = run.client.send(routerTarget(router.url, stream));
        await new Promise((r) => setTimeout(r, KILL_AFTER_MS));
        const killedAt = performance.now();
        victim.process.kill('SIGKILL');
        victim = undefined;
        const a = await pending;
        const doneAt = performance.now();
        // A stream's headers leave at its commit, on the victim: its metadata says it was resumed.
        const movedOn = stream ? resumedToTheEnd(a.body) : a.headers['x-mlx-worker'] === 'good';
        if (a.status !== 200) throw new Error(`killed: HTTP ${a.status}: ${a.body.slice(0, 300)}`);
        if (movedOn) fromKill.push(doneAt - killedAt);
      }
      const k = summarize(fromKill);
      const w = summarize(whole);
      bar.done(`${fromKill.length} kills: kill → answer p50 ${k.p50.toFixed(0)} ms, p99 ${k.p99.toFixed(0)} ms · whole answer p50 ${w.p50.toFixed(0)} ms`);
      if (fromKill.length === 0) throw new Error('killed: no request failed over');
      run.raw[`failoverKilled${stream ? 'Streamed' : 'Buffered'}`] = { fromKill, whole };
      run.add({
        scenario: 4,
        name: `worker killed mid-answer, ${stream ? 'streamed' : 'buffered'}: kill → answer p99`,
        value: k.p99,
        unit: 'ms',
        baseline: { label: 'a whole answer, no failure', value: w.p99 },
        target: '≤ 1000 ms + a whole answer',
        met: k.p99 <= 1000 + w.p99,
        note: `${fromKill.length} kills ${KILL_AFTER_MS} ms into the answer; the good worker answers at once (0 ms a token), so this is the detection time; found by the liveness probe (heartbeat silence off)`,
      });
    }
  } finally {
    await lab.stop();
  }
}

/**
 * A worker SIGSTOPped mid-answer (buffered and streamed), with the default limits: after enough
 * answers to learn the worker's pace (adaptiveLimits.minSamples), its idle limit is the learned one
 * (never below adaptiveLimits.floorMs, 1000 ms), so the attempt is cut about a second after the
 * stop and failed over (buffered) or resumed (streamed) on the good worker. The figure is the time
 * from the SIGSTOP to the answer, beside a whole answer from the good worker.
 */
async function hungMidAnswer(run: BenchRun): Promise<void> {
  const lab = await Lab.start();
  try {
    const router = await lab.child({
      role: 'router',
      overrides: {
        'discovery.offlineAfterMs': 600_000,
        'cluster.requestRouting.circuitBreaker.failureThreshold': 1_000_000,
        'cluster.requestRouting.retry.budget.maxTokens': 1_000_000,
        // Smoke runs learn from fewer answers (the figure is only recorded from full runs).
        'cluster.requestRouting.adaptiveLimits.minSamples': run.pick(20, 4),
        ...NO_DELAY,
      },
    });
    const spec = { id: 'a-stopped', tokenMs: KILLED_TOKEN_MS };
    let victim: ReturnType<Lab['worker']> | undefined;
    await setup(lab, [router], () => {
      victim = lab.worker(spec);
    });
    // Teach the router both workers' pace: first token and gaps between chunks, streamed and buffered.
    for (let i = 0, n = run.pick(22, 5); i < n; i++) {
      for (const stream of [true, false]) {
        const a = await run.client.send(routerTarget(router.url, stream));
        if (a.status !== 200) throw new Error(`hung: warm-up answered HTTP ${a.status}`);
      }
    }
    for (const stream of [false, true]) {
      const fromStop: number[] = [];
      const whole: number[] = [];
      const n = run.pick(8, 2);
      const bar = progress(`4 · worker hangs mid-answer (SIGSTOP), ${stream ? 'streamed' : 'buffered'}`);
      for (let tries = 0; fromStop.length < n && tries < 4 * n; tries++) {
        bar.update(fromStop.length / n, `${fromStop.length} stops`);
        // The stopped worker back in selection before the next stop: online, and idle again (after
        // SIGCONT its first heartbeat may still count the cancelled attempt, and least-outstanding
        // rightly sends the next request to the good worker while it does).
        for (let t = 0; ((await router.stats()).workersIdle ?? 0) < 2; t++) {
          if (t > 2400) throw new Error('hung: the resumed worker did not come back online and idle');
          await new Promise((r) => setTimeout(r, 25));
        }
        const plain = await run.client.send(routerTarget(router.url, stream));
        if (plain.status !== 200) throw new Error(`hung: baseline answered HTTP ${plain.status}`);
        const pending = run.client.send(routerTarget(router.url, stream));
        await new Promise((r) => setTimeout(r, KILL_AFTER_MS));
        const stoppedAt = performance.now();
        victim!.process.kill('SIGSTOP');
        let a: Awaited<typeof pending>;
        try {
          a = await pending;
        } finally {
          victim!.process.kill('SIGCONT');
        }
        const doneAt = performance.now();
        if (a.status !== 200) throw new Error(`hung: HTTP ${a.status}: ${a.body.slice(0, 300)}`);
        // Counted only when the answer started on the stopped worker and moved on: a stream is
        // resumed; a buffered answer's first attempt was on the stopped worker.
        const firstOnVictim = (): boolean => {
          const attempts = (JSON.parse(a.body) as { metadata?: { attempts?: Array<{ attempt: number; worker: string }> } }).metadata?.attempts ?? [];
          return [...attempts].sort((x, y) => x.attempt - y.attempt)[0]?.worker === spec.id;
        };
        const movedOn = stream
          ? resumedToTheEnd(a.body)
          : a.headers['x-mlx-worker'] === 'good' && firstOnVictim();
        if (movedOn) {
          fromStop.push(doneAt - stoppedAt);
          whole.push(plain.ms);
        }
      }
      const k = summarize(fromStop);
      const w = summarize(whole);
      bar.done(`${fromStop.length} stops: stop → answer p50 ${k.p50.toFixed(0)} ms, p99 ${k.p99.toFixed(0)} ms · whole answer p50 ${w.p50.toFixed(0)} ms`);
      if (fromStop.length === 0) throw new Error('hung: no request failed over');
      run.raw[`failoverHungMid${stream ? 'Streamed' : 'Buffered'}`] = { fromStop, whole };
      run.add({
        scenario: 4,
        name: `worker hangs mid-answer (SIGSTOP), ${stream ? 'streamed' : 'buffered'}: stop → answer p99`,
        value: k.p99,
        unit: 'ms',
        baseline: { label: 'a whole answer, no failure', value: w.p99 },
        target: '≤ 2000 ms + a whole answer (about two learned limits)',
        met: k.p99 <= 2000 + w.p99,
        note: `${fromStop.length} stops ${KILL_AFTER_MS} ms into the answer, default limits learned over 44 answers (idle limit floor 1000 ms); heartbeat silence off`,
      });
    }
  } finally {
    await lab.stop();
  }
}

export async function failoverCost(run: BenchRun): Promise<void> {
  await gone(run);
  await failsFast(run);
  await hangs(run);
  await killed(run);
  await hungMidAnswer(run);
}
