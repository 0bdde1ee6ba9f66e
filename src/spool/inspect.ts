/**
 * Start-up recovery, and the reads behind inspection (queue tools, gauges, tests): rows
 * turned into summaries, counts, sizes.
 */
import { statSync } from 'node:fs';
import { discardsPending } from './outbox.js';
import type {
  MessageDetail,
  MessageRow,
  MessageState,
  MessageSummary,
  MessageWithBody,
  QueueStat,
  RecipientState,
  Role,
  SpoolContext,
} from './types.js';

/** Runs before anything else uses the spool; the rows it finds are settled by asking the peers. */
export function recover(c: SpoolContext): { inDoubt: number } {
  return { inDoubt: (c.st.spooledIds.all() as unknown[]).length };
}

export function get(c: SpoolContext, id: string): MessageSummary | undefined {
  const row = c.st.getMsg.get(id) as MessageRow | undefined;
  return row ? summary(c, row) : undefined;
}

export function getWithBody(c: SpoolContext, id: string): MessageWithBody | undefined {
  const s = get(c, id);
  if (!s) return undefined;
  const body = readBody(c, id);
  // a file unlinked since the row was read: the message is gone
  return body ? { ...s, body } : undefined;
}

/** A body from the bodies table or its file (files.ts); undefined when it is gone. */
function readBody(c: SpoolContext, id: string): Buffer | undefined {
  const row = c.st.getBody.get(id) as { body: Buffer } | undefined;
  if (row) return row.body;
  const f = c.st.getBodyFile.get(id) as { name: string } | undefined;
  return f ? c.files.read(f.name) : undefined;
}

export function detail(c: SpoolContext, id: string): MessageDetail | undefined {
  const s = get(c, id);
  if (!s) return undefined;
  const d = c.st.getDetail.get(id) as { client: string | null; origin_incarnation: string };
  return { ...s, client: d.client, originIncarnation: d.origin_incarnation };
}

export function queueStats(c: SpoolContext): QueueStat[] {
  return (c.st.stats.all() as Array<{ role: Role; state: MessageState; n: number; oldest: number }>).map((r) => ({
    role: r.role,
    state: r.state,
    count: r.n,
    oldestReceivedAt: r.oldest,
  }));
}

export function diskBytes(c: SpoolContext): number {
  let n = (c.st.bodyFileBytes.get() as { n: number }).n;
  for (const f of [c.file, `${c.file}-wal`]) {
    try {
      n += statSync(f).size;
    } catch {
      /* no WAL file yet */
    }
  }
  return n;
}

export function list(c: SpoolContext): MessageSummary[] {
  return (c.st.all.all() as MessageRow[]).map((r) => summary(c, r));
}

export function counts(c: SpoolContext): { primary: number; shadow: number; outbox: number } {
  const n = { primary: 0, shadow: 0, outbox: 0 };
  for (const r of c.st.counts.all() as Array<{ role: Role; n: number }>) n[r.role] = r.n;
  n.outbox = discardsPending(c);
  return n;
}

export function summary(c: SpoolContext, r: MessageRow): MessageSummary {
  return {
    id: r.id,
    role: r.role,
    state: r.state,
    origin: r.origin,
    sender: r.sender,
    size: r.size,
    receivedAt: r.received_at,
    nextAttemptAt: r.next_attempt_at,
    attempts: r.attempts,
    lastError: r.last_error,
    shadowPeer: r.shadow_peer,
    recipients: (
      c.st.getRcpts.all(r.id) as Array<{ idx: number; address: string; state: RecipientState; last_error: string | null; reported: number }>
    ).map((x) => ({ idx: x.idx, address: x.address, state: x.state, lastError: x.last_error, reported: x.reported === 1 })),
  };
}
