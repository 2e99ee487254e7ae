/**
 * A client of the controller's `GET /v1/cluster/events` feed that keeps every event it reads, so
 * a test can wait for one. `close()` ends the request.
 */
import { parseSse } from './cluster';

export interface FeedEvent {
  type: string;
  seq: number;
  time: number;
  [key: string]: any;
}

export interface EventFeed {
  events: FeedEvent[];
  /** The response's status and content type. */
  status: number;
  contentType: string | null;
  close(): Promise<void>;
}

export async function followEvents(url: string, headers: Record<string, string> = {}): Promise<EventFeed> {
  const abort = new AbortController();
  const res = await fetch(`${url}/v1/cluster/events`, { headers, signal: abort.signal });
  const events: FeedEvent[] = [];
  const decoder = new TextDecoder();
  const reader = res.body!.getReader();
  const reading = (async () => {
    let pending = '';
    for (;;) {
      const chunk = await reader.read();
      if (chunk.done) return;
      pending += decoder.decode(chunk.value, { stream: true });
      let cut: number;
      while ((cut = pending.indexOf('\n\n')) >= 0) {
        const block = pending.slice(0, cut + 2);
        pending = pending.slice(cut + 2);
        for (const e of parseSse(block)) if (e.data) events.push(JSON.parse(e.data) as FeedEvent);
      }
    }
  })().catch(() => undefined);
  return {
    events,
    status: res.status,
    contentType: res.headers.get('content-type'),
    async close() {
      abort.abort();
      await reading;
    },
  };
}
