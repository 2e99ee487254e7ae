/**
 * Scenario 3: what the chain costs. End to end, the default chain against `select` alone (dispatch
 * always ends a chain), in interleaved rounds against the same worker; then each middleware's own
 * cost over a pass-through middleware on a fake `next`, and a few per-request steps around it.
 */
import { validateChatRequest } from '../../src/controller/validate';
import type { Middleware, RouteContext } from '../../src/context';
import { BUILTIN_MIDDLEWARE } from '../../middleware';
import { instantiate } from '../../src/define';
import { decode, encode, requestHeaders } from '../../src/protocol';
import { Lab } from '../lab';
import { runLoad } from '../load';
import { phase, requireClean, type BenchRun, type Phase } from '../measure';
import { benchRequest, costOver, microWorld, nsPerCall, nullInfoLogger, passThrough, resolvedNext, type MicroWorld } from '../micro';
import { cannedReplies, chatBody } from '../payload';
import { progress } from '../progress';
import { fmt, median } from '../stats';
import { cpuNote } from './router';
import { routerTarget, verify } from './targets';

const CHAIN_TARGET = 0.9;

async function endToEnd(run: BenchRun): Promise<number> {
  const lab = await Lab.start();
  try {
    const full = await lab.child({ role: 'router' }, 'router (default chain)');
    const bare = await lab.child({ role: 'router', overrides: { 'cluster.pipeline': ['select'] } }, 'router (select only)');
    const worker = lab.worker({ id: 'w1' });
    await lab.waitOnline(full, 1);
    await lab.waitOnline(bare, 1);
    const targets = { full: routerTarget(full.url, false), bare: routerTarget(bare.url, false) };
    await verify(run.client, targets.full, 'router');
    await verify(run.client, targets.bare, 'router');
    for (const t of Object.values(targets)) requireClean('warm-up', await runLoad(run.client, t, { concurrency: 64, durationMs: run.pick(1000, 100) }));

    const rounds = run.pick(3, 1);
    const c64: Record<'full' | 'bare', Phase[]> = { full: [], bare: [] };
    const c1: Record<'full' | 'bare', Phase[]> = { full: [], bare: [] };
    for (let r = 1; r <= rounds; r++) {
      for (const k of ['full', 'bare'] as const) {
        const watch = { server: k === 'full' ? full : bare, backend: [worker], nats: lab.nats.process };
        c64[k].push(await phase(run, targets[k], { concurrency: 64, durationMs: run.pick(3000, 200), label: `3 · round ${r}/${rounds} · ${k === 'full' ? 'default chain' : 'select only  '} · 64 conn` }, watch));
        c1[k].push(await phase(run, targets[k], { concurrency: 1, durationMs: run.pick(1500, 100), label: `3 · round ${r}/${rounds} · ${k === 'full' ? 'default chain' : 'select only  '} · 1 conn ` }, watch));
        requireClean(k, c64[k][c64[k].length - 1]);
        requireClean(k, c1[k][c1[k].length - 1]);
      }
    }
    run.raw.chainEndToEnd = { c64, c1 };
    const rps = (k: 'full' | 'bare'): number => median(c64[k].map((p) => p.load.rps));
    const cpu = (k: 'full' | 'bare'): number => median(c64[k].map((p) => p.cpu.server));
    const p50 = (k: 'full' | 'bare'): number => median(c1[k].map((p) => p.load.latency.p50));
    run.add({
      scenario: 3,
      name: 'default chain: throughput at 64 connections',
      value: rps('full'),
      unit: 'req/s',
      baseline: { label: 'select only', value: rps('bare') },
      target: `≥ ${CHAIN_TARGET}× select only`,
      met: rps('full') / rps('bare') >= CHAIN_TARGET,
      note: cpuNote(c64.full, 'controller', 'worker'),
    });
    run.add({ scenario: 3, name: 'default chain: latency p50 at 1 connection', value: p50('full'), unit: 'ms', baseline: { label: 'select only', value: p50('bare') } });
    run.add({ scenario: 3, name: 'default chain: controller CPU per 1,000 requests', value: cpu('full'), unit: 'ms', baseline: { label: 'select only', value: cpu('bare') } });
    return cpu('full');
  } finally {
    await lab.stop();
  }
}

interface MicroCase {
  name: string;
  mw: Middleware;
  /** One context per case, reused: building one per call would add more noise than the cost measured. */
  ctx: RouteContext;
}

function middlewareCases(world: MicroWorld): MicroCase[] {
  const { config, deps } = world;
  const infoLog = nullInfoLogger();
  deps.sessions.set('s1', world.workers[0].id);
  const plain = (): RouteContext => world.ctx();
  const cases: MicroCase[] = [];
  for (const name of config.cluster.pipeline) {
    const def = BUILTIN_MIDDLEWARE[name];
    if (!def) continue;
    // A boundary's attempts resolve at once: its own cost is what is measured.
    const mw = instantiate(def, def.fromConfig?.(config), deps, resolvedNext);
    if (name === 'metrics') {
      cases.push({ name: 'metrics (log silent)', mw, ctx: plain() });
      cases.push({ name: 'metrics (log info, to a null stream)', mw, ctx: world.ctx({ log: infoLog }) });
    } else if (name === 'session') {
      cases.push({ name: 'session (no session id)', mw, ctx: plain() });
      cases.push({ name: 'session (sticky session id)', mw, ctx: world.ctx({ sessionId: 's1' }) });
    } else {
      cases.push({ name, mw, ctx: plain() });
    }
  }
  return cases;
}

async function micro(run: BenchRun, controllerCpuPer1000: number): Promise<void> {
  const world = microWorld(1);
  const iterations = run.pick(2_000, 500);
  const rounds = run.pick(60, 12);
  const perRequestUs = controllerCpuPer1000; // ms per 1,000 requests = µs per request
  const share = (us: number): string => (Number.isFinite(perRequestUs) ? `${fmt((us / perRequestUs) * 100, 2)}% of the controller's CPU per request (${fmt(perRequestUs)} µs)` : '');
  const cases = middlewareCases(world);
  const bar = progress('3 · middleware micro-benchmarks');
  const costs: Record<string, number> = {};
  let baselineNs = Number.NaN;
  for (const [i, c] of cases.entries()) {
    bar.update(i / cases.length, c.name);
    const { ctx, mw } = c;
    // `breaker` narrows the candidates and `select` sets the worker: restore both for every call.
    const reset = (): RouteContext => {
      ctx.candidates = world.workers;
      return ctx;
    };
    const r = await costOver(iterations, rounds, () => passThrough(reset(), resolvedNext), () => mw(reset(), resolvedNext));
    costs[c.name] = r.costNs;
    baselineNs = r.baselineNs;
  }
  bar.done(`${cases.length} middleware, ${rounds} alternating rounds of ${iterations.toLocaleString('en-US')} calls each`);
  for (const c of cases) {
    run.add({ scenario: 3, name: `middleware ${c.name}: own cost`, value: costs[c.name] / 1000, unit: 'µs', note: share(costs[c.name] / 1000) });
  }
  const bodyText = chatBody(false).toString();
  const parsed = JSON.parse(bodyText) as unknown;
  const infoLog = nullInfoLogger();
  const reply = (await cannedReplies()).result;
  const steps: Array<[string, (i: number) => unknown]> = [
    ['HTTP front: JSON.parse of the body', () => JSON.parse(bodyText)],
    ['HTTP front: validateChatRequest', () => validateChatRequest(parsed)],
    ['HTTP front: log.child({ requestId }) (info logger)', (i) => infoLog.child({ requestId: `req-${i}` })],
    ['dispatch: requestHeaders + encode(request)', () => [requestHeaders({ requestId: 'req-bench', attempt: 1, deadlineMs: 30_000, stream: false }), encode(benchRequest)]],
    ['dispatch: decode(result reply)', () => decode(reply)],
  ];
  for (const [name, fn] of steps) {
    const us = nsPerCall(iterations * 10, rounds / 4, fn) / 1000;
    run.add({ scenario: 3, name, value: us, unit: 'µs', note: share(us) });
  }
  run.raw.chainMicro = { iterations, rounds, passThroughNs: baselineNs, costsNs: costs };
}

export async function chainCost(run: BenchRun): Promise<void> {
  const cpu = await endToEnd(run);
  await micro(run, cpu);
}
