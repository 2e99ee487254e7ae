import { answerUsage, type Middleware, type RouteContext } from '../src/context';
import { defineMiddleware, type MiddlewareDeps } from '../src/define';
import { conversation, PrefixIndex, withAnswer, type Conversation } from '../src/prefix-index';
import type { WorkerInfo } from '../src/types';
import { saturated } from './select';

export interface PrefixOptions {
  /** A predicted cached prefix shorter than this (tokens) counts as none; also the least reported `cached_tokens` that is a hit. */
  minPrefixTokens: number;
  /**
   * Leave the worker with the longest predicted prefix when its predicted prefill work (uncached
   * tokens queued there by this controller, plus this prompt's uncached tokens) exceeds the
   * cheapest other candidate's by more than this many tokens.
   */
  ttftMarginTokens: number;
  /** Leave it too when it has this many more requests in flight than the least loaded candidate. */
  maxImbalance: number;
  /** Cache entries assumed for a worker that does not advertise `prompt_cache`. */
  defaultCacheSize: number;
}

export interface PrefixDeps {
  /** Online workers: the index forgets the others. */
  registry?: Pick<MiddlewareDeps['registry'], 'online'>;
  metrics?: MiddlewareDeps['metrics'];
  /** The index (default: a new one); injected by unit tests to look inside. */
  index?: PrefixIndex;
}

/** Why the attempt went where it went (the `decision` label of mlx_router_prefix_decisions_total). */
export type PrefixDecision = 'prefix' | 'load' | 'imbalance' | 'ttft' | 'session' | 'saturated' | 'cache-full';

const CHAIN = 'prefix.conversation';

/** Load as select counts it: this controller's in-flight requests plus other controllers'. */
function load(w: WorkerInfo): number {
  return w.outstanding + w.foreignInFlight;
}

/** The reported `cached_tokens` of the answer, when the engine reported one. */
function reportedCached(ctx: RouteContext): number | undefined {
  const v = answerUsage(ctx)?.prompt_tokens_details?.cached_tokens;
  return typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : undefined;
}

/**
 * prefix: prefix-cache-aware routing. Stands before `select` and narrows the attempt's candidates
 * to one worker: the one whose prompt cache is predicted (PrefixIndex) to hold the longest prefix
 * of this conversation, unless it has `maxImbalance` more requests in flight than the least loaded
 * candidate or its predicted prefill work exceeds another's by `ttftMarginTokens`; then the least
 * loaded candidate (ties: least prefill work). A request that would add an entry to a worker whose
 * cache is full of live conversations (PrefixIndex.pressured) goes elsewhere when another
 * candidate has room, so conversations spread over the cluster's cache slots instead of evicting
 * each other on the worker that first held their shared system prompt. A session's sticky worker,
 * when free, wins. Untried workers first, so a retry or resume goes to the next-longest predicted
 * prefix. When every
 * candidate is saturated it narrows nothing and `select` waits as usual. After the attempt, the
 * answer's `cached_tokens` checks the prediction: a predicted hit the engine missed drops that
 * worker's entries. Only answered requests are recorded: until then the engine holds nothing of the
 * prompt, and a request sharing its prefix would pay the whole prefill there behind it.
 *
 * @example pipeline: [metrics, session, retry, breaker, prefix, select, timeout, health]
 */
export const prefix = defineMiddleware<PrefixOptions, PrefixDeps>({
  name: 'prefix',
  defaults: { minPrefixTokens: 64, ttftMarginTokens: 256, maxImbalance: 8, defaultCacheSize: 10 },
  fromConfig: (c) => c.cluster.requestRouting.prefix,
  factory: prefixMiddleware,
});

function prefixMiddleware(options: PrefixOptions, deps: PrefixDeps = {}): Middleware {
  const index = deps.index ?? new PrefixIndex(options.defaultCacheSize);
  /** Uncached prompt tokens this controller has in flight per worker: its queued prefill work. */
  const queued = new Map<string, number>();
  const m = deps.metrics;

  return async function prefix(ctx: RouteContext, next): Promise<void> {
    let conv = ctx.state[CHAIN] as Conversation | undefined;
    if (!conv) ctx.state[CHAIN] = conv = conversation(ctx.request.model, ctx.request.messages);
    if (deps.registry) index.retain(new Set(deps.registry.online().map((w) => w.id)));

    const tried = new Set<string>();
    for (const a of ctx.attempts) if (a.worker) tried.add(a.worker);
    const untried = ctx.candidates.filter((w) => !tried.has(w.id));
    const free = (untried.length > 0 ? untried : ctx.candidates).filter((w) => !saturated(w));

    let chosen: WorkerInfo | undefined;
    let decision: PrefixDecision = 'saturated';
    const predicted = new Map<string, number>();
    for (const w of free) {
      index.sync(w.id, w.promptCache);
      const p = index.predict(w.id, conv);
      predicted.set(w.id, p >= options.minPrefixTokens ? p : 0);
    }
    const work = (w: WorkerInfo): number => (queued.get(w.id) ?? 0) + conv.total - (predicted.get(w.id) ?? 0);
    // Leave out workers where this request would evict a live conversation, while another has room.
    const roomy = free.filter((w) => !(index.pressured(w.id) && !index.continues(w.id, conv)));
    const pool = roomy.length > 0 ? roomy : free;
    if (pool.length > 0) {
      let best: WorkerInfo | undefined;
      let leastLoaded = pool[0];
      let leastWork = pool[0];
      for (const w of pool) {
        const p = predicted.get(w.id) ?? 0;
        if (p > 0 && (!best || p > (predicted.get(best.id) ?? 0) || (p === predicted.get(best.id) && work(w) < work(best)))) best = w;
        if (load(w) < load(leastLoaded) || (load(w) === load(leastLoaded) && work(w) < work(leastLoaded))) leastLoaded = w;
        if (work(w) < work(leastWork)) leastWork = w;
      }
      const sticky = ctx.stickyWorker ? free.find((w) => w.id === ctx.stickyWorker) : undefined;
      if (sticky) [chosen, decision] = [sticky, 'session'];
      else if (!best) [chosen, decision] = [leastLoaded, 'load'];
      else if (load(best) - load(leastLoaded) >= options.maxImbalance) [chosen, decision] = [leastLoaded, 'imbalance'];
      else if (work(best) - work(leastWork) > options.ttftMarginTokens) [chosen, decision] = [leastWork, 'ttft'];
      else [chosen, decision] = [best, 'prefix'];
      // A longer prefix was on a worker left out for cache pressure.
      const went = predicted.get(chosen.id) ?? 0;
      if (!sticky && free.some((w) => !pool.includes(w) && (predicted.get(w.id) ?? 0) > went)) decision = 'cache-full';
      ctx.candidates = [chosen];
    }
    m?.prefixDecisions.inc({ decision });

    const expected = chosen ? (predicted.get(chosen.id) ?? 0) : 0;
    const uncached = conv.total - expected;
    if (chosen) {
      index.route(chosen.id, conv.hashes, tried.size === 0);
      queued.set(chosen.id, (queued.get(chosen.id) ?? 0) + uncached);
    }
    try {
      await next();
    } finally {
      if (chosen) {
        const left = (queued.get(chosen.id) ?? 0) - uncached;
        if (left > 0) queued.set(chosen.id, left);
        else queued.delete(chosen.id);
      }
    }

    // The attempt succeeded: check the prediction against what the engine reports.
    const worker = ctx.worker;
    if (!worker) return;
    const cached = reportedCached(ctx);
    const predictedHit = worker === chosen && expected > 0;
    const reportedHit = cached === undefined ? undefined : cached >= options.minPrefixTokens;
    const label = { worker: worker.id };
    m?.prefixRequests.inc({ ...label, predicted: predictedHit ? 'hit' : 'miss', reported: reportedHit === undefined ? 'unknown' : reportedHit ? 'hit' : 'miss' });
    if (cached !== undefined) {
      m?.prefixCachedTokens.observe(label, cached);
      m?.prefixSavedTokens.inc(label, cached);
    }
    if (predictedHit && reportedHit === false) {
      ctx.log.debug({ worker: worker.id, predicted: expected, cached }, 'prefix: predicted hit missed; dropping the worker’s entries');
      index.drop(worker.id);
      m?.prefixDrops.inc(label);
    }
    if (worker !== chosen) index.sync(worker.id, worker.promptCache);
    const answer = ctx.result?.text ?? ctx.sink?.streamed;
    index.record(worker.id, answer ? withAnswer(conv, answer) : conv.hashes);
  };
}
