/**
 * A wake-up call from a part to one built after it (the delivery worker learns of new work
 * from the parts it depends on): built before both, so neither needs the other to exist.
 */
export class Signal {
  private readonly listeners: Array<(id?: string) => void> = [];

  /** Calls every listener (none yet: nothing to wake); `id`: the one item that is new, when known. */
  readonly ring = (id?: string): void => {
    for (const l of this.listeners) l(id);
  };

  listen(fn: (id?: string) => void): void {
    this.listeners.push(fn);
  }
}
