/**
 * A wake-up call from a part to one built after it (the delivery worker learns of new work
 * from the parts it depends on): built before both, so neither needs the other to exist.
 */
export class Signal {
  private readonly listeners: Array<() => void> = [];

  /** Calls every listener (none yet: nothing to wake). */
  readonly ring = (): void => {
    for (const l of this.listeners) l();
  };

  listen(fn: () => void): void {
    this.listeners.push(fn);
  }
}
