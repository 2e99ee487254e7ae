/**
 * An over-limit body gets its 413 only after the client has finished sending (what was sent is
 * read and thrown away, up to a bound): a server that answers mid-upload and closes makes Node's
 * fetch, the OpenAI SDKs and curl see a broken pipe instead of the answer, and the SDKs then retry
 * the whole upload. Past the bound the 413 goes out anyway and the connection is closed.
 */
import type { IncomingMessage } from 'node:http';

/** Bytes read and discarded from an over-limit body before answering: 64 MiB at most. */
export const DRAIN_MAX_BYTES = 64 * 1024 * 1024;
/** Longest wait for the rest of an over-limit body (ms). */
export const DRAIN_MAX_MS = 10_000;

/** Reads and discards the rest of `req`; true when it ended within the bounds. */
export function drainBody(req: IncomingMessage, maxBytes = DRAIN_MAX_BYTES, maxMs = DRAIN_MAX_MS): Promise<boolean> {
  return new Promise((resolve) => {
    if (req.complete || req.readableEnded || req.destroyed) {
      resolve(req.complete || req.readableEnded);
      return;
    }
    let seen = 0;
    const finish = (ended: boolean): void => {
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onFail);
      req.off('close', onClose);
      if (!ended) req.pause();
      resolve(ended);
    };
    const onData = (chunk: Buffer): void => {
      seen += chunk.length;
      if (seen > maxBytes) finish(false);
    };
    const onEnd = (): void => finish(true);
    const onFail = (): void => finish(false);
    const onClose = (): void => finish(req.complete);
    const timer = setTimeout(() => finish(false), maxMs);
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('error', onFail);
    req.once('close', onClose);
    req.resume();
  });
}
