/**
 * Operator actions (the queue tools: hold, release, retry, flush, delete, backup). The
 * writes here run inside a group commit (index.ts hands them to `write`).
 */
import Database from 'better-sqlite3';
import { purgeLocked } from './primary.js';
import type { MessageRow, SpoolContext } from './types.js';

export function hold(c: SpoolContext, id: string): boolean {
  return c.st.hold.run(id).changes === 1;
}

export function release(c: SpoolContext, id: string, now: number): boolean {
  return c.st.release.run(now, id).changes === 1;
}

export function retryNow(c: SpoolContext, id: string, now: number): boolean {
  return c.st.retryNow.run(now, id).changes === 1;
}

export function retryAllNow(c: SpoolContext, now: number): number {
  return c.st.retryAllNow.run(now, now).changes;
}

export function deletePrimary(c: SpoolContext, id: string): string | null | undefined {
  const msg = c.st.getMsg.get(id) as MessageRow | undefined;
  // a spooled message is still being accepted: its client has no 250 yet
  if (!msg || msg.role !== 'primary' || msg.state === 'spooled') return undefined;
  purgeLocked(c, msg);
  return msg.shadow_peer;
}

export function deferredIds(c: SpoolContext): string[] {
  return (c.st.deferredIds.all() as Array<{ id: string }>).map((r) => r.id);
}

export async function backup(c: SpoolContext, dest: string): Promise<{ totalPages: number }> {
  const r = await c.db.backup(dest);
  // a backup stays one file (restored as spool.db alone): the bodies kept in files go into
  // its bodies table; a file unlinked since the copy was made is a message purged since
  const out = new Database(dest);
  try {
    out.pragma('foreign_keys = ON');
    const rows = out.prepare(`SELECT id, name FROM body_files`).all() as Array<{ id: string; name: string }>;
    const insert = out.prepare(`INSERT INTO bodies(id, body) VALUES(?, ?)`);
    const drop = out.prepare(`DELETE FROM messages WHERE id=?`);
    out.transaction(() => {
      for (const { id, name } of rows) {
        const body = c.files.read(name);
        if (body) insert.run(id, body);
        else drop.run(id);
      }
      out.exec(`DELETE FROM body_files; DELETE FROM gone_files;`);
    })();
  } finally {
    out.close();
  }
  return { totalPages: r.totalPages };
}

/**
 * The operator deletes a primary *with* a bounce: its pending recipients fail with `reason`
 * and it is due at once (queued, also when it was held), so the delivery worker bounces them
 * to the sender through the usual path (the bounce is shadowed like any message, then this
 * one is purged and its discard owed). Resolves with the number of recipients failed, or
 * undefined when no such primary exists (or it is still being accepted).
 */
export function failForBounce(c: SpoolContext, id: string, reason: string, now: number): number | undefined {
  const msg = c.st.getMsg.get(id) as MessageRow | undefined;
  if (!msg || msg.role !== 'primary' || msg.state === 'spooled') return undefined;
  const failed = c.st.rcptFailPending.run(reason, id).changes;
  c.st.requeueNow.run(now, id);
  return failed;
}
