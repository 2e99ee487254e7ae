/**
 * Rendezvous (highest-random-weight) hashing: every controller that sees the same set of workers
 * picks the same one for a session, with no shared store, and when a worker leaves only the
 * sessions it had move (each to its own next choice); the others stay where they are.
 */

/**
 * cyrb53: a fast, well-mixed 53-bit string hash (public domain). Not cryptographic: session ids
 * only need spreading evenly, and a client that picks its session id may pick its worker anyway.
 */
export function hash53(text: string, seed = 0): number {
  let h1 = 0xdeadbeef ^ seed;
  let h2 = 0x41c6ce57 ^ seed;
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ ch, 2654435761);
    h2 = Math.imul(h2 ^ ch, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507);
  h1 ^= Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507);
  h2 ^= Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return 4294967296 * (2097151 & h2) + (h1 >>> 0);
}

/** The weight of `worker` for `session`: the same on every controller. */
export function rendezvousWeight(session: string, worker: string): number {
  // The separator keeps ("ab", "c") and ("a", "bc") apart.
  return hash53(`${worker}\u0000${session}`);
}

/**
 * The highest-weight item for `session` (ties, practically absent at 53 bits, go to the lower
 * id so that they too agree everywhere); undefined for an empty list.
 */
export function rendezvousPick<T>(session: string, items: readonly T[], id: (item: T) => string): T | undefined {
  let best: T | undefined;
  let bestWeight = -1;
  let bestId = '';
  for (const item of items) {
    const key = id(item);
    const weight = rendezvousWeight(session, key);
    if (weight > bestWeight || (weight === bestWeight && key < bestId)) {
      best = item;
      bestWeight = weight;
      bestId = key;
    }
  }
  return best;
}
