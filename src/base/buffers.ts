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
