/**
 * mlx-router's public API: what a middleware author imports from 'mlx-router'. Everything else
 * in the package is internal and may change without notice.
 *
 *   import { defineMiddleware, RouterError, type RouteContext } from 'mlx-router';
 */

// Writing a middleware.
export type { Admission, AttemptState, ContextInit, HedgeReport, Middleware, Next, RequestMetrics, RouteContext, StreamSink } from './context';
export { createContext, newAttempt } from './context';
export {
  defineMiddleware,
  isMiddlewareDefinition,
  type BoundaryDefinition,
  type BoundarySpec,
  type MiddlewareDefinition,
  type MiddlewareDeps,
  type MiddlewareSpec,
} from './define';
export type { BreakerPermit, Breakers, ClientKey, FailureDetail, RetryBudgetView, RouterInstruments, SessionStore, WorkerDirectory, WorkerInfo } from './types';
export { Listeners } from './listeners';

// Running attempts: what a boundary gets, and what tests of a middleware run it with.
export { attemptRunner, candidatesFor, type AttemptRunner, type AttemptRunnerOptions, type RouterEvent } from './attempt';

// Errors: the catalogue of stable codes, the error class and its guards.
export {
  ERROR_CATALOGUE,
  OUTCOME_CLASSES,
  countsAgainstWorker,
  isErrorCode,
  isRetryableOutcome,
  isRouterError,
  RouterError,
  toRouterError,
  type AttemptRecord,
  type ErrorCode,
  type OutcomeClass,
  type RouterErrorOptions,
} from './errors';

// Time and logs.
export { processTimer, systemClock, type Clock, type ClockTimer } from './clock';
export { createLogger, silentLogger, type Logger } from './logger';

// What a request and its answer look like on the way to a worker.
export type { ChatMessage, FinishReason, Usage, WireEnd, WireRequest, WireResult } from './protocol';

// The built-in middleware, as definitions (to wrap, reuse or test against).
export { breaker, health, hedge, metrics, retry, select, session, timeout } from '../middleware';
