/**
 * HTTP limits below the routes (docs/security.md): connections per client address and in total,
 * and an OpenAI-shaped JSON answer with `x-request-id` for everything Node or fastify would
 * otherwise answer on their own (parser errors, 408, 431, 417, CONNECT) or not at all.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { ERROR_CODE_HEADER, RouterError, type ErrorCode } from '../errors';
import { newId } from '../ids';

export interface ConnectionLimits {
  /** Open connections in total; beyond it a new connection is answered 503 and closed. */
  maxConnections: number;
  /** Open connections from one client address. */
  maxConnectionsPerClient: number;
}

/** A complete HTTP/1.1 error response as raw bytes, for sockets no framework owns. */
export function rawErrorResponse(status: number, err: RouterError, extra: Record<string, string> = {}): string {
  const body = JSON.stringify(err.toJSON());
  const headers: Record<string, string> = {
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(body)),
    'x-request-id': newId('req'),
    [ERROR_CODE_HEADER]: err.code,
    connection: 'close',
    ...extra,
  };
  const reason = STATUS_TEXT[status] ?? 'Error';
  return `HTTP/1.1 ${status} ${reason}\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n${body}`;
}

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  405: 'Method Not Allowed',
  408: 'Request Timeout',
  413: 'Payload Too Large',
  417: 'Expectation Failed',
  431: 'Request Header Fields Too Large',
  503: 'Service Unavailable',
};

/** Writes `status` + error to a bare socket (if it can still be written) and closes it. */
export function refuseSocket(socket: Duplex, status: number, code: ErrorCode, message: string, extra: Record<string, string> = {}): void {
  if (socket.destroyed) return;
  if (socket.writable) socket.end(rawErrorResponse(status, new RouterError(code, message), extra));
  // A peer that never reads must not keep the socket: gone in a second either way.
  setTimeout(() => socket.destroy(), 1000).unref();
}

/** fastify's clientErrorHandler: malformed requests, header overflow, timeouts. */
export function clientErrorHandler(err: Error & { code?: string }, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    refuseSocket(socket, 408, 'REQUEST_VALIDATION_FAILED', 'the request (headers and body) did not arrive in time');
  } else if (err.code === 'HPE_HEADER_OVERFLOW') {
    refuseSocket(socket, 431, 'REQUEST_VALIDATION_FAILED', 'request headers are too large');
  } else {
    refuseSocket(socket, 400, 'REQUEST_VALIDATION_FAILED', `malformed HTTP request (${err.code ?? 'parse error'})`);
  }
}

/**
 * Connection caps, 417 for unknown `Expect` values and 405 for CONNECT, on the raw server. The
 * per-address table holds only addresses with open connections, so it is bounded by the caps.
 */
export function guardServer(server: Server, limits: ConnectionLimits): void {
  const perClient = new Map<string, number>();
  let total = 0;
  server.on('connection', (socket: Socket) => {
    const address = socket.remoteAddress ?? 'unknown';
    const mine = perClient.get(address) ?? 0;
    if (total >= limits.maxConnections || mine >= limits.maxConnectionsPerClient) {
      const which = total >= limits.maxConnections ? `${limits.maxConnections} in total` : `${limits.maxConnectionsPerClient} from one client address`;
      refuseSocket(socket, 503, 'TOO_MANY_CONNECTIONS', `too many open connections (at most ${which}); retry later`, { 'retry-after': '1' });
      return;
    }
    total++;
    perClient.set(address, mine + 1);
    socket.once('close', () => {
      total--;
      const left = (perClient.get(address) ?? 1) - 1;
      if (left <= 0) perClient.delete(address);
      else perClient.set(address, left);
    });
  });
  server.on('checkExpectation', (_req: IncomingMessage, res: ServerResponse) => {
    const err = new RouterError('REQUEST_VALIDATION_FAILED', 'unsupported Expect header (only 100-continue is understood)', { param: 'expect' });
    res.writeHead(417, { 'content-type': 'application/json; charset=utf-8', 'x-request-id': newId('req'), [ERROR_CODE_HEADER]: err.code, connection: 'close' });
    res.end(JSON.stringify(err.toJSON()));
  });
  server.on('connect', (_req: IncomingMessage, socket: Duplex) => {
    refuseSocket(socket, 405, 'REQUEST_VALIDATION_FAILED', 'CONNECT is not supported: this is not a proxy', { allow: 'GET, POST' });
  });
}
