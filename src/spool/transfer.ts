/**
 * Drain: handing this node's queue to its peers, and taking over a draining peer's messages.
 * The writes here run inside a group commit (index.ts hands them to `write`).
 *
 * Never fewer than two copies: the taking node writes its own primary only after its new
 * shadow holder confirmed (one transaction replaces the shadow row it may hold for the
 * message), and the draining node drops its primary only after the taking node confirmed.
 */
import { purgeLocked, storeBody } from './primary.js';
import type { MessageRow, SpoolContext, TransferredMessage } from './types.js';

/**
 * Takes over a message from a draining peer as this node's own queued primary (remaining
 * recipients only), shadowed on `shadowPeer`. A shadow copy of it held here is replaced in
 * the same transaction. 'exists': already taken over (a retried transfer).
 */
export function takeTransfer(c: SpoolContext, m: TransferredMessage, shadowPeer: string): 'accepted' | 'exists' | 'conflict' {
  const row = c.st.getMsg.get(m.id) as MessageRow | undefined;
  if (row?.role === 'primary') return row.origin === c.node ? 'exists' : 'conflict';
  if (row) c.st.deleteMsg.run(m.id);
  c.st.insertTransferred.run({
    id: m.id,
    state: m.held ? 'held' : 'queued',
    origin: c.node,
    originIncarnation: c.incarnation,
    sender: m.sender,
    size: m.body.length,
    receivedAt: m.receivedAt,
    nextAttemptAt: Date.now(),
    shadowPeer,
  });
  storeBody(c, m.id, m.body);
  m.recipients.forEach((r, i) => c.st.insertRcpt.run(m.id, i, r));
  return 'accepted';
}

/** The taking node confirmed: drop our primary; its shadow holder is owed a discard. */
export function handedOver(c: SpoolContext, id: string): boolean {
  const row = c.st.getMsg.get(id) as MessageRow | undefined;
  if (!row || row.role !== 'primary' || (row.state !== 'queued' && row.state !== 'held')) return false;
  // a holder that took the message over ignores the discard (its row is a primary now)
  purgeLocked(c, row);
  return true;
}

/**
 * A draining holder `from` asked us to shadow `id` elsewhere and `to` confirmed a copy.
 * 'moved': the message now names `to`, and `from` is owed a discard of its copy (so it goes
 * even if `from` never reads our answer); 'gone': we no longer hold it with `from` as its
 * shadow, and the copy just made on `to` is owed a discard.
 */
export function reshadowed(c: SpoolContext, id: string, from: string, to: string): 'moved' | 'gone' {
  const now = Date.now();
  if (c.st.setShadowPeer.run(to, id, c.node, from).changes === 0) {
    c.st.outboxAdd.run(to, id, now);
    return 'gone';
  }
  // recipient discards still owed to `from` are moot: the new copy was made with them done
  c.st.outboxRcptDelMsg.run(from, id);
  c.st.outboxAdd.run(from, id, now);
  return 'moved';
}

export function drainPrimaries(c: SpoolContext, limit: number): string[] {
  return (c.st.drainPrimaries.all(limit) as Array<{ id: string }>).map((r) => r.id);
}

export function drainShadows(c: SpoolContext, origin: string, limit: number): string[] {
  return (c.st.drainShadows.all(origin, limit) as Array<{ id: string }>).map((r) => r.id);
}
