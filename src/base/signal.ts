/**
 * A wake-up call from a part to one built after it (the delivery worker learns of new work
 * from the parts it depends on): built before both, so neither needs the other to exist.
 */
import type { Body } from './buffers.js';

export class Signal {
  private readonly listeners: Array<(id?: string, body?: Body) => void> = [];

  /**
   * Calls every listener (none yet: nothing to wake); `id`: the one item that is new, when
   * known, and `body` its bytes when the ringer holds them (a read saved).
   */
  readonly ring = (id?: string, body?: Body): void => {
    for (const l of this.listeners) l(id, body);
  };

  listen(fn: (id?: string, body?: Body) => void): void {
    this.listeners.push(fn);
  }
}
