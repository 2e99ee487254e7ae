/**
 * A small OpenAI-compatible engine (node:http) on a free port, with switchable behaviour, for the
 * openai engine's tests. It answers `POST /v1/chat/completions` (buffered or SSE) and
 * `GET /v1/models`, records every request, and counts connections the client dropped mid-answer.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * normal: deterministic answer with usage. slow-first-token: waits `firstTokenDelayMs` first.
 * cut-stream: streams `cutAfterChunks` content chunks, then drops the connection (buffered: drops
 * it after half the body). end-early: like cut-stream, but the body ends properly (no finish_reason,
 * no [DONE]): a clean close in the middle of the answer. rate-limited: 429 with `retryAfter`. overloaded: 503 with `retryAfter`.
 * server-error: 500. status: `status` with `errorMessage`. hang: never answers. no-usage: normal
 * without any usage. in-band-error: streams two chunks, then `data: {"error": ...}`.
 */
export type FakeMode =
  | 'normal'
  | 'slow-first-token'
  | 'cut-stream'
  | 'end-early'
  | 'rate-limited'
  | 'overloaded'
  | 'server-error'
  | 'status'
  | 'hang'
  | 'no-usage'
  | 'in-band-error';

export interface FakeBehaviour {
  mode: FakeMode;
  /** Ids listed at GET /v1/models. */
  models: string[];
  /** GET /v1/models: answer, hang, or 500. */
  modelsMode: 'normal' | 'hang' | 'error';
  /** Retry-After header of rate-limited / overloaded (omitted when undefined). */
  retryAfter?: string;
  /** Status and message of mode `status`. */
  status: number;
  errorMessage: string;
  firstTokenDelayMs: number;
  tokenDelayMs: number;
  cutAfterChunks: number;
}

export interface RecordedRequest {
  method: string;
  path: string;
  headers: IncomingMessage['headers'];
  body: any;
}

export interface FakeEngine {
  /** Base URL with /v1, as a worker's --engine-url. */
  readonly url: string;
  readonly port: number;
  readonly requests: RecordedRequest[];
  /** Chat requests only. */
  chatRequests(): RecordedRequest[];
  /** Connections the client closed before the answer was complete. */
  aborted(): number;
  /** Answers in flight now (a hung request counts until its connection closes). */
  open(): number;
  behave(change: Partial<FakeBehaviour>): void;
  /** Back to normal behaviour, records cleared. */
  reset(): void;
  /** Stops listening and drops every connection: the port refuses connections. */
  close(): Promise<void>;
  /** Listens again on the same port. */
  reopen(): Promise<void>;
}

/** The words of every answer; an answer is the first max_tokens of them. */
export const FAKE_WORDS = ['The', ' fake', ' engine', ' answers', ' every', ' request', ' with', ' these', ' same', ' twelve', ' words', ' exactly'];
/** prompt_tokens the fake reports: deliberately unlike any estimate. */
export const FAKE_PROMPT_TOKENS = 17;

/** The answer for `maxTokens` (all twelve words, finish "stop", when absent or large enough). */
export function fakeAnswer(maxTokens?: number): { pieces: string[]; text: string; finish: 'stop' | 'length' } {
  const n = maxTokens === undefined ? FAKE_WORDS.length : Math.min(maxTokens, FAKE_WORDS.length);
  const pieces = FAKE_WORDS.slice(0, n);
  return { pieces, text: pieces.join(''), finish: n < FAKE_WORDS.length ? 'length' : 'stop' };
}

/**
 * Continues a partial answer as vLLM does with `continue_final_message`: the words after
 * `prefix` (which must be a prefix of the answer), `maxTokens` of them at most.
 */
export function fakeContinuation(prefix: string, maxTokens?: number): { pieces: string[]; text: string; finish: 'stop' | 'length' } {
  let k = 0;
  while (k < FAKE_WORDS.length && FAKE_WORDS.slice(0, k).join('') !== prefix) k++;
  if (FAKE_WORDS.slice(0, k).join('') !== prefix) k = 0;
  const end = maxTokens === undefined ? FAKE_WORDS.length : Math.min(FAKE_WORDS.length, k + maxTokens);
  const pieces = FAKE_WORDS.slice(k, end);
  return { pieces, text: pieces.join(''), finish: end < FAKE_WORDS.length ? 'length' : 'stop' };
}

const DEFAULTS: FakeBehaviour = {
  mode: 'normal',
  models: ['fake-model'],
  modelsMode: 'normal',
  retryAfter: '2',
  status: 400,
  errorMessage: 'bad request',
  firstTokenDelayMs: 1500,
  tokenDelayMs: 0,
  cutAfterChunks: 3,
};

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (ms <= 0 || signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

function write(res: ServerResponse, data: string): Promise<void> {
  return new Promise((resolve) => {
    if (res.destroyed) return resolve();
    res.write(data, () => resolve());
  });
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d: string) => (body += d));
    req.on('end', () => resolve(body));
    req.on('error', reject);
  });
}

function usageOf(completion: number): Record<string, unknown> {
  return {
    prompt_tokens: FAKE_PROMPT_TOKENS,
    completion_tokens: completion,
    total_tokens: FAKE_PROMPT_TOKENS + completion,
    ...FAKE_USAGE_DETAILS,
  };
}

/** The vector the fake answers every embedding input with. */
export const FAKE_EMBEDDING = [0.25, -0.5, 0.75];
/** cached_tokens the fake reports in prompt_tokens_details. */
export const FAKE_CACHED_TOKENS = 16;
/** The usage details the fake reports, as OpenAI and vLLM (prompt caching on) report them. */
export const FAKE_USAGE_DETAILS = { prompt_tokens_details: { cached_tokens: FAKE_CACHED_TOKENS }, completion_tokens_details: { reasoning_tokens: 0 } };
/** The arguments of the fake's tool call, in the fragments it streams them in. */
export const FAKE_TOOL_ARGS = ['{"city"', ': "Par', 'is", "days"', ': 3}'];

/** The fake calls the first tool unless tool_choice is none or the last message is a tool result. */
function wantsToolCall(body: any): string | undefined {
  const tools: any[] = Array.isArray(body?.tools) ? body.tools : [];
  const messages: any[] = Array.isArray(body?.messages) ? body.messages : [];
  if (tools.length === 0 || body?.tool_choice === 'none' || messages[messages.length - 1]?.role === 'tool') return undefined;
  return String(body?.tool_choice?.function?.name ?? tools[0]?.function?.name ?? 'tool');
}

/** Logprobs of one piece, in OpenAI's shape, when the request asked for them. */
function logprobsOf(body: any, piece: string): Record<string, unknown> | null {
  if (body?.logprobs !== true) return null;
  const top = typeof body?.top_logprobs === 'number' ? body.top_logprobs : 0;
  const entry = (token: string, logprob: number) => ({ token, logprob, bytes: [...Buffer.from(token)] });
  return { content: [{ ...entry(piece, -0.25), top_logprobs: Array.from({ length: top }, (_, i) => entry(`${piece}#${i}`, -1 - i)) }], refusal: null };
}

/** Sampling parameters checked as vLLM checks them: the engine's own 400. */
function samplingError(body: any): string | undefined {
  if (body?.top_p !== undefined && !(typeof body.top_p === 'number' && body.top_p > 0 && body.top_p <= 1)) return `top_p must be in (0, 1], got ${String(body.top_p)}.`;
  if (body?.top_logprobs !== undefined && body?.logprobs !== true) return 'when using `top_logprobs`, `logprobs` must be set to true.';
  return undefined;
}

/** Starts a fake engine on 127.0.0.1 and a free port. */
export async function startFakeEngine(initial: Partial<FakeBehaviour> = {}): Promise<FakeEngine> {
  let b: FakeBehaviour = { ...DEFAULTS, ...initial };
  const requests: RecordedRequest[] = [];
  let aborted = 0;
  let open = 0;
  let closing = false;

  const sendJson = (res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void => {
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify(value));
  };
  const sendError = (res: ServerResponse, status: number, message: string, headers: Record<string, string> = {}): void =>
    sendJson(res, status, { error: { message, type: status >= 500 ? 'server_error' : 'invalid_request_error', code: null } }, headers);

  async function chat(req: IncomingMessage, res: ServerResponse, body: any, gone: AbortSignal): Promise<void> {
    const behaviour = b;
    const retryHeaders: Record<string, string> = behaviour.retryAfter !== undefined ? { 'retry-after': behaviour.retryAfter } : {};
    switch (behaviour.mode) {
      case 'hang':
        return; // never answers; the connection stays until the client or close() drops it
      case 'rate-limited':
        return sendError(res, 429, 'too many requests, slow down', retryHeaders);
      case 'overloaded':
        return sendError(res, 503, 'server busy', retryHeaders);
      case 'server-error':
        return sendError(res, 500, 'internal failure in the fake engine');
      case 'status':
        return sendError(res, behaviour.status, behaviour.errorMessage);
      default:
        break;
    }
    const invalid = samplingError(body);
    if (invalid) return sendError(res, 400, invalid);
    const model = String(body?.model ?? '');
    const toolName = wantsToolCall(body);
    if (toolName !== undefined) return toolCall(res, body, model, toolName);
    const maxTokens = typeof body?.max_tokens === 'number' ? body.max_tokens : undefined;
    const messages: Array<{ role?: unknown; content?: unknown }> = Array.isArray(body?.messages) ? body.messages : [];
    const last = messages[messages.length - 1];
    const answer =
      body?.continue_final_message === true && last?.role === 'assistant'
        ? fakeContinuation(String(last.content ?? ''), maxTokens)
        : fakeAnswer(maxTokens);
    const withUsage = behaviour.mode !== 'no-usage';
    if (behaviour.mode === 'slow-first-token') await sleep(behaviour.firstTokenDelayMs, gone);
    if (gone.aborted) return;
    if (body?.stream !== true) {
      const full = JSON.stringify({
        id: 'chatcmpl-fake',
        object: 'chat.completion',
        created: 0,
        model,
        choices: [
          {
            index: 0,
            message: { role: 'assistant', content: answer.text },
            logprobs: body?.logprobs === true ? { content: answer.pieces.flatMap((p) => (logprobsOf(body, p)?.content as unknown[]) ?? []), refusal: null } : null,
            finish_reason: answer.finish,
          },
        ],
        system_fingerprint: 'fp_fake',
        ...(withUsage ? { usage: usageOf(answer.pieces.length) } : {}),
      });
      if (behaviour.mode === 'cut-stream') {
        // Promise the whole body, send half, drop the connection.
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(full)) });
        await write(res, full.slice(0, Math.floor(full.length / 2)));
        res.destroy();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(full);
      return;
    }
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    // As OpenAI does, every chunk carries the system_fingerprint.
    const event = (choices: unknown[], extra: Record<string, unknown> = {}): string =>
      `data: ${JSON.stringify({ id: 'chatcmpl-fake', object: 'chat.completion.chunk', created: 0, model, system_fingerprint: 'fp_fake', choices, ...extra })}\n\n`;
    await write(res, event([{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }]));
    for (let i = 0; i < answer.pieces.length; i++) {
      if (i > 0) await sleep(behaviour.tokenDelayMs, gone);
      if (gone.aborted) return;
      if (behaviour.mode === 'cut-stream' && i === behaviour.cutAfterChunks) {
        res.destroy();
        return;
      }
      if (behaviour.mode === 'end-early' && i === behaviour.cutAfterChunks) {
        res.end();
        return;
      }
      if (behaviour.mode === 'in-band-error' && i === 2) {
        await write(res, `data: ${JSON.stringify({ error: { message: 'the fake engine ran out of memory', code: 500 } })}\n\n`);
        res.end();
        return;
      }
      const lp = logprobsOf(body, answer.pieces[i]);
      await write(res, event([{ index: 0, delta: { content: answer.pieces[i] }, ...(lp ? { logprobs: lp } : {}), finish_reason: null }]));
    }
    await write(res, event([{ index: 0, delta: {}, finish_reason: answer.finish }]));
    const includeUsage = body?.stream_options?.include_usage === true;
    if (withUsage && includeUsage) await write(res, event([], { usage: usageOf(answer.pieces.length) }));
    res.end('data: [DONE]\n\n');
  }

  /** A tool call, buffered or streamed as OpenAI streams it: id and name first, then argument fragments. */
  async function toolCall(res: ServerResponse, body: any, model: string, name: string): Promise<void> {
    const id = 'call_fake_1';
    const usage = usageOf(9);
    if (body?.stream !== true) {
      const call = { id, type: 'function', function: { name, arguments: FAKE_TOOL_ARGS.join('') } };
      return sendJson(res, 200, {
        id: 'chatcmpl-fake',
        object: 'chat.completion',
        created: 0,
        model,
        choices: [{ index: 0, message: { role: 'assistant', content: null, tool_calls: [call] }, logprobs: null, finish_reason: 'tool_calls' }],
        usage,
      });
    }
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    const event = (choices: unknown[], extra: Record<string, unknown> = {}): string =>
      `data: ${JSON.stringify({ id: 'chatcmpl-fake', object: 'chat.completion.chunk', created: 0, model, choices, ...extra })}\n\n`;
    await write(res, event([{ index: 0, delta: { role: 'assistant', content: null, tool_calls: [{ index: 0, id, type: 'function', function: { name, arguments: '' } }] }, finish_reason: null }]));
    for (const [i, fragment] of FAKE_TOOL_ARGS.entries()) {
      if (b.mode === 'cut-stream' && i === b.cutAfterChunks) {
        res.destroy();
        return;
      }
      await write(res, event([{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: fragment } }] }, finish_reason: null }]));
    }
    await write(res, event([{ index: 0, delta: {}, finish_reason: 'tool_calls' }]));
    if (body?.stream_options?.include_usage === true) await write(res, event([], { usage }));
    res.end('data: [DONE]\n\n');
  }

  /** Legacy text completion: the same words, as `choices[].text`. */
  async function completion(res: ServerResponse, body: any): Promise<void> {
    const answer = fakeAnswer(typeof body?.max_tokens === 'number' ? body.max_tokens : undefined);
    const base = { id: 'cmpl-fake', object: 'text_completion', created: 0, model: String(body?.model ?? '') };
    if (body?.stream !== true) {
      return sendJson(res, 200, { ...base, choices: [{ index: 0, text: answer.text, logprobs: null, finish_reason: answer.finish }], usage: usageOf(answer.pieces.length) });
    }
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    for (const piece of answer.pieces) await write(res, `data: ${JSON.stringify({ ...base, choices: [{ index: 0, text: piece, logprobs: null, finish_reason: null }] })}\n\n`);
    await write(res, `data: ${JSON.stringify({ ...base, choices: [{ index: 0, text: '', logprobs: null, finish_reason: answer.finish }] })}\n\n`);
    if (body?.stream_options?.include_usage === true) await write(res, `data: ${JSON.stringify({ ...base, choices: [], usage: usageOf(answer.pieces.length) })}\n\n`);
    res.end('data: [DONE]\n\n');
  }

  /** Embeddings: one fixed 3-dimensional vector per input, usage as OpenAI reports it (no completion tokens). */
  function embeddings(res: ServerResponse, body: any): void {
    const inputs: unknown[] = Array.isArray(body?.input) ? body.input : [body?.input];
    sendJson(res, 200, {
      object: 'list',
      data: inputs.map((_, index) => ({ object: 'embedding', index, embedding: FAKE_EMBEDDING })),
      model: String(body?.model ?? ''),
      usage: { prompt_tokens: FAKE_PROMPT_TOKENS, total_tokens: FAKE_PROMPT_TOKENS },
    });
  }

  const server: Server = createServer((req, res) => {
    open++;
    const gone = new AbortController();
    let cut = false;
    res.on('close', () => {
      open--;
      if (!res.writableFinished && !cut && !closing) aborted++;
      gone.abort();
    });
    const destroy = res.destroy.bind(res);
    // A deliberate cut is the fake's fault, not an abort by the client.
    res.destroy = ((err?: Error) => {
      cut = true;
      return destroy(err);
    }) as typeof res.destroy;
    void (async () => {
      const raw = await readBody(req).catch(() => '');
      let body: any;
      try {
        body = raw ? JSON.parse(raw) : undefined;
      } catch {
        body = raw;
      }
      const path = (req.url ?? '').split('?')[0];
      requests.push({ method: req.method ?? '', path, headers: req.headers, body });
      if (req.method === 'GET' && path === '/v1/models') {
        if (b.modelsMode === 'hang') return;
        if (b.modelsMode === 'error') return sendError(res, 500, 'models unavailable');
        return sendJson(res, 200, { object: 'list', data: b.models.map((id) => ({ id, object: 'model', created: 0, owned_by: 'fake' })) });
      }
      if (req.method === 'POST' && path === '/v1/chat/completions') return chat(req, res, body, gone.signal);
      if (req.method === 'POST' && path === '/v1/completions') return completion(res, body);
      if (req.method === 'POST' && path === '/v1/embeddings') return embeddings(res, body);
      sendError(res, 404, `no route ${req.method} ${path}`);
    })().catch(() => res.destroy());
  });

  const listen = (port: number): Promise<void> =>
    new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
  await listen(0);
  const port = (server.address() as AddressInfo).port;

  return {
    url: `http://127.0.0.1:${port}/v1`,
    port,
    requests,
    chatRequests: () => requests.filter((r) => r.path === '/v1/chat/completions'),
    aborted: () => aborted,
    open: () => open,
    behave(change) {
      b = { ...b, ...change };
    },
    reset() {
      b = { ...DEFAULTS, ...initial };
      requests.length = 0;
      aborted = 0;
    },
    close: () =>
      new Promise<void>((resolve) => {
        if (!server.listening) return resolve();
        closing = true;
        server.close(() => {
          closing = false;
          resolve();
        });
        server.closeAllConnections();
      }),
    reopen: () => (server.listening ? Promise.resolve() : listen(port)),
  };
}
