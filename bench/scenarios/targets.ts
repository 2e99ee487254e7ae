/**
 * The HTTP targets the scenarios load, and a check that each answers what it should before it is
 * measured (a fast wrong answer is not a result).
 */
import type { Client, Target } from '../load';
import { chatBody, expectedAnswer } from '../payload';

export function floorTarget(url: string, stream: boolean): Target {
  return { url, path: stream ? '/stream' : '/buffered', body: chatBody(stream), stream };
}

/** The buffered floor, but answered by the real worker `id` instead of the instant responder. */
export function floorWorkerTarget(url: string, id: string): Target {
  return { url, path: `/worker/${id}`, body: chatBody(false), stream: false };
}

/** The buffered floor through nats.js's nc.request() instead of the shared inbox. */
export function floorRequestTarget(url: string): Target {
  return { url, path: '/request', body: chatBody(false), stream: false };
}

export function routerTarget(url: string, stream: boolean, headers?: Record<string, string>): Target {
  return { url, path: '/v1/chat/completions', body: chatBody(stream), stream, headers };
}

/** The text of an SSE body's data events, in order (without `[DONE]`). */
function sseData(body: string): string[] {
  return body
    .split('\n\n')
    .filter((b) => b.startsWith('data: ') && b !== 'data: [DONE]')
    .map((b) => b.slice(6));
}

/** Sends one request and throws unless the answer carries exactly the synthetic engine's text. */
export async function verify(client: Client, target: Target, kind: 'floor' | 'router'): Promise<void> {
  const want = (await expectedAnswer()).tokens.join('');
  const a = await client.send(target);
  if (a.status !== 200) throw new Error(`${kind} ${target.path}: HTTP ${a.status}: ${a.body.slice(0, 300)}`);
  let got: string;
  if (!target.stream) {
    const json = JSON.parse(a.body) as { text?: string; choices?: Array<{ message?: { content?: string } }> };
    got = kind === 'floor' ? String(json.text) : String(json.choices?.[0]?.message?.content);
  } else {
    if (!a.body.endsWith('data: [DONE]\n\n')) throw new Error(`${kind} stream did not end with [DONE]: ${a.body.slice(-200)}`);
    const events = sseData(a.body).map((d) => JSON.parse(d) as { text?: string; choices?: Array<{ delta?: { content?: string } }> });
    got = events.map((e) => (kind === 'floor' ? (e.text ?? '') : (e.choices?.[0]?.delta?.content ?? ''))).join('');
  }
  if (got !== want) throw new Error(`${kind} ${target.stream ? 'stream' : 'buffered'} answered ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
}
