/**
 * Primary side: the messages this node accepted and delivers, from end of DATA to purge.
 * The writes here run inside a group commit (index.ts hands them to `write`).
 */
import type {
  AttemptResult,
  InDoubtOutcome,
  MessageRow,
  MessageState,
  NewMessage,
  RecipientDiscard,
  RecipientOutcome,
  Role,
  SpoolContext,
} from './types.js';
import { wholeBody } from '../base/buffers.js';
import { FILE_MIN_BYTES } from './files.js';

/** Inserts a new message and its recipients; also stores shadow copies (shadows.ts). */
export function insert(c: SpoolContext, m: NewMessage, role: Role, state: MessageState, origin: string, originIncarnation: string): void {
  if (c.insertPages) {
    // a new message must leave the reserve free (SQLite itself refuses with SQLITE_FULL); the
    // bodies in files count against the same cap
    c.db.pragma(`max_page_count = ${Math.max(1, c.insertPages - filePages(c))}`);
    try {
      insertRows(c, m, role, state, origin, originIncarnation);
    } finally {
      c.db.pragma(`max_page_count = ${c.maxPages}`);
    }
  } else {
    insertRows(c, m, role, state, origin, originIncarnation);
  }
}

function insertRows(c: SpoolContext, m: NewMessage, role: Role, state: MessageState, origin: string, originIncarnation: string): void {
  c.st.insertMsg.run({
    id: m.id,
    role,
    state,
    origin,
    originIncarnation,
    sender: m.sender,
    size: m.body.length,
    receivedAt: m.receivedAt,
    nextAttemptAt: m.receivedAt,
    client: m.client ?? null,
    shadowPeer: null,
  });
  storeBody(c, m.id, m.body);
  m.recipients.forEach((r, i) => c.st.insertRcpt.run(m.id, i, r));
}

/**
 * A new message's body: in the bodies table, or from FILE_MIN_BYTES on in a file of its own
 * (files.ts), written and synced before its row; inside the caller's savepoint (one that
 * rolls back removes the file), after the messages row (the foreign key).
 */
export function storeBody(c: SpoolContext, id: string, body: NewMessage['body']): void {
  const b = wholeBody(body);
  if (b.length < FILE_MIN_BYTES) {
    c.st.insertBody.run(id, b);
    return;
  }
  if (c.insertPages && Number(c.db.pragma('page_count', { simple: true })) + filePages(c, b.length) > c.insertPages) {
    throw Object.assign(new Error('database or disk is full (spool.maxSizeBytes)'), { code: 'SQLITE_FULL' });
  }
  c.st.insertBodyFile.run(id, c.files.write(id, b), b.length);
}

/** The pages the body files take under spool.maxSizeBytes (with `more` bytes of a new one). */
function filePages(c: SpoolContext, more = 0): number {
  return Math.ceil((c.files.bytes + more) / c.pageSize);
}

export function spoolPrimary(c: SpoolContext, m: NewMessage): void {
  insert(c, m, 'primary', 'spooled', c.node, c.incarnation);
}

export function markAccepted(c: SpoolContext, id: string, shadowPeer: string | null, bounceFor?: RecipientDiscard): void {
  const r = c.st.setState.run('queued', shadowPeer, id);
  if (r.changes !== 1) throw new Error(`markAccepted: no primary message ${id}`);
  // the bounce and the bounced recipients settle in one transaction: no lost, no double bounce
  if (bounceFor) reportLocked(c, bounceFor.id, bounceFor.idx);
}

export function settleFailures(c: SpoolContext, id: string, idxs: number[]): { purged: boolean } {
  return { purged: reportLocked(c, id, idxs) };
}

function reportLocked(c: SpoolContext, id: string, idxs: number[]): boolean {
  const msg = c.st.getMsg.get(id) as MessageRow | undefined;
  if (!msg || msg.role !== 'primary') return true;
  for (const idx of idxs) c.st.rcptReport.run(id, idx);
  return finishLocked(c, msg, idxs);
}

/**
 * Purges the message when nothing is left to do; otherwise owes the peer recipient-level
 * discards for `doneIdx`. Returns whether it was purged.
 */
export function finishLocked(c: SpoolContext, msg: MessageRow, doneIdx: number[]): boolean {
  const pending = (c.st.rcptPending.get(msg.id) as { n: number }).n;
  const unreported = (c.st.rcptUnreported.get(msg.id) as { n: number }).n;
  if (pending === 0 && unreported === 0) {
    purgeLocked(c, msg);
    return true;
  }
  if (msg.shadow_peer) {
    const now = Date.now();
    for (const idx of doneIdx) c.st.outboxRcptAdd.run(msg.shadow_peer, msg.id, idx, now);
  }
  return false;
}

/** Deletes the message and, in the same transaction, owes its shadow peer the discard. */
export function purgeLocked(c: SpoolContext, msg: MessageRow): void {
  c.st.deleteMsg.run(msg.id);
  if (msg.shadow_peer) {
    // the whole-message discard supersedes recipient discards still owed
    c.st.outboxRcptDelMsg.run(msg.shadow_peer, msg.id);
    c.st.outboxAdd.run(msg.shadow_peer, msg.id, Date.now());
  }
}

export function dropUnacked(c: SpoolContext, id: string, owedDiscardTo: string[]): void {
  c.st.deleteSpooled.run(id);
  // a peer may still hold a late copy
  for (const peer of owedDiscardTo) c.st.outboxAdd.run(peer, id, Date.now());
}

export function recordAttempt(c: SpoolContext, id: string, outcomes: RecipientOutcome[], nextAttemptAt: number, error: string | null): AttemptResult {
  const msg = c.st.getMsg.get(id) as MessageRow | undefined;
  if (!msg || msg.role !== 'primary') return { purged: true, pending: 0, unreported: 0, gone: true };
  const done: number[] = [];
  for (const o of outcomes) {
    if (o.state !== 'pending') {
      if (c.st.rcptUpdate.run(o.state, o.error ?? null, id, o.idx).changes && o.state === 'delivered') done.push(o.idx);
    } else if (o.error) {
      c.st.rcptError.run(o.error, id, o.idx);
    }
  }
  if (finishLocked(c, msg, done)) return { purged: true, pending: 0, unreported: 0, gone: false };
  c.st.afterAttempt.run(nextAttemptAt, error, id);
  const pending = (c.st.rcptPending.get(id) as { n: number }).n;
  const unreported = (c.st.rcptUnreported.get(id) as { n: number }).n;
  return { purged: false, pending, unreported, gone: false };
}

export function deferUntil(c: SpoolContext, id: string, at: number): void {
  c.st.setNextAttempt.run(at, id);
}

export function due(c: SpoolContext, now: number, limit: number, heldPeers: string[]): string[] {
  return (c.st.due.all(now, JSON.stringify(heldPeers), limit) as Array<{ id: string }>).map((r) => r.id);
}

export function nextDueAt(c: SpoolContext, heldPeers: string[]): number | null {
  return (c.st.nextDue.get(JSON.stringify(heldPeers)) as { t: number | null }).t;
}

export function dropPromotedByPeer(c: SpoolContext, peer: string, ids: string[]): string[] {
  // the peer delivers these; no discard is owed for them
  return ids.filter((id) => c.st.dropOwnPromoted.run(id, c.node, peer).changes > 0);
}

export function knownPrimaries(c: SpoolContext, ids: string[], asker?: string): string[] {
  if (asker === undefined) return ids.filter((id) => c.st.knownPrimary.get(id, c.node) !== undefined);
  return ids.filter((id) => c.st.knownPrimaryFor.get(id, c.node, asker) !== undefined);
}

export function oweDiscards(c: SpoolContext, peer: string, ids: string[]): void {
  const now = Date.now();
  for (const id of ids) c.st.outboxAdd.run(peer, id, now);
}

export function inDoubt(c: SpoolContext): string[] {
  return (c.st.spooledIds.all() as Array<{ id: string }>).map((r) => r.id);
}

export function settleInDoubt(c: SpoolContext, items: InDoubtOutcome[], peers: string[]): { queued: string[]; dropped: string[] } {
  const queued: string[] = [];
  const dropped: string[] = [];
  const now = Date.now();
  for (const { id, outcome } of items) {
    if (outcome === 'absent') {
      // every peer said it holds no copy (and refuses a late one): no 250 was sent
      if (c.st.deleteSpooled.run(id).changes) dropped.push(id);
    } else if (outcome === 'unanswered') {
      if (c.st.queueSpooled.run(null, id).changes) {
        queued.push(id);
        // a peer that could not be asked may hold a copy: it must not promote it later
        for (const p of peers) c.st.outboxAdd.run(p, id, now);
      }
    } else if (c.st.queueSpooled.run(outcome.held, id).changes) {
      queued.push(id);
    }
  }
  return { queued, dropped };
}
