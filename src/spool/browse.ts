/**
 * The queue browser's reads (the dashboard's Queue page, `status`): one page of messages
 * filtered by state and searched by id, sender or recipient, counts by state, and the
 * replies recipients are waiting on. Sized for 100,000 messages: a page's ids come from an
 * index alone (migration 3), then only that page's rows and recipients are read.
 */
import type { MessageRow, MessageSummary, SpoolContext } from './types.js';
import { summary } from './inspect.js';

/** Postfix's queue names where they fit: deferred = queued after a failed attempt. */
export const BROWSE_STATES = ['all', 'queued', 'deferred', 'held', 'shadow', 'spooled'] as const;
export type BrowseState = (typeof BROWSE_STATES)[number];

export interface BrowseQuery {
  state: BrowseState;
  /** a queue id (or its first characters), or part of the sender or of a recipient address */
  search?: string;
  order: 'oldest' | 'newest';
  offset: number;
  limit: number;
}

export interface BrowsePage {
  total: number;
  offset: number;
  limit: number;
  messages: MessageSummary[];
}

/** Messages by what an operator filters on; `oldestReceivedAt` null when there are none. */
export interface QueueCounts {
  queued: number;
  deferred: number;
  held: number;
  spooled: number;
  shadow: number;
  oldestPrimaryAt: number | null;
  oldestShadowAt: number | null;
}

export interface ErrorGroup {
  /** the last reply (or local error) these recipients are waiting on */
  error: string;
  recipients: number;
  messages: number;
}

const STATE_WHERE: Record<BrowseState, string> = {
  all: '1',
  // the expression is the one indexed (messages_state_arrival): the planner matches it as written
  queued: `role='primary' AND state='queued' AND (last_error IS NOT NULL)=0`,
  deferred: `role='primary' AND state='queued' AND (last_error IS NOT NULL)=1`,
  held: `role='primary' AND state='held'`,
  shadow: `role='shadow' AND state='shadow'`,
  spooled: `role='primary' AND state='spooled'`,
};

const QUEUE_ID = /^[0-9A-F]{4,32}$/i;

/** `LIKE` pattern for a substring, with the wildcards of the text itself escaped. */
function likeContains(s: string): string {
  return `%${s.replace(/[\\%_]/g, (ch) => `\\${ch}`)}%`;
}

function where(q: BrowseQuery): { sql: string; params: unknown[] } {
  const parts = [STATE_WHERE[q.state]];
  const params: unknown[] = [];
  const s = q.search?.trim();
  if (s) {
    // a queue id, or its start (ids are upper-case hex, so the primary key finds a prefix)
    const idTerm = QUEUE_ID.test(s) ? `(id >= ? AND id < ?) OR ` : '';
    if (idTerm) params.push(s.toUpperCase(), `${s.toUpperCase()}\u{10FFFF}`);
    // two plain scans (senders, recipient addresses) instead of a subquery per message
    parts.push(
      `(${idTerm}id IN (SELECT id FROM messages WHERE sender LIKE ? ESCAPE '\\' UNION SELECT message_id FROM recipients WHERE address LIKE ? ESCAPE '\\'))`,
    );
    params.push(likeContains(s), likeContains(s));
  }
  return { sql: parts.join(' AND '), params };
}

export function browse(c: SpoolContext, q: BrowseQuery): BrowsePage {
  const w = where(q);
  const dir = q.order === 'newest' ? 'DESC' : 'ASC';
  const total = (c.db.prepare(`SELECT COUNT(*) AS n FROM messages WHERE ${w.sql}`).get(...w.params) as { n: number }).n;
  const ids = c.db
    .prepare(`SELECT id FROM messages WHERE ${w.sql} ORDER BY received_at ${dir}, id ${dir} LIMIT ? OFFSET ?`)
    .all(...w.params, q.limit, q.offset) as Array<{ id: string }>;
  const messages: MessageSummary[] = [];
  for (const { id } of ids) {
    const row = c.st.getMsg.get(id) as MessageRow | undefined;
    if (row) messages.push(summary(c, row));
  }
  return { total, offset: q.offset, limit: q.limit, messages };
}

export function queueCounts(c: SpoolContext): QueueCounts {
  const n: QueueCounts = { queued: 0, deferred: 0, held: 0, spooled: 0, shadow: 0, oldestPrimaryAt: null, oldestShadowAt: null };
  const rows = c.db
    .prepare(
      `SELECT role, state, (last_error IS NOT NULL) AS failed, COUNT(*) AS n, MIN(received_at) AS oldest
         FROM messages GROUP BY role, state, (last_error IS NOT NULL)`,
    )
    .all() as Array<{ role: string; state: string; failed: number; n: number; oldest: number }>;
  const older = (a: number | null, b: number) => (a === null ? b : Math.min(a, b));
  for (const r of rows) {
    if (r.role === 'shadow') {
      n.shadow += r.n;
      n.oldestShadowAt = older(n.oldestShadowAt, r.oldest);
      continue;
    }
    if (r.state === 'spooled') {
      // not accepted yet: nobody waits on it, so it does not count as the oldest message
      n.spooled += r.n;
      continue;
    }
    if (r.state === 'held') n.held += r.n;
    else if (r.failed) n.deferred += r.n;
    else n.queued += r.n;
    n.oldestPrimaryAt = older(n.oldestPrimaryAt, r.oldest);
  }
  return n;
}

/** The replies pending recipients of primaries wait on, most frequent first. */
export function topErrors(c: SpoolContext, limit: number): ErrorGroup[] {
  return c.db
    .prepare(
      `SELECT r.last_error AS error, COUNT(*) AS recipients, COUNT(DISTINCT r.message_id) AS messages
         FROM recipients r JOIN messages m ON m.id = r.message_id
        WHERE r.state = 'pending' AND r.last_error IS NOT NULL AND m.role = 'primary'
        GROUP BY r.last_error ORDER BY recipients DESC, error LIMIT ?`,
    )
    .all(limit) as ErrorGroup[];
}
