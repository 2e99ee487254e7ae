/**
 * Scenario 8: prefix-cache-aware routing. Four synthetic workers with mlx_lm's prompt cache model
 * (10 entries each, 50 µs a prompt token of prefill, one prompt at a time) behind one router per
 * strategy, all on the same workers and measured in turn in one run. Each workload tags its text
 * with the strategy's name, so no strategy finds what another left in a cache. Time to first token
 * is read by the client at the first streamed content; cache hits from the `cached_tokens` each
 * answer reports.
 */
import { Agent, request as httpRequest } from 'node:http';
import { DEFAULT_PIPELINE } from '../../src/config';
import { Lab, type ChildHandle, type Proc } from '../lab';
import type { BenchRun } from '../measure';
import { MODEL } from '../payload';
import { progress } from '../progress';
import { summarize } from '../stats';

const WORKERS = 4;
const CACHE = 10;
const PREFILL_US = 50;
const MAX_TOKENS = 32;
/** A prompt token is ~4 characters (the synthetic tokenizer's and the router's estimate). */
const SYSTEM_CHARS = 4000;
/** Reported `cached_tokens` at least this: a hit (the chat template's 3 shared tokens are not). */
const HIT_TOKENS = 64;
/** Workers heartbeat every second here; three heartbeats per offline window, as docs/protocol.md advises. */
const OFFLINE_AFTER_MS = 3000;
const PREFIX_PIPELINE = [...DEFAULT_PIPELINE.slice(0, DEFAULT_PIPELINE.indexOf('select')), 'prefix', ...DEFAULT_PIPELINE.slice(DEFAULT_PIPELINE.indexOf('select'))];

type Message = { role: string; content: string };

interface Turn {
  ok: boolean;
  error?: string;
  /** ms from sending to the first content chunk. */
  ttft: number;
  /** ms when the answer ended, from the start of the workload. */
  endedAt: number;
  text: string;
  prompt: number;
  cached: number;
}

interface Strategy {
  name: string;
  overrides: Record<string, unknown>;
  /** Sends each user's id as x-session-id. */
  sessions?: boolean;
}

const STRATEGIES: Strategy[] = [
  { name: 'round-robin', overrides: { 'cluster.requestRouting.strategy': 'round-robin' } },
  { name: 'least-outstanding', overrides: {} },
  { name: 'p2c', overrides: { 'cluster.requestRouting.strategy': 'p2c' } },
  { name: 'sticky sessions', overrides: {}, sessions: true },
  { name: 'prefix', overrides: { 'cluster.pipeline': PREFIX_PIPELINE } },
];

/** Deterministic filler text: `chars` characters of words picked by a small LCG from `seed`. */
function filler(seed: string, chars: number): string {
  const words = ['cache', 'prefix', 'router', 'worker', 'token', 'prompt', 'metal', 'unified', 'memory', 'latency', 'batch', 'model', 'stream'];
  let h = 2166136261;
  for (let i = 0; i < seed.length; i++) h = Math.imul(h ^ seed.charCodeAt(i), 16777619) >>> 0;
  let out = `${seed}:`;
  while (out.length < chars) {
    h = (Math.imul(h, 1664525) + 1013904223) >>> 0;
    out += ` ${words[h % words.length]}${h % 97}`;
  }
  return out.slice(0, chars);
}

/** One streamed chat request: TTFT at the first content, the answer's text and usage. */
function streamChat(agent: Agent, url: string, messages: Message[], headers: Record<string, string>, t0: number): Promise<Turn> {
  const body = Buffer.from(JSON.stringify({ model: MODEL, messages, max_tokens: MAX_TOKENS, stream: true, stream_options: { include_usage: true } }));
  const u = new URL(url);
  return new Promise((resolve) => {
    const started = performance.now();
    let ttft = Number.NaN;
    let text = '';
    let prompt = 0;
    let cached = 0;
    let pending = '';
    let done = false;
    const fail = (error: string): void => resolve({ ok: false, error, ttft, endedAt: performance.now() - t0, text, prompt, cached });
    const req = httpRequest(
      { agent, host: u.hostname, port: Number(u.port), path: '/v1/chat/completions', method: 'POST', headers: { 'content-type': 'application/json', 'content-length': String(body.length), ...headers } },
      (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          res.on('end', () => fail(`HTTP ${res.statusCode}`));
          return;
        }
        res.setEncoding('utf8');
        res.on('data', (piece: string) => {
          pending += piece;
          let cut: number;
          while ((cut = pending.indexOf('\n\n')) >= 0) {
            const event = pending.slice(0, cut);
            pending = pending.slice(cut + 2);
            if (!event.startsWith('data: ')) continue;
            const data = event.slice(6);
            if (data === '[DONE]') {
              done = true;
              continue;
            }
            const json = JSON.parse(data) as { choices?: Array<{ delta?: { content?: string } }>; usage?: { prompt_tokens: number; prompt_tokens_details?: { cached_tokens: number } } };
            const content = json.choices?.[0]?.delta?.content;
            if (content) {
              if (Number.isNaN(ttft)) ttft = performance.now() - started;
              text += content;
            }
            if (json.usage) {
              prompt = json.usage.prompt_tokens;
              cached = json.usage.prompt_tokens_details?.cached_tokens ?? 0;
            }
          }
        });
        res.on('end', () => (done ? resolve({ ok: true, ttft, endedAt: performance.now() - t0, text, prompt, cached }) : fail('stream ended without [DONE]')));
        res.on('error', (err) => fail(err.message));
      },
    );
    req.on('error', (err) => fail(err.message));
    req.end(body);
  });
}

interface Workload {
  /** Runs every user's loop against `url`; returns every turn. */
  run(agent: Agent, url: string, tag: string, sessions: boolean, onTurn: (t: Turn) => void): Promise<Turn[]>;
  requests: number;
}

/** Users in closed loops, each a conversation of `turns` turns behind a shared system prompt. */
function multiTurn(users: number, turns: number): Workload {
  return {
    requests: users * turns,
    async run(agent, url, tag, sessions, onTurn) {
      const t0 = performance.now();
      const system = { role: 'system', content: filler(`${tag} shared system prompt`, SYSTEM_CHARS) };
      const all: Turn[] = [];
      await Promise.all(
        Array.from({ length: users }, async (_, u) => {
          let history: Message[] = [system];
          for (let t = 0; t < turns; t++) {
            const messages = [...history, { role: 'user', content: filler(`user ${u} turn ${t}`, 200) }];
            const r = await streamChat(agent, url, messages, sessions ? { 'x-session-id': `${tag}-user-${u}` } : {}, t0);
            all.push(r);
            onTurn(r);
            // A failed turn is retried by the user with the same history.
            if (r.ok) history = [...messages, { role: 'assistant', content: r.text }];
          }
        }),
      );
      return all;
    },
  };
}

/** Clients sending one-turn requests; each picks one of `groups` long system prompts, or none shared (`groups` 0). */
function oneShot(clients: number, perClient: number, groups: number): Workload {
  return {
    requests: clients * perClient,
    async run(agent, url, tag, _sessions, onTurn) {
      const t0 = performance.now();
      const all: Turn[] = [];
      await Promise.all(
        Array.from({ length: clients }, async (_, c) => {
          for (let i = 0; i < perClient; i++) {
            const question = { role: 'user', content: filler(`${tag} client ${c} request ${i}`, 200) };
            const messages =
              groups > 0
                ? [{ role: 'system', content: filler(`${tag} group ${(c * 7 + i * 3) % groups}`, SYSTEM_CHARS) }, question]
                : [{ role: 'user', content: filler(`${tag} unique ${c}-${i}`, SYSTEM_CHARS) }];
            const r = await streamChat(agent, url, messages, {}, t0);
            all.push(r);
            onTurn(r);
          }
        }),
      );
      return all;
    },
  };
}

interface Outcome {
  strategy: string;
  requests: number;
  errors: number;
  ttftP50: number;
  ttftP99: number;
  /** Answered requests a second. */
  throughput: number;
  /** Share of answers that reused at least HIT_TOKENS cached tokens (%). */
  hitRatio: number;
  /** Share of prompt tokens not prefilled (%). */
  prefillSaved: number;
}

/** Pools rounds: TTFT over every answer, throughput over the rounds' summed durations. */
function outcome(strategy: string, rounds: Turn[][]): Outcome {
  const turns = rounds.flat();
  const ok = turns.filter((t) => t.ok);
  const ttft = summarize(ok.map((t) => t.ttft));
  const elapsed = rounds.reduce((a, r) => a + Math.max(...r.map((t) => t.endedAt)), 0);
  const prompt = ok.reduce((a, t) => a + t.prompt, 0);
  const cached = ok.reduce((a, t) => a + t.cached, 0);
  return {
    strategy,
    requests: ok.length,
    errors: turns.length - ok.length,
    ttftP50: ttft.p50,
    ttftP99: ttft.p99,
    throughput: (ok.length / elapsed) * 1000,
    hitRatio: ok.length ? (100 * ok.filter((t) => t.cached >= HIT_TOKENS).length) / ok.length : Number.NaN,
    prefillSaved: prompt ? (100 * cached) / prompt : Number.NaN,
  };
}

async function measure(label: string, workload: Workload, agent: Agent, router: ChildHandle, strategy: Strategy, tag: string): Promise<Turn[]> {
  const bar = progress(`8 · ${label}, ${strategy.name}`.padEnd(52));
  let n = 0;
  const turns = await workload.run(agent, router.url, `${tag} ${strategy.name}`, strategy.sessions === true, () => {
    if (++n % 16 === 0) bar.update(n / workload.requests, `${n} req`);
  });
  const o = outcome(strategy.name, [turns]);
  bar.done(`TTFT p50 ${o.ttftP50.toFixed(1)} ms, p99 ${o.ttftP99.toFixed(1)} ms · ${o.throughput.toFixed(1)} req/s · hits ${o.hitRatio.toFixed(0)} %${o.errors ? ` · ${o.errors} errors` : ''}`);
  if (o.errors > 0) throw new Error(`${label}, ${strategy.name}: ${o.errors} of ${turns.length} requests failed (${turns.find((t) => !t.ok)?.error})`);
  return turns;
}

function figures(run: BenchRun, label: string, results: Outcome[], targets: { p50Ratio?: number; p99Extra?: number; within?: number; beatsSticky?: boolean }): void {
  const base = results.find((r) => r.strategy === 'least-outstanding');
  const prefix = results.find((r) => r.strategy === 'prefix');
  if (!base || !prefix) return;
  const vs = { label: 'least-outstanding', value: 0 };
  for (const r of results) {
    if (r === base) continue;
    const isPrefix = r === prefix;
    let target: string | undefined;
    let met: boolean | undefined;
    if (isPrefix && targets.p50Ratio !== undefined) [target, met] = [`≤ ${targets.p50Ratio}× least-outstanding`, r.ttftP50 <= targets.p50Ratio * base.ttftP50];
    if (isPrefix && targets.within !== undefined) [target, met] = [`within ${targets.within * 100} %`, r.ttftP50 <= (1 + targets.within) * base.ttftP50];
    run.add({ scenario: 8, name: `${label}: ${r.strategy}, TTFT p50`, value: r.ttftP50, unit: 'ms', baseline: { ...vs, value: base.ttftP50 }, target, met });
    const p99Target = isPrefix && targets.p99Extra !== undefined ? `≤ +${targets.p99Extra * 100} %` : undefined;
    run.add({
      scenario: 8,
      name: `${label}: ${r.strategy}, TTFT p99`,
      value: r.ttftP99,
      unit: 'ms',
      baseline: { ...vs, value: base.ttftP99 },
      target: p99Target,
      met: p99Target ? r.ttftP99 <= (1 + (targets.p99Extra ?? 0)) * base.ttftP99 : undefined,
    });
    const tpTarget = isPrefix && targets.within !== undefined ? `within ${targets.within * 100} %` : undefined;
    run.add({
      scenario: 8,
      name: `${label}: ${r.strategy}, throughput`,
      value: r.throughput,
      unit: 'req/s',
      baseline: { ...vs, value: base.throughput },
      target: tpTarget,
      met: tpTarget ? r.throughput >= (1 - (targets.within ?? 0)) * base.throughput : undefined,
      note: `cache hits ${r.hitRatio.toFixed(0)} % (least-outstanding ${base.hitRatio.toFixed(0)} %), prompt tokens from cache ${r.prefillSaved.toFixed(0)} % (${base.prefillSaved.toFixed(0)} %)`,
    });
  }
  const sticky = results.find((r) => r.strategy === 'sticky sessions');
  if (targets.beatsSticky && sticky) {
    run.add({
      scenario: 8,
      name: `${label}: prefix vs sticky sessions, TTFT p50`,
      value: prefix.ttftP50,
      unit: 'ms',
      baseline: { label: 'sticky sessions', value: sticky.ttftP50 },
      target: '< sticky sessions',
      met: prefix.ttftP50 < sticky.ttftP50,
    });
  }
}

/**
 * One worker SIGKILLed a quarter of the way through a long multi-turn run under `prefix`. Its
 * in-flight requests wait until the controller sees it offline (no heartbeat for
 * discovery.offlineAfterMs, or a "no responders"), then fail over; its conversations move.
 */
async function killed(run: BenchRun, agent: Agent, router: ChildHandle, workers: Proc[], users: number, turns: number): Promise<void> {
  const workload = multiTurn(users, turns);
  const settleMs = OFFLINE_AFTER_MS + 2000;
  const bar = progress('8 · multi-turn, prefix, one worker killed'.padEnd(52));
  let n = 0;
  let killedAt = Number.NaN;
  const victim = workers[workers.length - 1];
  const t0 = performance.now();
  const turnsDone = await workload.run(agent, router.url, 'killed prefix', false, () => {
    n++;
    if (n % 16 === 0) bar.update(n / workload.requests, `${n} req`);
    if (n === Math.floor(workload.requests / 4)) {
      killedAt = performance.now() - t0;
      victim.process.kill('SIGKILL');
    }
  });
  const ok = turnsDone.filter((t) => t.ok);
  const errors = turnsDone.length - ok.length;
  const window = (from: number, to: number) => summarize(ok.filter((t) => t.endedAt >= from && t.endedAt < to).map((t) => t.ttft));
  const before = window(0, killedAt);
  const during = window(killedAt, killedAt + settleMs);
  const after = window(killedAt + settleMs, Number.POSITIVE_INFINITY);
  bar.done(`p99 before ${before.p99.toFixed(1)} ms · ${settleMs / 1000} s after the kill ${during.p99.toFixed(1)} ms · then ${after.p99.toFixed(1)} ms · ${errors} errors`);
  run.raw.prefixKilled = { killedAt, before, during, after, errors };
  run.add({ scenario: 8, name: 'one worker killed: requests failed', value: errors, unit: '', target: '0', met: errors === 0, note: `${ok.length} answered; retries and stream resume cover the dead worker` });
  run.add({
    scenario: 8,
    name: `one worker killed: TTFT p99, answers ending in the first ${settleMs / 1000} s after the kill`,
    value: during.p99,
    unit: 'ms',
    baseline: { label: 'before the kill', value: before.p99 },
    note: `${during.count} requests; the dead worker's in-flight requests wait until it is seen offline (offlineAfterMs ${OFFLINE_AFTER_MS} ms here, heartbeats every 1 s), then fail over`,
  });
  run.add({
    scenario: 8,
    name: `one worker killed: TTFT p99, from ${settleMs / 1000} s after the kill`,
    value: after.p99,
    unit: 'ms',
    baseline: { label: 'before the kill', value: before.p99 },
    target: '≤ 2× before (3 workers carry the load of 4)',
    met: after.count > 0 ? after.p99 <= 2 * before.p99 : undefined,
    note: `${after.count} requests`,
  });
}

export async function prefixRouting(run: BenchRun): Promise<void> {
  const lab = await Lab.start();
  const agent = new Agent({ keepAlive: true, maxSockets: 512 });
  try {
    const workers: Proc[] = [];
    for (let i = 1; i <= WORKERS; i++) {
      // No delay between tokens: time to first token is the base 5 ms plus the prefill queue, and the
      // answer comes in one chunk, so the CPU of streaming does not drown the prefill it measures.
      workers.push(lab.worker({ id: `pc${i}`, ttftMs: 5, tokenMs: 0, maxConcurrent: 32, promptCacheSize: CACHE, prefillUsPerToken: PREFILL_US }));
    }
    const routers = new Map<string, ChildHandle>();
    for (const s of STRATEGIES) {
      const r = await lab.child({ role: 'router', overrides: { 'discovery.offlineAfterMs': OFFLINE_AFTER_MS, ...s.overrides } }, `router (${s.name})`);
      await lab.waitOnline(r, WORKERS);
      routers.set(s.name, r);
    }
    // Strategies take turns, round after round, so a change in the machine's load (other work on
    // it) falls on all of them alike; each outcome pools its rounds.
    const rounds = run.pick(3, 1);
    const all = async (label: string, workload: Workload, only?: string[]): Promise<Outcome[]> => {
      const chosen = STRATEGIES.filter((s) => !only || only.includes(s.name));
      const turns = new Map<string, Turn[][]>(chosen.map((s) => [s.name, []]));
      for (let r = 0; r < rounds; r++) {
        for (const s of chosen) turns.get(s.name)!.push(await measure(`${label} (round ${r + 1}/${rounds})`, workload, agent, routers.get(s.name)!, s, `${label} ${r}`));
      }
      return chosen.map((s) => outcome(s.name, turns.get(s.name)!));
    };
    const users = run.pick(32, 8);
    const turns = run.pick(8, 3);
    const mt = await all(`multi-turn ${users}×${turns}`, multiTurn(users, turns));
    figures(run, `multi-turn, ${users} users × ${turns} turns`, mt, { p50Ratio: 0.5, beatsSticky: true });
    const many = run.pick(64, 12);
    const crowd = await all(`multi-turn ${many}×${turns}`, multiTurn(many, turns), ['least-outstanding', 'sticky sessions', 'prefix']);
    figures(run, `multi-turn, ${many} users × ${turns} turns, ${WORKERS * CACHE} cache slots`, crowd, { beatsSticky: true });
    const clients = run.pick(32, 8);
    const per = run.pick(8, 3);
    const groups = await all('shared-prefix groups', oneShot(clients, per, 8), ['least-outstanding', 'prefix']);
    figures(run, `shared-prefix groups (8 system prompts, ${clients}×${per} requests)`, groups, { p50Ratio: 1, p99Extra: 0.1 });
    const none = await all('no sharing', oneShot(clients, per, 0), ['least-outstanding', 'prefix']);
    figures(run, `no sharing (${clients}×${per} unique prompts)`, none, { within: 0.05 });
    run.raw.prefix = { multiTurn: mt, crowd, groups, none };
    await killed(run, agent, routers.get('prefix')!, workers, users, run.pick(40, 6));
  } finally {
    agent.destroy();
    await lab.stop();
  }
}
