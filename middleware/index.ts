/**
 * The built-in middleware, by the name `cluster.pipeline` uses. Each is a definition
 * (defineMiddleware): its defaults, how its options come from the configuration, and whether it
 * is a boundary. Deps and, for a boundary, the attempt runner are passed by the assembler.
 */
import type { AnyDefinition } from '../src/define';
import { breaker } from './breaker';
import { health } from './health';
import { hedge } from './hedge';
import { limits } from './limits';
import { metrics } from './metrics';
import { prefix } from './prefix';
import { priority } from './priority';
import { retry } from './retry';
import { select } from './select';
import { session } from './session';
import { timeout } from './timeout';

export const BUILTIN_MIDDLEWARE: Readonly<Record<string, AnyDefinition>> = { metrics, limits, session, retry, hedge, breaker, prefix, priority, select, timeout, health };

export { breaker, health, hedge, limits, metrics, prefix, priority, retry, select, session, timeout };
