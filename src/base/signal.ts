/**
 * A wake-up call from a part to one built after it (the delivery worker learns of new work
 * from the parts it depends on): built before both, so neither needs the other to exist.
 */
export class Signal {
  private readonly listeners: Array<(id?: string, body?: Buffer) => void> = [];

  /**
   * Calls every listener (none yet: nothing to wake); `id`: the one item that is new, when
   * known, and `body` its bytes when the ringer holds them (a read saved).
   */
  readonly ring = (id?: string, body?: Buffer): void => {
    for (const l of this.listeners) l(id, body);
  };

  listen(fn: (id?: string, body?: Buffer) => void): void {
    this.listeners.push(fn);
  }
}
