/**
 * PrefixLru: an LRU of sequences (tokens, or hashes of messages) where a lookup finds the entry
 * sharing the longest prefix with a query. Both the synthetic engine's prompt cache (tokens) and
 * the controller's prefix index (hashes at message boundaries) are one of these, so what the
 * router predicts and what the engine does follow the same rules: storing a sequence replaces the
 * entries it extends, and the least recently used entry goes first.
 */
export function commonPrefix<T>(a: readonly T[], b: readonly T[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

export interface PrefixMatch {
  /** Elements of the query the best entry shares (0: none). */
  length: number;
  /** That entry's position, for `touch`; -1 when none matched. */
  at: number;
}

export class PrefixLru<T> {
  /** Least recently used first. */
  private entries: T[][] = [];
  /** When each entry was stored (or last extended), on the caller's clock (0 when the caller keeps none). */
  private stamps: number[] = [];

  constructor(public capacity: number) {}

  get size(): number {
    return this.entries.length;
  }

  /** The entry sharing the longest prefix with `query` (the more recent on a tie); changes nothing. */
  match(query: readonly T[]): PrefixMatch {
    let best: PrefixMatch = { length: 0, at: -1 };
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const n = commonPrefix(this.entries[i], query);
      if (n > best.length) best = { length: n, at: i };
    }
    return best;
  }

  /** Length of the entry at `at` (from `match`); 0 when there is none. */
  lengthAt(at: number): number {
    return this.entries[at]?.length ?? 0;
  }

  /** When the entry at `at` was stored (its stamp); undefined when there is none. */
  stampAt(at: number): number | undefined {
    return this.stamps[at];
  }

  /** Makes the entry at `at` (from `match`) the most recently used; its stamp stays. */
  touch(at: number): void {
    if (at >= 0 && at < this.entries.length) {
      this.entries.push(...this.entries.splice(at, 1));
      this.stamps.push(...this.stamps.splice(at, 1));
    }
  }

  /** Stores `seq` as the most recent entry, stamped `stamp`; entries that are a prefix of it go; then evicts to capacity. */
  insert(seq: readonly T[], stamp = 0): void {
    if (seq.length === 0) return;
    const keep = this.entries.map((e) => !(e.length <= seq.length && commonPrefix(e, seq) === e.length));
    this.entries = this.entries.filter((_, i) => keep[i]);
    this.stamps = this.stamps.filter((_, i) => keep[i]);
    this.entries.push([...seq]);
    this.stamps.push(stamp);
    this.trim();
  }

  /** Evicts least recently used entries beyond `capacity`. */
  trim(): void {
    const excess = this.entries.length - Math.max(0, this.capacity);
    if (excess > 0) {
      this.entries.splice(0, excess);
      this.stamps.splice(0, excess);
    }
  }

  clear(): void {
    this.entries = [];
    this.stamps = [];
  }
}
