/**
 * The outbox: discards this node owes its peers (whole messages and single recipients),
 * kept until the peer confirms them. Entries are added by the primary side and recovery.
 */
import type { RecipientDiscard, SpoolContext } from './types.js';

export function owedDiscards(c: SpoolContext, peer: string, limit: number): string[] {
  return (c.st.outboxList.all(peer, limit) as Array<{ message_id: string }>).map((r) => r.message_id);
}

export function discardsConfirmed(c: SpoolContext, peer: string, ids: string[]): void {
  for (const id of ids) c.st.outboxDel.run(peer, id);
}

export function owedRecipientDiscards(c: SpoolContext, peer: string, limit: number): RecipientDiscard[] {
  const byId = new Map<string, number[]>();
  for (const r of c.st.outboxRcptList.all(peer, limit) as Array<{ message_id: string; idx: number }>) {
    const l = byId.get(r.message_id) ?? [];
    l.push(r.idx);
    byId.set(r.message_id, l);
  }
  return [...byId].map(([id, idx]) => ({ id, idx }));
}

export function recipientDiscardsConfirmed(c: SpoolContext, peer: string, items: RecipientDiscard[]): void {
  for (const { id, idx } of items) for (const i of idx) c.st.outboxRcptDel.run(peer, id, i);
}

export function discardsPending(c: SpoolContext): number {
  return (c.st.outboxCount.get() as { n: number }).n + (c.st.outboxRcptCount.get() as { n: number }).n;
}
