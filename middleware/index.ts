/**
 * The built-in middleware, by the name `cluster.pipeline` uses. Each entry maps the configuration
 * to the factory's plain options; deps are injected by the assembler.
 */
import type { RouterConfig } from '../src/config';
import type { MiddlewareDefinition } from '../src/pipeline';
import { breaker } from './breaker';
import { health } from './health';
import { metrics } from './metrics';
import { retry } from './retry';
import { select } from './select';
import { session } from './session';
import { timeout } from './timeout';

const routing = (c: RouterConfig) => c.cluster.requestRouting;

export const BUILTIN_MIDDLEWARE = {
  metrics: { options: () => ({}), factory: metrics },
  session: { options: () => ({}), factory: session },
  retry: {
    options: (c: RouterConfig) => ({ ...routing(c).retry, resume: c.cluster.streaming.resume, maxResumes: c.cluster.streaming.maxResumes }),
    factory: retry,
  },
  breaker: { options: (c: RouterConfig) => ({ enabled: routing(c).circuitBreaker.enabled }), factory: breaker },
  select: {
    options: (c: RouterConfig) => ({ strategy: routing(c).strategy, workerWaitTimeoutMs: routing(c).workerWaitTimeoutMs }),
    factory: select,
  },
  timeout: {
    options: (c: RouterConfig) => ({
      attemptTimeoutMs: routing(c).attemptTimeoutMs,
      firstChunkTimeoutMs: routing(c).firstChunkTimeoutMs,
      idleTimeoutMs: routing(c).idleTimeoutMs,
      firstChunkMsPer1kPromptTokens: routing(c).firstChunkMsPer1kPromptTokens,
      deadlineShare: routing(c).deadlineShare,
      adaptive: routing(c).adaptiveLimits,
    }),
    factory: timeout,
  },
  health: { options: (c: RouterConfig) => ({ breakerEnabled: routing(c).circuitBreaker.enabled }), factory: health },
} satisfies Record<string, MiddlewareDefinition>;

export { breaker, health, metrics, retry, select, session, timeout };
