/**
 * A wake-up call from a part to one built after it (the delivery worker learns of new work
 * from the parts it depends on): built before both, so neither needs the other to exist.
 */
import type { Body } from './buffers.js';

/**
 * A message answered 250 whose accepted mark is still on its way to the spool (the mark rides
 * a later transaction): its delivery may start, and records its outcome once `written` has
 * settled, so the outcome never reaches the spool before the mark.
 */
export interface Marking {
  /** the peer that holds the shadow copy (the mark writes it to the row) */
  peer: string;
  /** settles once the mark is written, or the spool closed first (never rejects) */
  written: Promise<void>;
}

type Listener = (id?: string, body?: Body, marking?: Marking) => void;

export class Signal {
  private readonly listeners: Listener[] = [];

  /**
   * Calls every listener (none yet: nothing to wake); `id`: the one item that is new, when
   * known, `body` its bytes when the ringer holds them (a read saved), `marking` when its
   * accepted mark is not written yet.
   */
  readonly ring = (id?: string, body?: Body, marking?: Marking): void => {
    for (const l of this.listeners) l(id, body, marking);
  };

  listen(fn: Listener): void {
    this.listeners.push(fn);
  }
}
