/**
 * Reading an SSE answer incrementally, so a test can act (kill a worker, drop the connection)
 * while the stream is running.
 */
import { chatBody, parseSse, type ChatOptions } from './cluster';

export interface OpenStream {
  status: number;
  headers: Headers;
  /** Everything received so far. */
  received(): string;
  /** Reads until `predicate(received)` holds or the stream ends; resolves with what was received. */
  readUntil(predicate: (text: string) => boolean): Promise<string>;
  /** Reads to the end. */
  readAll(): Promise<string>;
  /** Milliseconds (performance.now) when the last bytes arrived. */
  lastDataAt(): number;
}

export async function openStream(url: string, options: ChatOptions = {}): Promise<OpenStream> {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...options.headers },
    body: JSON.stringify(chatBody({ ...options, stream: true })),
    signal: options.signal,
  });
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = '';
  let done = false;
  let lastAt = performance.now();
  const readOnce = async (): Promise<void> => {
    const r = await reader.read();
    if (r.done) {
      done = true;
      return;
    }
    text += decoder.decode(r.value, { stream: true });
    lastAt = performance.now();
  };
  const readUntil = async (predicate: (t: string) => boolean): Promise<string> => {
    while (!done && !predicate(text)) await readOnce();
    return text;
  };
  return {
    status: res.status,
    headers: res.headers,
    received: () => text,
    readUntil,
    readAll: () => readUntil(() => false),
    lastDataAt: () => lastAt,
  };
}

/** An SSE error event's `error` (docs/errors.md). */
export interface StreamError {
  message: string;
  type: string;
  code: string;
  router_code: string;
  param: string | null;
  attempts?: unknown[];
}

/** Content, finish reason, usage and errors of a whole SSE answer. */
export function summarize(text: string): {
  content: string;
  finishReason: string | null;
  usage: unknown;
  done: boolean;
  /** Each `event: error`'s `error` object: OpenAI's `type` and `code`, our stable `router_code`. */
  errors: StreamError[];
  metadata: any;
} {
  let content = '';
  let finishReason: string | null = null;
  let usage: unknown;
  let metadata: any;
  const errors: StreamError[] = [];
  let done = false;
  for (const e of parseSse(text)) {
    if (e.event === 'error') {
      errors.push(JSON.parse(e.data).error);
      continue;
    }
    if (e.data === '[DONE]') {
      done = true;
      continue;
    }
    const chunk = JSON.parse(e.data);
    content += chunk.choices?.[0]?.delta?.content ?? '';
    finishReason = chunk.choices?.[0]?.finish_reason ?? finishReason;
    if (chunk.usage) usage = chunk.usage;
    if (chunk.metadata) metadata = chunk.metadata;
  }
  return { content, finishReason, usage, done, errors, metadata };
}
