/**
 * Wire protocol v2: the client's OpenAI request body travels to the worker as sent, and the
 * engine's answer travels back as OpenAI choices and deltas, so every field the router does not
 * route on (tools, response_format, seed, logprobs, content parts...) passes through untouched in
 * both directions. docs/protocol.md is the normative description. v1 (src/protocol.ts) stays for
 * workers whose heartbeat says `version: 1`; the controller picks the encoding per worker.
 */
/** Heartbeat `version` of a worker that speaks v2. */
export const PROTOCOL_V2 = 2;

/** The OpenAI endpoint a request came in on; the worker calls the same one on its engine. */
export type Endpoint = 'chat.completions' | 'completions' | 'embeddings';
export const ENDPOINTS: readonly Endpoint[] = ['chat.completions', 'completions', 'embeddings'];

/**
 * What a worker serves per model, advertised in heartbeats. A request needs `chat`, `completions`
 * or `embeddings` (its endpoint) and, by content, `tools` and `vision`. v1 workers have `chat` only.
 */
export type Capability = 'chat' | 'completions' | 'embeddings' | 'tools' | 'vision';
export const CAPABILITIES: readonly Capability[] = ['chat', 'completions', 'embeddings', 'tools', 'vision'];

/** The capability an endpoint needs. */
export function endpointCapability(endpoint: Endpoint): Capability {
  return endpoint === 'chat.completions' ? 'chat' : endpoint;
}

/** True when `worker` serves everything `request` needs for its model (no needs: any worker). */
export function canServe(worker: { capabilities: Record<string, Capability[]> }, request: { model: string; needs?: Capability[] }): boolean {
  if (!request.needs || request.needs.length === 0) return true;
  const have = worker.capabilities[request.model] ?? ['chat'];
  return request.needs.every((n) => have.includes(n));
}

/** The v2 inference request body (subject `{p}.worker.{id}.infer`). */
export interface WireRequestV2 {
  v: 2;
  endpoint: Endpoint;
  /** The client's request body as sent (the router's own `session_id` removed). */
  body: Record<string, unknown>;
  /** Stream resume: the assistant text (choice 0) already delivered; see docs/streaming.md. */
  continuation?: string;
}

/** One relayed piece of an engine's stream: an OpenAI chunk choice, `delta` whole. */
export interface ChoiceDelta {
  index: number;
  delta: Record<string, unknown>;
  logprobs?: unknown;
  /** Set on the choice's last delta; the worker moves it into the `end` message. */
  finish_reason?: string | null;
}

/** A choice's finish reason, in v2 `end` messages. */
export interface ChoiceFinish {
  index: number;
  finish_reason: string;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Fields only the router reads; never sent to an engine. */
const ROUTER_FIELDS = ['session_id'];

/**
 * The message body for `worker`: v2 carries the client's body whole; v1 the validated subset
 * (`request` without its v2 fields). `version` is the worker's heartbeat version.
 */
export function wireRequestFor(
  version: number,
  request: { body?: Record<string, unknown>; endpoint?: Endpoint; needs?: Capability[] },
  continuation: string | undefined,
): unknown {
  const { body, endpoint } = request;
  if (version >= PROTOCOL_V2 && body) {
    // The body itself (it is only serialized), a copy only when it has a field to take out.
    let sent = body;
    if (ROUTER_FIELDS.some((f) => f in body)) {
      sent = { ...body };
      for (const f of ROUTER_FIELDS) delete sent[f];
    }
    const wire: WireRequestV2 = { v: 2, endpoint: endpoint ?? 'chat.completions', body: sent };
    if (continuation !== undefined) wire.continuation = continuation;
    return wire;
  }
  const { body: _body, endpoint: _endpoint, needs: _needs, ...v1 } = request;
  return continuation !== undefined ? { ...v1, continuation } : v1;
}

/** True when `value` looks like a v2 request (the worker then reads it with readWireRequestV2). */
export function isWireRequestV2(value: unknown): value is WireRequestV2 {
  return isObject(value) && value.v === 2;
}

/** The text of OpenAI message content: a string, or the text of its text parts. */
export function contentText(content: unknown): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  let text = '';
  for (const part of content) if (isObject(part) && part.type === 'text' && typeof part.text === 'string') text += part.text;
  return text;
}

/** True when a message list has an image part (the request then needs `vision`). */
export function hasImagePart(messages: readonly unknown[]): boolean {
  return messages.some(
    (m) => isObject(m) && Array.isArray(m.content) && m.content.some((p) => isObject(p) && (p.type === 'image_url' || p.type === 'input_image')),
  );
}

/**
 * Merges one delta into a message being assembled, as OpenAI's SDKs do: strings append,
 * `tool_calls` merge by their `index` (arguments append), other fields take the latest value.
 */
export function mergeDelta(message: Record<string, unknown>, delta: Record<string, unknown>): void {
  for (const [key, value] of Object.entries(delta)) {
    if (key === 'tool_calls' && Array.isArray(value)) {
      const calls = (Array.isArray(message.tool_calls) ? message.tool_calls : (message.tool_calls = [])) as Array<Record<string, unknown>>;
      for (const raw of value) {
        if (!isObject(raw)) continue;
        const index = typeof raw.index === 'number' ? raw.index : calls.length;
        let call = calls.find((c) => c.index === index);
        if (!call) calls.push((call = { index }));
        for (const [k, v] of Object.entries(raw)) {
          if (k === 'function' && isObject(v)) {
            const fn = (isObject(call.function) ? call.function : (call.function = {})) as Record<string, unknown>;
            for (const [fk, fv] of Object.entries(v)) fn[fk] = typeof fv === 'string' && typeof fn[fk] === 'string' ? (fn[fk] as string) + fv : fv;
          } else if (k !== 'index') {
            call[k] = v;
          }
        }
      }
    } else if (typeof value === 'string' && typeof message[key] === 'string' && key !== 'role') {
      message[key] = (message[key] as string) + value;
    } else if (value !== null || message[key] === undefined) {
      message[key] = value;
    }
  }
}

/** Assembled tool calls lose their stream `index` (OpenAI's buffered answers have none). */
export function finishMessage(message: Record<string, unknown>): Record<string, unknown> {
  if (Array.isArray(message.tool_calls)) {
    message.tool_calls = (message.tool_calls as Array<Record<string, unknown>>).map(({ index: _index, ...call }) => call);
  }
  if (message.content === undefined) message.content = null;
  return message;
}

/** A delta that resume cannot continue exactly: anything beyond choice 0's plain text. */
export function deltaBreaksResume(d: ChoiceDelta): boolean {
  if (d.index !== 0) return true;
  for (const key of Object.keys(d.delta)) if (key !== 'content' && key !== 'role') return true;
  return false;
}
