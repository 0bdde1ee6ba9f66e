/**
 * The body budget (`smtp.maxBytesInFlight`), the admission of message bodies: bounds the bytes this node holds for messages being received
 * and accepted (spool + shadow copy), so 200 clients sending 1 MB each cannot make it hold
 * 200 MB at once, and a shadow copy's deadline measures the link, not a queue in front of it.
 *
 * - A message starts reading its body when the bytes in flight plus its reservation fit in
 *   `maxBytes` (or nothing else is in flight). The reservation is the SIZE the client
 *   declared, else the mean size of recent messages. Waiters start in arrival order.
 * - Bytes received beyond the reservation count as they arrive. While the budget is
 *   exceeded, only the oldest message still receiving keeps reading; the others pause until
 *   bytes are released. The oldest always progresses, so the budget cannot deadlock, and a
 *   message larger than the budget still passes (alone).
 * - A paused or waiting message is simply not read: TCP holds its client back (smtp-server
 *   stops reading the socket while the data stream is not drained).
 */

export interface BudgetTicket {
  /** counts received bytes; false: over budget, pause and wait for `resume` */
  add(bytes: number): boolean;
  /** calls `fn` once this message may read again */
  resume(fn: () => void): void;
  /** the whole body has arrived (it no longer needs to read) */
  received(): void;
  /** the message is accepted, refused or abandoned: its bytes leave the budget (idempotent) */
  release(): void;
}

interface Ticket {
  /** bytes this message counts against the budget: its reservation, or what it received if more */
  reserved: number;
  received: number;
  receiving: boolean;
  open: boolean;
}

export class BodyBudget {
  private used = 0;
  private readonly tickets = new Set<Ticket>();
  private readonly waiting: Array<{ need: number; admit: () => void }> = [];
  private readonly paused: Array<{ t: Ticket; fn: () => void }> = [];
  /** exponentially weighted mean of message sizes: the reservation when no SIZE was declared */
  private meanSize = 64 * 1024;

  constructor(private readonly maxBytes: number) {}

  /** Resolves when the message may read its body. `declared`: the SIZE parameter, if any. */
  enter(declared?: number): Promise<BudgetTicket> {
    const need = Math.max(1, Math.min(this.maxBytes, declared && declared > 0 ? declared : this.meanSize));
    return new Promise((resolve) => {
      const admit = () => resolve(this.open(need));
      if (this.waiting.length === 0 && this.fits(need)) admit();
      else this.waiting.push({ need, admit });
    });
  }

  /** bytes counted against the budget right now */
  get bytesInFlight(): number {
    return this.used;
  }

  private fits(need: number): boolean {
    return this.tickets.size === 0 || this.used + need <= this.maxBytes;
  }

  /** the oldest message still reading its body: it may always continue */
  private oldestReceiving(): Ticket | undefined {
    for (const t of this.tickets) if (t.receiving) return t;
    return undefined;
  }

  private mayRead(t: Ticket): boolean {
    return this.used <= this.maxBytes || this.oldestReceiving() === t;
  }

  private open(reserved: number): BudgetTicket {
    const t: Ticket = { reserved, received: 0, receiving: true, open: true };
    this.used += reserved;
    this.tickets.add(t);
    return {
      add: (bytes) => {
        if (!t.open) return true;
        t.received += bytes;
        if (t.received > t.reserved) {
          this.used += t.received - t.reserved;
          t.reserved = t.received;
        }
        return this.mayRead(t);
      },
      resume: (fn) => {
        if (!t.open || this.mayRead(t)) return fn();
        this.paused.push({ t, fn });
      },
      received: () => {
        if (!t.receiving) return;
        t.receiving = false;
        this.wake();
      },
      release: () => {
        if (!t.open) return;
        t.open = false;
        t.receiving = false;
        this.used -= t.reserved;
        this.tickets.delete(t);
        if (t.received > 0) this.meanSize = Math.round(this.meanSize * 0.9 + t.received * 0.1);
        const i = this.paused.findIndex((p) => p.t === t);
        if (i >= 0) this.paused.splice(i, 1);
        this.wake();
        while (this.waiting.length > 0 && this.fits(this.waiting[0]!.need)) this.waiting.shift()!.admit();
      },
    };
  }

  /** Resumes paused messages, oldest first, while they may read. */
  private wake(): void {
    for (let i = 0; i < this.paused.length; ) {
      const p = this.paused[i]!;
      if (this.mayRead(p.t)) {
        this.paused.splice(i, 1);
        p.fn();
      } else i++;
    }
  }
}
