/**
 * The assembler: turns `cluster.pipeline` into one chain. koa-compose rejects a second
 * `next()`, so the chain is cut at its boundary, the one middleware defined with `boundary: true`
 * (`retry` by default): what stands before it, and the boundary itself, is composed as the request
 * part; what stands after it (plus dispatch) as the attempt part, whose runner (src/attempt.ts) the
 * boundary gets as an argument and calls once per attempt. Without a boundary the whole list is the
 * attempt part, run once. Several boundaries nest: `hedge` after `retry` is what retry runs per
 * attempt, and hedge gets the attempt runner (and may run two attempts at once).
 */
import compose from 'koa-compose';
import { isAbsolute, resolve } from 'node:path';
import { attemptRunner, candidatesFor, type AttemptRunner } from './attempt';
import { ConfigError, type RouterConfig } from './config';
import type { Middleware, RouteContext } from './context';
import type { BreakerBook } from './controller/breakers';
import { dispatch, type ReplyMux } from './controller/dispatch';
import type { EventBus } from './controller/events';
import type { RouterMetrics } from './controller/metrics';
import type { BusGuard } from './controller/bus-guard';
import type { ControllerPeers } from './controller/peers';
import type { WorkerRegistry } from './controller/registry';
import type { RetryBudget } from './controller/retry-budget';
import type { SessionRegistry } from './controller/sessions';
import { instantiate, isMiddlewareDefinition, type AnyDefinition, type MiddlewareDeps } from './define';
import type { Subjects } from './protocol';
import type { NatsConnection } from '@nats-io/transport-node';
import { BUILTIN_MIDDLEWARE } from '../middleware';

/** The controller's shared objects: what middleware get (MiddlewareDeps), plus what dispatch needs. */
export interface RouterDeps extends MiddlewareDeps {
  nc: NatsConnection;
  mux: ReplyMux;
  subjects: Subjects;
  registry: WorkerRegistry;
  sessions: SessionRegistry;
  breakers: BreakerBook;
  budget: RetryBudget;
  metrics: RouterMetrics;
  /** The operator event bus (cluster API, dashboard, traces); absent in bare setups. */
  bus?: EventBus;
  /** What the controller believes of the bus: counts dropped replies (docs/security.md). */
  guard?: BusGuard;
  /** This controller's id among its peers, and the peers it hears (controller heartbeats). */
  controllerId?: string;
  peers?: ControllerPeers;
}

export interface Pipeline {
  readonly names: readonly string[];
  run(ctx: RouteContext): Promise<void>;
}

/** A module exporting a plain factory `(config, deps) => Middleware` rather than a definition. */
type PlainFactory = (config: RouterConfig, deps: MiddlewareDeps) => Middleware;

/** One pipeline entry, resolved: a definition, or a module's plain factory (never a boundary). */
type Entry = { name: string; def: AnyDefinition } | { name: string; factory: PlainFactory };

function isModulePath(entry: string): boolean {
  return entry.startsWith('./') || entry.startsWith('../') || isAbsolute(entry);
}

/**
 * A module path's export: `default`, `middleware`, or the module itself; a definition made with
 * defineMiddleware, or a plain factory. CommonJS and ES modules load alike (require of an ES
 * module is supported by every Node version this runs on).
 */
function loadModule(entry: string, baseDir: string): Entry {
  const file = resolve(baseDir, entry);
  let mod: Record<string, unknown>;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    mod = require(file) as Record<string, unknown>;
  } catch (err) {
    throw new ConfigError(`cluster.pipeline: cannot load middleware module '${entry}' (${file}): ${(err as Error).message}`, { cause: err });
  }
  const exported = (mod.default ?? mod.middleware ?? mod) as unknown;
  if (isMiddlewareDefinition(exported)) return { name: entry, def: exported };
  if (typeof exported !== 'function') {
    throw new ConfigError(`cluster.pipeline: module '${entry}' must export a middleware definition or a factory function (default or 'middleware')`);
  }
  return { name: entry, factory: exported as PlainFactory };
}

function resolveEntry(name: string, baseDir: string): Entry {
  if (name === 'dispatch') throw new ConfigError("cluster.pipeline: 'dispatch' always ends the chain; do not list it");
  if (isModulePath(name)) return loadModule(name, baseDir);
  const def = Object.hasOwn(BUILTIN_MIDDLEWARE, name) ? BUILTIN_MIDDLEWARE[name] : undefined;
  if (!def) {
    throw new ConfigError(
      `cluster.pipeline: unknown middleware '${name}' (known: ${Object.keys(BUILTIN_MIDDLEWARE).join(', ')}; or a module path starting with ./ ../ or /)`,
    );
  }
  return { name, def };
}

/** Builds one entry: options from the configuration merged over the defaults, deps, the runner. */
function build(entry: Entry, config: RouterConfig, deps: MiddlewareDeps, runAttempt?: AttemptRunner): Middleware {
  let mw: unknown;
  if ('factory' in entry) {
    mw = entry.factory(config, deps);
  } else {
    mw = instantiate(entry.def, entry.def.fromConfig?.(config), deps, runAttempt);
  }
  if (typeof mw !== 'function') throw new ConfigError(`cluster.pipeline: '${entry.name}' did not make a middleware function`);
  return mw as Middleware;
}

/**
 * Builds the chain. Throws ConfigError naming an unknown or repeated entry.
 * `baseDir` resolves module paths (the config file's folder).
 */
export function assemblePipeline(config: RouterConfig, deps: RouterDeps, baseDir: string = process.cwd()): Pipeline {
  const names = config.cluster.pipeline;
  const seen = new Set<string>();
  const entries = names.map((name) => {
    if (seen.has(name)) throw new ConfigError(`cluster.pipeline: '${name}' is listed twice`);
    seen.add(name);
    return resolveEntry(name, baseDir);
  });
  const boundaries: number[] = [];
  entries.forEach((e, i) => {
    if ('def' in e && e.def.boundary) boundaries.push(i);
  });
  const attemptPart = entries.slice((boundaries.at(-1) ?? -1) + 1).map((e) => build(e, config, deps));
  const runAttempt = attemptRunner(compose<RouteContext>([...attemptPart, dispatch(deps)]), {
    candidates: (ctx) => candidatesFor(ctx, deps.registry),
    events: deps.events,
  });
  if (boundaries.length === 0) return { names: [...names], run: runAttempt };
  // Boundaries nest (retry, then hedge): each inner one, with what stands between it and the one
  // before, is what the outer one runs per attempt; the innermost gets the attempt runner.
  let runner: AttemptRunner = runAttempt;
  for (let k = boundaries.length - 1; k > 0; k--) {
    const inner = build(entries[boundaries[k]], config, deps, runner);
    const between = entries.slice(boundaries[k - 1] + 1, boundaries[k]).map((e) => build(e, config, deps));
    const chain = compose<RouteContext>([...between, inner]);
    runner = (ctx) => chain(ctx);
  }
  const first = boundaries[0];
  const requestPart = [...entries.slice(0, first).map((e) => build(e, config, deps)), build(entries[first], config, deps, runner)];
  const requestChain = compose<RouteContext>(requestPart);
  return { names: [...names], run: (ctx) => requestChain(ctx) };
}
