/**
 * Scenario 7: the controller's memory. Heap and RSS after a full GC (its process runs with
 * --expose-gc) before and after 100,000 requests, buffered then streamed; and the bytes one
 * in-flight stream holds: K streams kept open by a worker that sends one token and then waits,
 * measured against the same controller with none, and again after they were all cancelled; the
 * floor server holding K such streams is the baseline (what node:http alone keeps per stream).
 */
import { Agent, request as httpRequest, type ClientRequest } from 'node:http';
import type { ChildStats } from '../child';
import { Lab, type ChildHandle } from '../lab';
import { runLoad, type Target } from '../load';
import { requireClean, type BenchRun } from '../measure';
import { chatBody } from '../payload';
import { progress } from '../progress';
import { sleep } from '../stats';
import { routerTarget, verify } from './targets';

const MB = 1e6;
const GROWTH_TARGET_MB = 10;

async function growth(run: BenchRun, router: ChildHandle, target: Target, count: number, mode: string): Promise<void> {
  const before = await router.stats(true);
  const r = await runLoad(run.client, target, { concurrency: 64, requests: count, label: `7 · ${count.toLocaleString('en-US')} ${mode} requests` });
  requireClean(mode, r);
  const after = await router.stats(true);
  run.raw[`memory${mode}`] = { before, after, requests: r.requests };
  run.add({
    scenario: 7,
    name: `${mode}: heap after ${r.requests.toLocaleString('en-US')} requests (after GC)`,
    value: after.heapUsed / MB,
    unit: 'MB',
    baseline: { label: 'before', value: before.heapUsed / MB },
    target: `< +${GROWTH_TARGET_MB} MB`,
    met: (after.heapUsed - before.heapUsed) / MB < GROWTH_TARGET_MB,
    note: `reply handlers still registered afterwards: ${after.pendingReplies}`,
  });
  run.add({ scenario: 7, name: `${mode}: RSS after ${r.requests.toLocaleString('en-US')} requests`, value: after.rss / MB, unit: 'MB', baseline: { label: 'before', value: before.rss / MB } });
}

/** Opens `k` streams to `url` and resolves once each has received its first bytes. */
async function openStreams(url: string, k: number, label: string): Promise<{ requests: ClientRequest[]; agent: Agent }> {
  const agent = new Agent({ keepAlive: false, maxSockets: Number.POSITIVE_INFINITY });
  const body = chatBody(true);
  const requests: ClientRequest[] = [];
  const bar = progress(`7 · ${label}: opening ${k} streams`);
  let open = 0;
  await Promise.all(
    Array.from({ length: k }, () =>
      new Promise<void>((resolve, reject) => {
        const req = httpRequest(url, { agent, method: 'POST', headers: { 'content-type': 'application/json', 'content-length': String(body.length) } }, (res) => {
          if (res.statusCode !== 200) reject(new Error(`${label}: stream answered HTTP ${res.statusCode}`));
          res.once('data', () => {
            if (++open % 50 === 0) bar.update(open / k, `${open} open`);
            resolve();
          });
          res.on('data', () => undefined);
          res.on('error', () => undefined);
        });
        req.on('error', (err) => reject(err));
        req.end(body);
        requests.push(req);
      }),
    ),
  );
  bar.done(`${k} streams open, each past its first chunk`);
  return { requests, agent };
}

/** Waits until the server holds no reply handler (every stream ended and was cleaned up). */
async function waitIdle(server: ChildHandle): Promise<void> {
  const deadline = Date.now() + 10_000;
  while ((await server.stats()).pendingReplies !== 0) {
    if (Date.now() > deadline) throw new Error(`${server.name}: streams were not cleaned up within 10 s of being cancelled`);
    await sleep(50);
  }
  await sleep(100);
}

/** Memory of `server` with no stream, with `k` open streams, and after they were all cancelled. */
async function heldStreams(server: ChildHandle, url: string, k: number, label: string): Promise<{ before: ChildStats; during: ChildStats; after: ChildStats }> {
  // Warm-up: the first streams pay for lazy initialisation that is not per-stream memory.
  const warm = await openStreams(url, 20, `${label} warm-up`);
  for (const r of warm.requests) r.destroy();
  warm.agent.destroy();
  await waitIdle(server);
  const before = await server.stats(true);
  const { requests, agent } = await openStreams(url, k, label);
  const during = await server.stats(true);
  for (const r of requests) r.destroy();
  agent.destroy();
  await waitIdle(server);
  const after = await server.stats(true);
  return { before, during, after };
}

async function inFlight(run: BenchRun): Promise<void> {
  const k = run.pick(500, 50);
  const lab = await Lab.start();
  try {
    await lab.child({ role: 'responder' });
    const floor = await lab.child({ role: 'floor' });
    // The k streams come from one client address: lift the per-client connection cap (256 by
    // default), which would refuse the rest with 503 TOO_MANY_CONNECTIONS; memory is measured here.
    const router = await lab.child({ role: 'router', overrides: { 'controller.maxConnectionsPerClient': k + 64 } });
    // One token at once, then a wait far longer than the measurement (the idle limit is 30 s).
    lab.worker({ id: 'slow', ttftMs: 0, tokenMs: 600_000, maxConcurrent: k + 64 });
    await lab.waitOnline(router, 1);
    const f = await heldStreams(floor, `${floor.url}/hold`, k, 'floor');
    const r = await heldStreams(router, `${router.url}/v1/chat/completions`, k, 'router');
    run.raw.memoryInFlight = { k, floor: f, router: r };
    const per = (m: { before: ChildStats; during: ChildStats }, key: 'heapUsed' | 'rss' | 'external'): number => (m.during[key] - m.before[key]) / k;
    run.add({
      scenario: 7,
      name: `heap per in-flight stream (${k} open)`,
      value: per(r, 'heapUsed'),
      unit: 'B',
      baseline: { label: 'floor server', value: per(f, 'heapUsed') },
      note: `RSS per stream: router ${Math.round(per(r, 'rss'))} B, floor ${Math.round(per(f, 'rss'))} B (RSS moves in pages; heap is the figure)`,
    });
    run.add({
      scenario: 7,
      name: `heap after those ${k} streams were cancelled (after GC)`,
      value: r.after.heapUsed / MB,
      unit: 'MB',
      baseline: { label: 'before they opened', value: r.before.heapUsed / MB },
      note: `reply handlers still registered: ${r.after.pendingReplies}`,
    });
  } finally {
    await lab.stop();
  }
}

export async function memory(run: BenchRun): Promise<void> {
  const count = run.pick(100_000, 1500);
  const lab = await Lab.start();
  try {
    const router = await lab.child({ role: 'router' });
    lab.worker({ id: 'w1' });
    await lab.waitOnline(router, 1);
    const buffered = routerTarget(router.url, false);
    const streamed = routerTarget(router.url, true);
    await verify(run.client, buffered, 'router');
    await verify(run.client, streamed, 'router');
    // Warm-up, so the JIT's and the libraries' first allocations are not counted as growth.
    for (const t of [buffered, streamed]) requireClean('warm-up', await runLoad(run.client, t, { concurrency: 64, requests: run.pick(5000, 300) }));
    await growth(run, router, buffered, count, 'buffered');
    await growth(run, router, streamed, count, 'streamed');
  } finally {
    await lab.stop();
  }
  await inFlight(run);
}
