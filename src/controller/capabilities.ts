/**
 * Which workers can serve a request: the protocol version and per-model capabilities a worker
 * advertises in its heartbeats, against what the request needs (its endpoint; tools; image parts).
 */
import { RouterError } from '../errors';
import type { Heartbeat, WireRequest } from '../protocol';
import { CAPABILITIES, canServe, PROTOCOL_V2, type Capability } from '../protocol-v2';

export type { Capability };
export { canServe };

/** The version and capabilities a heartbeat advertises; v1 workers serve chat only. */
export function readCapabilities(hb: Heartbeat, models: readonly string[]): { version: number; capabilities: Record<string, Capability[]> } {
  const version = typeof hb.version === 'number' && Number.isInteger(hb.version) && hb.version >= 1 ? hb.version : 1;
  const capabilities: Record<string, Capability[]> = {};
  const advertised = version >= PROTOCOL_V2 && hb.capabilities && typeof hb.capabilities === 'object' ? hb.capabilities : undefined;
  for (const m of models) {
    const list = advertised?.[m];
    capabilities[m] = Array.isArray(list) ? list.filter((c): c is Capability => (CAPABILITIES as readonly string[]).includes(c)) : ['chat'];
  }
  return { version, capabilities };
}

/**
 * Refuses at once, as a 400 naming the capability, a request no known worker of its model can
 * serve (an embedding from chat-only workers, an image for a text model), rather than waiting.
 */
export function checkCapabilities(workers: Iterable<{ models: string[]; capabilities: Record<string, Capability[]> }>, request: Pick<WireRequest, 'model' | 'needs'>): void {
  const serving = [...workers].filter((w) => w.models.includes(request.model));
  if (serving.length === 0 || serving.some((w) => canServe(w, request))) return;
  const missing = (request.needs ?? []).filter((n) => !serving.some((w) => (w.capabilities[request.model] ?? ['chat']).includes(n)));
  throw new RouterError(
    'REQUEST_VALIDATION_FAILED',
    `no worker serves model '${request.model}' with ${missing.map((m) => `'${m}'`).join(', ') || 'all of ' + (request.needs ?? []).join(', ')} (see GET /v1/models/${request.model})`,
    { param: 'model' },
  );
}
