/**
 * A list of listeners: `add` returns the remover, `emit` calls each in the order added. Used
 * where several parties follow one event (attempt progress, attempt ends) and a single
 * callback slot would let the second silently replace the first.
 */
export class Listeners<T = void> {
  private list: Array<(value: T) => void> = [];

  get size(): number {
    return this.list.length;
  }

  add(listener: (value: T) => void): () => void {
    this.list.push(listener);
    return () => {
      this.list = this.list.filter((l) => l !== listener);
    };
  }

  emit(value: T): void {
    const list = this.list;
    for (let i = 0; i < list.length; i++) list[i](value);
  }
}
