/**
 * Shadow (peer) side: the copies this node holds for other primaries, the discards that drop
 * them, and their promotion to this node's own primaries when their origin is gone.
 * The writes here run inside a group commit (index.ts hands them to `write`).
 */
import { finishLocked, insert } from './primary.js';
import type { DiscardResult, MessageRow, PromotedMessage, RecipientDiscard, RecipientState, ShadowCopy, ShadowRef, SpoolContext } from './types.js';

export function storeShadow(c: SpoolContext, m: ShadowCopy): 'stored' | 'exists' {
  // idempotent by id: the origin retries a copy whose ack it did not see
  if (c.st.exists.get(m.id)) return 'exists';
  insert(c, m, 'shadow', 'shadow', m.origin, m.originIncarnation);
  for (const i of m.done ?? []) c.st.rcptDoneByOrigin.run(`done by ${m.origin}`, m.id, i);
  return 'stored';
}

export function purgeShadows(c: SpoolContext, origin: string, ids: string[]): DiscardResult {
  const res: DiscardResult = { purged: 0, cancelled: [], duplicates: [] };
  for (const id of ids) {
    if (c.st.deleteShadow.run(id, origin).changes) {
      res.purged++;
      continue;
    }
    if (!c.st.promotedGet.get(origin, id)) continue;
    // this node promoted the copy and the origin delivered it too
    c.st.promotedDel.run(origin, id);
    const row = c.st.getMsg.get(id) as MessageRow | undefined;
    if (row && row.role === 'primary' && row.origin === origin) {
      if ((c.st.rcptNotPending.get(id) as { n: number }).n > 0) res.duplicates.push(id);
      c.st.deleteMsg.run(id);
      res.cancelled.push(id);
    } else {
      res.duplicates.push(id);
    }
  }
  return res;
}

export function shadowRecipientsDone(c: SpoolContext, origin: string, items: RecipientDiscard[]): { applied: number; duplicates: string[] } {
  let applied = 0;
  const duplicates: string[] = [];
  for (const { id, idx } of items) {
    const row = c.st.getMsg.get(id) as MessageRow | undefined;
    if (!row || row.origin !== origin) continue;
    const promoted = row.role === 'primary';
    if (promoted && !c.st.promotedGet.get(origin, id)) continue;
    for (const i of idx) {
      if (c.st.rcptDoneByOrigin.run(`done by ${origin}`, id, i).changes) applied++;
      else if (promoted && (c.st.rcptState.get(id, i) as { state: RecipientState } | undefined)?.state === 'delivered') {
        duplicates.push(`${id}/${i}`);
      }
    }
    if (promoted) finishLocked(c, row, []);
  }
  return { applied, duplicates };
}

export function promoteShadows(c: SpoolContext, origin: string, now: number, exceptIncarnation?: string): { promoted: PromotedMessage[]; emptied: string[] } {
  const promoted: PromotedMessage[] = [];
  const emptied: string[] = [];
  for (const r of c.st.shadowsOf.all(origin) as Array<{ id: string; origin_incarnation: string }>) {
    if (exceptIncarnation !== undefined && r.origin_incarnation === exceptIncarnation) continue;
    const pending = (c.st.rcptPending.get(r.id) as { n: number }).n;
    if (pending === 0) {
      c.st.deleteMsg.run(r.id);
      emptied.push(r.id);
      continue;
    }
    c.st.promote.run(now, r.id);
    c.st.promotedAdd.run(origin, r.origin_incarnation, r.id, now);
    promoted.push({ id: r.id, origin, pending });
  }
  return { promoted, emptied };
}

/** Every origin this node holds shadow copies of (configured as a peer or not). */
export function shadowOrigins(c: SpoolContext): string[] {
  return (c.st.shadowOrigins.all() as Array<{ origin: string }>).map((r) => r.origin);
}

export function hasShadowsFrom(c: SpoolContext, origin: string): boolean {
  return c.st.hasShadowsOf.get(origin) !== undefined;
}

export function shadowIncarnations(c: SpoolContext, origin: string): string[] {
  return (c.st.shadowIncarnations.all(origin) as Array<{ inc: string }>).map((r) => r.inc);
}

export function promotedFor(c: SpoolContext, origin: string, incarnation: string): string[] {
  // records about earlier incarnations are useless to the origin
  c.st.promotedDropStale.run(origin, incarnation);
  return (c.st.promotedFor.all(origin, incarnation) as Array<{ message_id: string }>).map((r) => r.message_id);
}

export function forgetPromoted(c: SpoolContext, origin: string, ids: string[]): number {
  return ids.reduce((n, id) => n + c.st.promotedDel.run(origin, id).changes, 0);
}

export function prunePromoted(c: SpoolContext, before: number): number {
  return c.st.promotedPrune.run(before).changes;
}

export function shadowsToVerify(
  c: SpoolContext,
  origin: string,
  incarnation: string,
  before: number,
  after: { receivedAt: number; id: string },
  limit: number,
): ShadowRef[] {
  return (
    c.st.shadowsToVerify.all(origin, incarnation, before, after.receivedAt, after.id, limit) as Array<{ id: string; received_at: number }>
  ).map((r) => ({ id: r.id, origin, originIncarnation: incarnation, receivedAt: r.received_at }));
}

export function dropShadows(c: SpoolContext, origin: string, ids: string[]): string[] {
  return ids.filter((id) => c.st.deleteShadow.run(id, origin).changes > 0);
}

export function oldShadows(c: SpoolContext, origin: string, before: number, limit: number): ShadowRef[] {
  return (c.st.oldShadows.all(origin, before, limit) as Array<{ id: string; origin_incarnation: string; received_at: number }>).map(
    (r) => ({ id: r.id, origin, originIncarnation: r.origin_incarnation, receivedAt: r.received_at }),
  );
}
