/**
 * The OpenAI endpoints beyond chat: `GET /v1/models/{id}`, legacy `POST /v1/completions` (buffered
 * and streamed, routed like chat) and `POST /v1/embeddings` (to workers that advertise embeddings
 * for the model). Each answer's shape is OpenAI's; the worker's choices and fields pass whole.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { RouterError } from '../errors';
import type { RouterDeps } from '../pipeline';
import type { WireResult } from '../protocol';
import type { Capability } from '../protocol-v2';
import type { ValidatedChat } from './validate';
import { validateCompletionRequest, validateEmbeddingRequest } from './validate-endpoints';

/** How one endpoint's answer looks: id prefix, stream chunk object, buffered body. */
export interface AnswerKind {
  idPrefix: string;
  chunkObject?: 'chat.completion.chunk' | 'text_completion';
  render(result: WireResult, base: { id: string; created: number; model: string }): Record<string, unknown>;
}

export const CHAT: AnswerKind = {
  idPrefix: 'chatcmpl-',
  render: (result, base) => ({
    ...result.extra,
    ...base,
    object: 'chat.completion',
    choices: result.choices ?? [{ index: 0, message: { role: 'assistant', content: result.text }, logprobs: null, finish_reason: result.finish_reason }],
    usage: result.usage,
  }),
};

/** A choice as a legacy completion choice (`text`), whether the worker sent text or a message. */
function textChoice(c: Record<string, unknown>): Record<string, unknown> {
  if (typeof c.text === 'string') return c;
  const message = (c.message ?? {}) as Record<string, unknown>;
  return { index: c.index ?? 0, text: typeof message.content === 'string' ? message.content : '', logprobs: c.logprobs ?? null, finish_reason: c.finish_reason ?? 'stop' };
}

const COMPLETION: AnswerKind = {
  idPrefix: 'cmpl-',
  chunkObject: 'text_completion',
  render: (result, base) => ({
    ...result.extra,
    ...base,
    object: 'text_completion',
    choices: (result.choices ?? [{ index: 0, text: result.text, logprobs: null, finish_reason: result.finish_reason }]).map(textChoice),
    usage: result.usage,
  }),
};

const EMBEDDING: AnswerKind = {
  idPrefix: 'emb-',
  render: (result, base) => {
    const { completion_tokens: _c, ...usage } = result.usage;
    return { object: 'list', ...result.extra, model: base.model, usage };
  },
};

export type Serve = (req: FastifyRequest, reply: FastifyReply, chat: ValidatedChat, kind: AnswerKind) => Promise<FastifyReply>;

/** Registers the endpoints on `app`; `serve` runs one request through the chain. */
export function registerOpenAIEndpoints(app: FastifyInstance, deps: RouterDeps, serve: Serve, checkAllowed: (req: FastifyRequest, model: string) => void = () => undefined): void {
  // Model ids hold slashes (org/name): the rest of the path is the id.
  app.get('/v1/models/*', async (req) => {
    const id = decodeURIComponent((req.params as { '*': string })['*'] ?? '');
    checkAllowed(req, id);
    const caps = new Set<Capability>();
    for (const w of deps.registry.online()) if (w.models.includes(id)) for (const c of w.capabilities[id] ?? ['chat']) caps.add(c);
    if (caps.size === 0) throw new RouterError('MODEL_NOT_FOUND', `model '${id}' is not served by any worker (see GET /v1/models)`, { param: 'model' });
    return { id, object: 'model', created: 0, owned_by: 'mlx-router', capabilities: [...caps].sort() };
  });
  app.post('/v1/completions', (req, reply) => serve(req, reply, validateCompletionRequest(req.body), COMPLETION));
  app.post('/v1/embeddings', (req, reply) => serve(req, reply, validateEmbeddingRequest(req.body), EMBEDDING));
}
