/**
 * The per-model `max_tokens` cap (cluster.maxTokens). A request's own size must never be held
 * against a worker: one asking for more tokens than the model's cap is refused with 400 before it
 * reaches any worker, instead of running until a deadline that would count as a worker failure.
 */
import type { RouterConfig } from '../config';
import { RouterError } from '../errors';
import type { WireRequest } from '../protocol';

/** The cap for `model`: its own entry in `byModel`, else `cap`. */
export function maxTokensCap(config: RouterConfig['cluster']['maxTokens'], model: string): number {
  const own = Object.prototype.hasOwnProperty.call(config.byModel, model) ? config.byModel[model] : undefined;
  return own ?? config.cap;
}

/** Throws 400 REQUEST_VALIDATION_FAILED (param max_tokens) when the request asks for more than the cap. */
export function checkMaxTokens(config: RouterConfig['cluster']['maxTokens'], request: Pick<WireRequest, 'model' | 'max_tokens'>): void {
  if (request.max_tokens === undefined) return;
  const cap = maxTokensCap(config, request.model);
  if (request.max_tokens > cap) {
    throw new RouterError('REQUEST_VALIDATION_FAILED', `max_tokens ${request.max_tokens} is above this cluster's cap of ${cap} for model ${request.model}`, {
      param: 'max_tokens',
    });
  }
}
