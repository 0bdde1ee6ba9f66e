/**
 * Message bodies live in memory shared with worker threads: a body handed to the spool's
 * writer thread (spool/thread.ts) is then shared with it, not copied — postMessage copies an
 * ordinary Buffer twice in transit (serialised, then rebuilt), which for 1 MB messages under
 * load was a large share of each node's memory.
 */
export function sharedConcat(parts: Buffer[], total?: number): Buffer {
  const size = total ?? parts.reduce((n, p) => n + p.length, 0);
  const out = Buffer.from(new SharedArrayBuffer(size));
  let at = 0;
  for (const p of parts) {
    if (at >= size) break;
    at += p.copy(out, at);
  }
  return out;
}

/**
 * A message body in the pieces it arrived in (socket reads, HTTP/2 frames), not copied into
 * one buffer. Why: a fresh buffer per 1 MB message cost each node ~2 ms of page faults (a body
 * is over malloc's mmap threshold, so each is new memory) and 1 MB more garbage; the pieces
 * exist anyway, and each consumer copies them once where it has to (the spool's staging area,
 * HTTP/2, the socket to the next hop).
 */
export class Parts {
  readonly length: number;

  constructor(readonly list: readonly Buffer[]) {
    let n = 0;
    for (const p of list) n += p.length;
    this.length = n;
  }

  /** One buffer: the only piece, or a copy of them all (in memory shared with worker threads). */
  whole(): Buffer {
    return this.list.length === 1 ? this.list[0]! : sharedConcat(this.list as Buffer[], this.length);
  }

  /** Bytes [from, to) as pieces (views, no copy). */
  slice(from: number, to = this.length): Parts {
    const out: Buffer[] = [];
    let at = 0;
    for (const p of this.list) {
      const end = at + p.length;
      if (end > from && at < to) out.push(p.subarray(Math.max(0, from - at), Math.min(p.length, to - at)));
      at = end;
      if (at >= to) break;
    }
    return new Parts(out);
  }

  /** Copies the pieces into `target` from `offset` on. */
  copyTo(target: Buffer, offset: number): void {
    let at = offset;
    for (const p of this.list) at += p.copy(target, at);
  }
}

/** A message body: one buffer (read from the spool) or the pieces it arrived in. */
export type Body = Buffer | Parts;

/** The body as one buffer (a copy when it is in pieces). */
export function wholeBody(b: Body): Buffer {
  return b instanceof Parts ? b.whole() : b;
}

/** The body's pieces (one for a buffer). */
export function bodyParts(b: Body): readonly Buffer[] {
  return b instanceof Parts ? b.list : [b];
}
