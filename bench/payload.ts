/**
 * The one request every scenario sends, and the floor responder's canned answers to it: the same
 * tokens the synthetic worker produces, so the floor moves as many bytes and NATS messages as
 * the router does.
 */
import { headers as natsHeaders, type MsgHdrs } from '@nats-io/transport-node';
import { systemClock } from '../src/clock';
import { encode, HDR_SEQ, type FinishReason, type Usage, type WireChunk, type WireEnd, type WireRequest, type WireResult } from '../src/protocol';
import { syntheticEngine } from '../src/worker/synthetic';

export const MODEL = 'mlx-community/Llama-3.2-3B-Instruct-4bit';
export const MAX_TOKENS = 16;
const MESSAGES = [{ role: 'user', content: 'Hello there, how fast is this router?' }];

/** The chat request body, buffered or streamed. */
export function chatBody(stream: boolean): Buffer {
  return Buffer.from(JSON.stringify({ model: MODEL, messages: MESSAGES, max_tokens: MAX_TOKENS, ...(stream ? { stream: true } : {}) }));
}

export interface Expected {
  tokens: string[];
  finishReason: FinishReason;
  usage: Usage;
}

/** What the synthetic worker answers to `chatBody`: asked of the engine itself, never re-derived. */
export async function expectedAnswer(): Promise<Expected> {
  const engine = syntheticEngine({ models: [MODEL], ttftMs: 0, tokenMs: 0, failRate: 0, clock: systemClock });
  const request: WireRequest = { model: MODEL, messages: MESSAGES, max_tokens: MAX_TOKENS, stream: false };
  const tokens: string[] = [];
  const r = await engine.generate(request, (t) => tokens.push(t), new AbortController().signal);
  return { tokens, finishReason: r.finishReason, usage: r.usage };
}

export interface CannedReplies {
  result: Uint8Array;
  /** Chunk messages then the end message, with their sequence headers. */
  stream: Array<{ data: Uint8Array; headers: MsgHdrs }>;
}

/** Wire-protocol replies a worker would send, encoded once. */
export async function cannedReplies(): Promise<CannedReplies> {
  const { tokens, usage, finishReason: finish } = await expectedAnswer();
  const result: WireResult = { type: 'result', text: tokens.join(''), finish_reason: finish, usage };
  const seqHeaders = (seq: number): MsgHdrs => {
    const h = natsHeaders();
    h.set(HDR_SEQ, String(seq));
    return h;
  };
  const stream = tokens.map((text, seq) => ({ data: encode({ type: 'chunk', seq, text } satisfies WireChunk), headers: seqHeaders(seq) }));
  const end: WireEnd = { type: 'end', seq: tokens.length, finish_reason: finish, usage };
  stream.push({ data: encode(end), headers: seqHeaders(tokens.length) });
  return { result: encode(result), stream };
}

/** Subjects of the floor: not the router's protocol, just one request subject per mode (`hold`: first chunk only, then silence). */
export const FLOOR_SUBJECT = { buffered: 'bench.floor.buffered', stream: 'bench.floor.stream', hold: 'bench.floor.hold' };
