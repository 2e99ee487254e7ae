/** Command-line flag helpers shared by the CLI and its commands (their own module: no import cycle). */

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export type Flags = Record<string, string | boolean | string[] | undefined>;

/** A flag's value as a number in [min, max]; a UsageError naming the flag otherwise. */
export function numberFlag(flags: Flags, name: string, opts: { min?: number; max?: number; integer?: boolean } = {}): number | undefined {
  const raw = flags[name];
  if (raw === undefined) return undefined;
  const n = Number(raw);
  const { min = 0, max = Number.MAX_SAFE_INTEGER, integer = true } = opts;
  if (typeof raw !== 'string' || raw.trim() === '' || !Number.isFinite(n) || (integer && !Number.isInteger(n)) || n < min || n > max) {
    throw new UsageError(`--${name} must be ${integer ? 'an integer' : 'a number'} from ${min} to ${max}, got '${String(raw)}'`);
  }
  return n;
}
