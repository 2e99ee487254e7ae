import { randomBytes } from 'node:crypto';

/** A short random id with a prefix; 12 random bytes make collisions across controllers negligible. */
export function newId(prefix: string): string {
  return `${prefix}-${randomBytes(12).toString('base64url')}`;
}
