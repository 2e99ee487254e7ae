/**
 * defineMiddleware: the one way a middleware is declared, built-in or third-party. A definition
 * names the middleware, holds its option defaults (merged into whatever options it is given, so
 * the defaults documented beside the options are the ones the code uses), says how options come
 * from the router's configuration, and whether it is a boundary: a middleware that runs attempts
 * (retry, hedging, fallback). A boundary's factory gets the attempt runner as its third argument
 * and calls it once per attempt instead of calling `next`.
 *
 *   export const audit = defineMiddleware({
 *     name: 'audit',
 *     defaults: { header: 'x-audit' },
 *     factory: (options, deps) => async (ctx, next) => { ...; await next(); },
 *   });
 *   const mw = audit({ header: 'x-trace' }, deps); // options merged over the defaults
 */
import type { AttemptRunner, RouterEvent } from './attempt';
import type { Clock } from './clock';
import type { RouterConfig } from './config';
import type { Middleware } from './context';
import type { Listeners } from './listeners';
import type { Logger } from './logger';
import type { Breakers, RetryBudgetView, RouterInstruments, SessionMoveLog, SessionStore, WorkerDirectory } from './types';

/** The controller's shared objects, injected into every middleware factory; never module state. */
export interface MiddlewareDeps {
  registry: WorkerDirectory;
  breakers: Breakers;
  budget: RetryBudgetView;
  sessions: SessionStore;
  /** Shares session moves with the other controllers, once the JetStream bucket is open. */
  sessionMoves?: SessionMoveLog;
  metrics: RouterInstruments;
  /** Attempt ends and other routing events, for observers such as `metrics`. */
  events: Listeners<RouterEvent>;
  clock: Clock;
  log: Logger;
  /** Random source in [0, 1): jitter and p2c (default Math.random). */
  random: () => number;
}

interface SpecBase<O extends object> {
  /** The name `cluster.pipeline` uses for a built-in; for a module, its name in logs. */
  name: string;
  /** Every option's default. */
  defaults: O;
  /** Options taken from the router's configuration (merged over the defaults). */
  fromConfig?: (config: RouterConfig) => Partial<O>;
}

export interface MiddlewareSpec<O extends object, D> extends SpecBase<O> {
  boundary?: false;
  factory(options: O, deps: D): Middleware;
}

export interface BoundarySpec<O extends object, D> extends SpecBase<O> {
  /** Runs attempts: gets the runner of the chain after it and never calls `next`. */
  boundary: true;
  factory(options: O, deps: D, runAttempt: AttemptRunner): Middleware;
}

/** Whether `deps` may be left out: only when the middleware needs none of them. */
type DepsArg<D> = object extends D ? [deps?: D] : [deps: D];

interface DefinitionMeta<O extends object> {
  readonly middlewareName: string;
  readonly defaults: Readonly<O>;
  readonly fromConfig?: (config: RouterConfig) => Partial<O>;
  /** The defaults with `options` merged over them (undefined values keep the default). */
  options(options?: Partial<O>): O;
}

/** A middleware definition: call it with options (merged over the defaults) and deps. */
export type MiddlewareDefinition<O extends object = object, D = MiddlewareDeps> = DefinitionMeta<O> & {
  readonly boundary: false;
  (options?: Partial<O>, ...deps: DepsArg<D>): Middleware;
};

/** A boundary definition: call it with options, deps and the attempt runner it drives. */
export type BoundaryDefinition<O extends object = object, D = MiddlewareDeps> = DefinitionMeta<O> & {
  readonly boundary: true;
  (options: Partial<O> | undefined, deps: D, runAttempt: AttemptRunner): Middleware;
};

export type AnyDefinition = MiddlewareDefinition<object, never> | BoundaryDefinition<object, never>;

function merge<O extends object>(defaults: O, options?: Partial<O>): O {
  const merged = { ...defaults };
  if (options) {
    for (const key of Object.keys(options) as Array<keyof O>) {
      const value = options[key];
      if (value !== undefined) merged[key] = value as O[keyof O];
    }
  }
  return merged;
}

export function defineMiddleware<O extends object, D = MiddlewareDeps>(spec: BoundarySpec<O, D>): BoundaryDefinition<O, D>;
export function defineMiddleware<O extends object, D = MiddlewareDeps>(spec: MiddlewareSpec<O, D>): MiddlewareDefinition<O, D>;
export function defineMiddleware<O extends object, D>(spec: MiddlewareSpec<O, D> | BoundarySpec<O, D>): MiddlewareDefinition<O, D> | BoundaryDefinition<O, D> {
  if (typeof spec.name !== 'string' || spec.name.length === 0) throw new TypeError('defineMiddleware: name must be a non-empty string');
  if (typeof spec.factory !== 'function') throw new TypeError(`defineMiddleware(${spec.name}): factory must be a function`);
  const defaults = Object.freeze({ ...spec.defaults });
  const options = (partial?: Partial<O>): O => merge(defaults as O, partial);
  const build = (partial: Partial<O> | undefined, deps: D, runAttempt?: AttemptRunner): Middleware => {
    if (spec.boundary === true) {
      if (typeof runAttempt !== 'function') throw new TypeError(`middleware '${spec.name}' is a boundary: it needs the attempt runner as its third argument`);
      return spec.factory(options(partial), deps, runAttempt);
    }
    return spec.factory(options(partial), deps);
  };
  const meta: DefinitionMeta<O> & { boundary: boolean } = {
    middlewareName: spec.name,
    defaults,
    fromConfig: spec.fromConfig,
    options,
    boundary: spec.boundary === true,
  };
  return Object.assign(build, meta) as unknown as MiddlewareDefinition<O, D> | BoundaryDefinition<O, D>;
}

/** True for a value made by defineMiddleware (also one from another copy of this package). */
export function isMiddlewareDefinition(value: unknown): value is AnyDefinition {
  if (typeof value !== 'function') return false;
  const v = value as unknown as Record<string, unknown>;
  return typeof v.middlewareName === 'string' && typeof v.boundary === 'boolean' && typeof v.options === 'function';
}

/**
 * Builds any definition from untyped options (the assembler's and benchmarks' view): a boundary
 * gets `runAttempt`, which it must then have.
 */
export function instantiate(def: AnyDefinition, options: unknown, deps: MiddlewareDeps, runAttempt?: AttemptRunner): Middleware {
  const build = def as unknown as (options: unknown, deps: MiddlewareDeps, runAttempt?: AttemptRunner) => Middleware;
  return build(options, deps, runAttempt);
}
