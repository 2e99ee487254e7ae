import pino, { type Logger } from 'pino';

export type { Logger };

/** One pino JSON logger per process role; child loggers carry the request id on every line. */
export function createLogger(name: string, level: string = 'info'): Logger {
  return pino({ name, level, base: { pid: process.pid } });
}

/** A logger that writes nothing, for tests and benchmarks. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
