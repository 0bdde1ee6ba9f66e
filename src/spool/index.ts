/**
 * spool — the only owner of SQLite. Every state change of a message is one named method.
 *
 * Implementation summary:
 * - One database file per node (`<dataDir>/spool.db`), WAL journal, `synchronous=FULL`:
 *   a resolved write promise means the change is on disk (our 250 is a durability promise).
 * - Writes are group-committed: all writes issued in the same event-loop turn run in one
 *   transaction (one fsync), each inside its own savepoint so one failing write does not
 *   undo the others. Reads are synchronous. The daemon runs the writes on a thread of their
 *   own (thread.ts: fsyncs never stall the event loop) and reads on a second connection.
 * - Roles: `primary` (this node accepted it and delivers it) and `shadow` (a copy held for
 *   the peer named in `origin`, never delivered unless promoted).
 * - Primary states: `spooled` (written, shadow copy not yet confirmed, no 250 given) →
 *   `queued` (accepted, 250 given). On open, `spooled` rows are dropped: their client
 *   never saw 250 and retries.
 * - When every recipient of a primary is final (delivered, or failed with its bounce accepted
 *   or not needed), the message is purged and a discard for its shadow copy is queued in the
 *   outbox in the same transaction. A recipient done while others are still pending owes the
 *   peer a recipient-level discard (`outbox_rcpt`), so a promotion delivers only the rest.
 * - Failover (shadow side): `promoteShadows` turns a primary's shadow copies into this node's
 *   own queued primaries and records them in `promoted` until their origin has reconciled;
 *   a discard that arrives for a promoted message cancels it (or counts a duplicate).
 * - Group commit runs `BEGIN IMMEDIATE` (a locked database fails fast, once per batch). When
 *   SQLite rolls a whole batch back (SQLITE_FULL, IOERR), the failing write is rejected and
 *   the others run again in the next batch — nothing is reported durable that was not.
 * - `maxSizeBytes` caps the file (`PRAGMA max_page_count`); new messages must leave a reserve
 *   free, so delivery bookkeeping and purges still work on a full spool.
 * - The schema is versioned in `meta.schema_version`; migrations run in order on open.
 */
import Database from 'better-sqlite3';
import { mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';

export type Role = 'primary' | 'shadow';
export type MessageState = 'spooled' | 'queued' | 'held' | 'shadow';
export type RecipientState = 'pending' | 'delivered' | 'failed';

export interface NewMessage {
  id: string;
  sender: string;
  recipients: string[];
  body: Buffer;
  receivedAt: number;
  client?: string;
}

export interface ShadowCopy extends NewMessage {
  origin: string;
  originIncarnation: string;
}

export interface RecipientRow {
  idx: number;
  address: string;
  state: RecipientState;
  lastError: string | null;
  /** a failed recipient whose bounce was accepted (or not needed) */
  reported: boolean;
}

export interface MessageSummary {
  id: string;
  role: Role;
  state: MessageState;
  origin: string;
  sender: string;
  size: number;
  receivedAt: number;
  nextAttemptAt: number;
  attempts: number;
  lastError: string | null;
  shadowPeer: string | null;
  recipients: RecipientRow[];
}

export interface MessageWithBody extends MessageSummary {
  body: Buffer;
}

/** What `queue show` needs beyond the summary. */
export interface MessageDetail extends MessageSummary {
  client: string | null;
  originIncarnation: string;
}

/** One line of the queue gauges: how many messages of a role/state, and the oldest arrival. */
export interface QueueStat {
  role: Role;
  state: MessageState;
  count: number;
  oldestReceivedAt: number;
}

export interface RecipientOutcome {
  idx: number;
  state: RecipientState;
  error?: string;
}

export interface AttemptResult {
  /** every recipient is final and the message was purged */
  purged: boolean;
  pending: number;
  /** failed recipients still waiting for their bounce */
  unreported: number;
  /** the message was no longer in the spool (cancelled while the attempt ran) */
  gone: boolean;
}

/** What a discard from a primary did to this node's copies. */
export interface DiscardResult {
  /** shadow copies purged */
  purged: number;
  /** promoted copies cancelled before this node finished them */
  cancelled: string[];
  /** ids (or id/recipient) both the origin and this node delivered */
  duplicates: string[];
}

export interface PromotedMessage {
  id: string;
  origin: string;
  pending: number;
}

export interface ShadowRef {
  id: string;
  origin: string;
  originIncarnation: string;
  receivedAt: number;
}

export interface RecipientDiscard {
  id: string;
  idx: number[];
}

const SCHEMA_VERSION = 2;

export const MIGRATIONS: Readonly<Record<number, string>> = {
  1: `
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE messages (
      id TEXT PRIMARY KEY,
      role TEXT NOT NULL CHECK (role IN ('primary','shadow')),
      state TEXT NOT NULL CHECK (state IN ('spooled','queued','held','shadow')),
      origin TEXT NOT NULL,
      origin_incarnation TEXT NOT NULL,
      sender TEXT NOT NULL,
      size INTEGER NOT NULL,
      received_at INTEGER NOT NULL,
      next_attempt_at INTEGER NOT NULL,
      attempts INTEGER NOT NULL DEFAULT 0,
      last_error TEXT,
      shadow_peer TEXT,
      client TEXT,
      body BLOB NOT NULL
    );
    CREATE INDEX messages_due ON messages (role, state, next_attempt_at);
    CREATE INDEX messages_origin ON messages (role, origin);
    CREATE TABLE recipients (
      message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
      idx INTEGER NOT NULL,
      address TEXT NOT NULL,
      state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending','delivered','failed')),
      last_error TEXT,
      PRIMARY KEY (message_id, idx)
    ) WITHOUT ROWID;
    CREATE TABLE outbox (
      peer TEXT NOT NULL,
      message_id TEXT NOT NULL,
      created_at INTEGER NOT NULL,
      PRIMARY KEY (peer, message_id)
    ) WITHOUT ROWID;
  `,
  2: `
    -- a failed recipient stays until its bounce is accepted (or not needed)
    ALTER TABLE recipients ADD COLUMN reported INTEGER NOT NULL DEFAULT 0;
    -- recipient-level discards owed to peers (partial delivery)
    CREATE TABLE outbox_rcpt (
      peer TEXT NOT NULL,
      message_id TEXT NOT NULL,
      idx INTEGER NOT NULL,
      created_at INTEGER NOT NULL,
      PRIMARY KEY (peer, message_id, idx)
    ) WITHOUT ROWID;
    -- shadow copies this node promoted, kept until their origin has reconciled
    CREATE TABLE promoted (
      origin TEXT NOT NULL,
      origin_incarnation TEXT NOT NULL,
      message_id TEXT NOT NULL,
      promoted_at INTEGER NOT NULL,
      PRIMARY KEY (origin, message_id)
    ) WITHOUT ROWID;
    CREATE INDEX messages_age ON messages (role, origin, received_at, id);
  `,
};

interface Pending {
  fn: () => unknown;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

interface MessageRow {
  id: string;
  role: Role;
  state: MessageState;
  origin: string;
  sender: string;
  size: number;
  received_at: number;
  next_attempt_at: number;
  attempts: number;
  last_error: string | null;
  shadow_peer: string | null;
}

export interface SpoolOptions {
  /** this node's name: origin of the primaries it accepts */
  node: string;
  /** inspection only (queue tools while the daemon runs): no migration, no writes */
  readonly?: boolean;
  /**
   * How long a write waits for a lock held by another connection. better-sqlite3 waits
   * synchronously (the event loop stalls), so keep it short. Default 1000.
   */
  busyTimeoutMs?: number;
  /** cap on the database size; 0 or absent = unlimited */
  maxSizeBytes?: number;
}

/** Pages a new message must leave free under the cap (bookkeeping and purges need some). */
function reservePages(maxPages: number): number {
  return Math.max(32, Math.floor(maxPages * 0.05));
}

export class Spool {
  readonly incarnation: string;
  readonly file: string;
  private readonly db: Database.Database;
  private pending: Pending[] = [];
  private scheduled = false;
  private closed = false;
  private readonly st: ReturnType<Spool['prepare']>;
  /** hard page cap and the tighter cap for inserting a new message (0 = none) */
  private readonly maxPages: number;
  private readonly insertPages: number;

  protected constructor(
    db: Database.Database,
    file: string,
    private readonly opts: SpoolOptions,
  ) {
    this.db = db;
    this.file = file;
    if (opts.readonly) {
      const v = Number(this.meta('schema_version') ?? 0);
      if (v !== SCHEMA_VERSION) throw new Error(`spool ${file} has schema version ${v}, this build reads ${SCHEMA_VERSION}`);
    } else {
      this.migrate();
    }
    this.incarnation = this.meta('incarnation') ?? this.initIncarnation();
    this.st = this.prepare();
    const pageSize = Number(db.pragma('page_size', { simple: true }));
    this.maxPages = opts.maxSizeBytes ? Math.max(1, Math.floor(opts.maxSizeBytes / pageSize)) : 0;
    this.insertPages = this.maxPages ? Math.max(1, this.maxPages - reservePages(this.maxPages)) : 0;
    if (this.maxPages && !opts.readonly) db.pragma(`max_page_count = ${this.maxPages}`);
  }

  /** Opens (creating if needed) `<dataDir>/spool.db`. */
  static open(dataDir: string, opts: SpoolOptions): Spool {
    const file = path.join(dataDir, 'spool.db');
    if (opts.readonly) {
      const db = new Database(file, { readonly: true, fileMustExist: true });
      db.pragma('busy_timeout = 5000');
      return new Spool(db, file, opts);
    }
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const db = new Database(file);
    db.pragma('journal_mode = WAL');
    // better-sqlite3 builds SQLite with WAL + synchronous=NORMAL by default, which can lose
    // the last commits on power loss; our 250 promises durability.
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    db.pragma(`busy_timeout = ${Math.max(0, Math.floor(opts.busyTimeoutMs ?? 1000))}`);
    return new Spool(db, file, opts);
  }

  private migrate(): void {
    const hasMeta = this.db
      .prepare(`SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'`)
      .get();
    let version = hasMeta ? Number(this.meta('schema_version') ?? 0) : 0;
    if (version > SCHEMA_VERSION) {
      throw new Error(`spool ${this.file} has schema version ${version}, newer than this build (${SCHEMA_VERSION})`);
    }
    while (version < SCHEMA_VERSION) {
      const next = version + 1;
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[next]!);
        this.db
          .prepare(`INSERT INTO meta(key,value) VALUES('schema_version',?) ON CONFLICT(key) DO UPDATE SET value=excluded.value`)
          .run(String(next));
      })();
      version = next;
    }
  }

  private meta(key: string): string | undefined {
    const row = this.db.prepare(`SELECT value FROM meta WHERE key=?`).get(key) as { value: string } | undefined;
    return row?.value;
  }

  private initIncarnation(): string {
    const id = randomUUID();
    this.db.prepare(`INSERT INTO meta(key,value) VALUES('incarnation',?)`).run(id);
    return id;
  }

  private prepare() {
    const db = this.db;
    return {
      insertMsg: db.prepare(
        `INSERT INTO messages(id,role,state,origin,origin_incarnation,sender,size,received_at,next_attempt_at,client,shadow_peer,body)
         VALUES(@id,@role,@state,@origin,@originIncarnation,@sender,@size,@receivedAt,@nextAttemptAt,@client,@shadowPeer,@body)`,
      ),
      insertRcpt: db.prepare(`INSERT INTO recipients(message_id,idx,address) VALUES(?,?,?)`),
      exists: db.prepare(`SELECT role, origin FROM messages WHERE id=?`),
      setState: db.prepare(`UPDATE messages SET state=?, shadow_peer=? WHERE id=? AND role='primary'`),
      deleteMsg: db.prepare(`DELETE FROM messages WHERE id=?`),
      deleteSpooled: db.prepare(`DELETE FROM messages WHERE id=? AND role='primary' AND state='spooled'`),
      deleteShadow: db.prepare(`DELETE FROM messages WHERE id=? AND role='shadow' AND origin=?`),
      rcptUpdate: db.prepare(`UPDATE recipients SET state=?, last_error=? WHERE message_id=? AND idx=? AND state='pending'`),
      rcptError: db.prepare(`UPDATE recipients SET last_error=? WHERE message_id=? AND idx=?`),
      rcptPending: db.prepare(`SELECT COUNT(*) AS n FROM recipients WHERE message_id=? AND state='pending'`),
      afterAttempt: db.prepare(
        `UPDATE messages SET attempts=attempts+1, next_attempt_at=?, last_error=? WHERE id=?`,
      ),
      getMsg: db.prepare(
        `SELECT id,role,state,origin,sender,size,received_at,next_attempt_at,attempts,last_error,shadow_peer FROM messages WHERE id=?`,
      ),
      getBody: db.prepare(`SELECT body FROM messages WHERE id=?`),
      getRcpts: db.prepare(`SELECT idx,address,state,last_error,reported FROM recipients WHERE message_id=? ORDER BY idx`),
      // held: peers a primary must reconcile with before delivering what it shadowed there
      due: db.prepare(
        `SELECT id FROM messages WHERE role='primary' AND state='queued' AND next_attempt_at<=?
           AND (shadow_peer IS NULL OR shadow_peer NOT IN (SELECT value FROM json_each(?)))
         ORDER BY next_attempt_at LIMIT ?`,
      ),
      nextDue: db.prepare(
        `SELECT MIN(next_attempt_at) AS t FROM messages WHERE role='primary' AND state='queued'
           AND (shadow_peer IS NULL OR shadow_peer NOT IN (SELECT value FROM json_each(?)))`,
      ),
      rcptUnreported: db.prepare(`SELECT COUNT(*) AS n FROM recipients WHERE message_id=? AND state='failed' AND reported=0`),
      rcptReport: db.prepare(`UPDATE recipients SET reported=1 WHERE message_id=? AND idx=? AND state='failed' AND reported=0`),
      rcptDoneByOrigin: db.prepare(
        `UPDATE recipients SET state='delivered', last_error=? WHERE message_id=? AND idx=? AND state='pending'`,
      ),
      rcptState: db.prepare(`SELECT state FROM recipients WHERE message_id=? AND idx=?`),
      rcptNotPending: db.prepare(`SELECT COUNT(*) AS n FROM recipients WHERE message_id=? AND state<>'pending'`),
      setNextAttempt: db.prepare(`UPDATE messages SET next_attempt_at=? WHERE id=?`),
      outboxRcptAdd: db.prepare(
        `INSERT INTO outbox_rcpt(peer,message_id,idx,created_at) VALUES(?,?,?,?) ON CONFLICT DO NOTHING`,
      ),
      outboxRcptList: db.prepare(`SELECT message_id, idx FROM outbox_rcpt WHERE peer=? ORDER BY created_at, message_id, idx LIMIT ?`),
      outboxRcptDel: db.prepare(`DELETE FROM outbox_rcpt WHERE peer=? AND message_id=? AND idx=?`),
      outboxRcptDelMsg: db.prepare(`DELETE FROM outbox_rcpt WHERE peer=? AND message_id=?`),
      outboxRcptCount: db.prepare(`SELECT COUNT(*) AS n FROM outbox_rcpt`),
      shadowsOf: db.prepare(`SELECT id, origin_incarnation FROM messages WHERE role='shadow' AND origin=?`),
      hasShadowsOf: db.prepare(`SELECT 1 AS x FROM messages WHERE role='shadow' AND origin=? LIMIT 1`),
      shadowIncarnations: db.prepare(
        `SELECT DISTINCT origin_incarnation AS inc FROM messages WHERE role='shadow' AND origin=?`,
      ),
      promote: db.prepare(
        `UPDATE messages SET role='primary', state='queued', next_attempt_at=?, shadow_peer=NULL WHERE id=? AND role='shadow'`,
      ),
      promotedAdd: db.prepare(
        `INSERT INTO promoted(origin,origin_incarnation,message_id,promoted_at) VALUES(?,?,?,?) ON CONFLICT DO NOTHING`,
      ),
      promotedGet: db.prepare(`SELECT 1 AS x FROM promoted WHERE origin=? AND message_id=?`),
      promotedDel: db.prepare(`DELETE FROM promoted WHERE origin=? AND message_id=?`),
      promotedFor: db.prepare(`SELECT message_id FROM promoted WHERE origin=? AND origin_incarnation=? ORDER BY promoted_at`),
      promotedDropStale: db.prepare(`DELETE FROM promoted WHERE origin=? AND origin_incarnation<>?`),
      promotedPrune: db.prepare(`DELETE FROM promoted WHERE promoted_at<?`),
      dropOwnPromoted: db.prepare(
        `DELETE FROM messages WHERE id=? AND role='primary' AND origin=? AND shadow_peer=? AND state IN ('queued','held')`,
      ),
      knownPrimary: db.prepare(`SELECT 1 AS x FROM messages WHERE id=? AND role='primary' AND origin=?`),
      shadowsToVerify: db.prepare(
        `SELECT id, received_at FROM messages
          WHERE role='shadow' AND origin=? AND origin_incarnation=? AND received_at<? AND (received_at, id) > (?, ?)
          ORDER BY received_at, id LIMIT ?`,
      ),
      oldShadows: db.prepare(
        `SELECT id, origin_incarnation, received_at FROM messages WHERE role='shadow' AND origin=? AND received_at<? ORDER BY received_at LIMIT ?`,
      ),
      all: db.prepare(
        `SELECT id,role,state,origin,sender,size,received_at,next_attempt_at,attempts,last_error,shadow_peer FROM messages ORDER BY received_at`,
      ),
      outboxAdd: db.prepare(
        `INSERT INTO outbox(peer,message_id,created_at) VALUES(?,?,?) ON CONFLICT(peer,message_id) DO NOTHING`,
      ),
      outboxList: db.prepare(`SELECT message_id FROM outbox WHERE peer=? ORDER BY created_at LIMIT ?`),
      outboxDel: db.prepare(`DELETE FROM outbox WHERE peer=? AND message_id=?`),
      outboxCount: db.prepare(`SELECT COUNT(*) AS n FROM outbox`),
      spooledIds: db.prepare(`SELECT id FROM messages WHERE role='primary' AND state='spooled'`),
      dropSpooled: db.prepare(`DELETE FROM messages WHERE role='primary' AND state='spooled'`),
      // operator actions (queue tools)
      hold: db.prepare(`UPDATE messages SET state='held' WHERE id=? AND role='primary' AND state='queued'`),
      release: db.prepare(`UPDATE messages SET state='queued', next_attempt_at=? WHERE id=? AND role='primary' AND state='held'`),
      retryNow: db.prepare(`UPDATE messages SET next_attempt_at=? WHERE id=? AND role='primary' AND state='queued'`),
      retryAllNow: db.prepare(`UPDATE messages SET next_attempt_at=? WHERE role='primary' AND state='queued' AND next_attempt_at>?`),
      deferredIds: db.prepare(
        `SELECT id FROM messages WHERE role='primary' AND state IN ('queued','held') AND attempts>0 AND last_error IS NOT NULL ORDER BY received_at`,
      ),
      getDetail: db.prepare(`SELECT client, origin_incarnation FROM messages WHERE id=?`),
      stats: db.prepare(
        `SELECT role, state, COUNT(*) AS n, MIN(received_at) AS oldest FROM messages GROUP BY role, state`,
      ),
      counts: db.prepare(`SELECT role, COUNT(*) AS n FROM messages GROUP BY role`),
    };
  }

  /** Runs `fn` in the next group commit; resolves once it is durable. */
  protected write<T>(fn: () => T): Promise<T> {
    if (this.closed) return Promise.reject(new Error('spool is closed'));
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ fn, resolve: resolve as (v: unknown) => void, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  private flush(): void {
    this.scheduled = false;
    const batch = this.pending;
    this.pending = [];
    if (batch.length === 0) return;
    const results: Array<{ ok: true; v: unknown } | { ok: false; e: unknown }> = [];
    let culprit = -1;
    try {
      // IMMEDIATE: take the write lock up front, so a locked database costs one busy wait
      // per batch, not one per write
      this.db
        .transaction(() => {
          for (const [i, op] of batch.entries()) {
            try {
              // a nested transaction is a savepoint: a failing op rolls back alone ...
              results.push({ ok: true, v: this.db.transaction(op.fn)() });
            } catch (e) {
              results.push({ ok: false, e });
              // ... except when SQLite rolled the whole transaction back (SQLITE_FULL, IOERR)
              if (!this.db.inTransaction) {
                culprit = i;
                throw e;
              }
            }
          }
        })
        .immediate();
    } catch (e) {
      if (culprit >= 0) {
        batch[culprit]!.reject(e);
        // the others were rolled back with it and did nothing: run them again
        this.pending = batch.filter((_, i) => i !== culprit).concat(this.pending);
        if (this.pending.length) this.schedule();
        return;
      }
      for (const op of batch) op.reject(e);
      return;
    }
    batch.forEach((op, i) => {
      const r = results[i]!;
      if (r.ok) op.resolve(r.v);
      else op.reject(r.e);
    });
  }

  private insert(m: NewMessage, role: Role, state: MessageState, origin: string, originIncarnation: string): void {
    if (this.insertPages) {
      // a new message must leave the reserve free (SQLite itself refuses with SQLITE_FULL)
      this.db.pragma(`max_page_count = ${this.insertPages}`);
      try {
        this.insertRows(m, role, state, origin, originIncarnation);
      } finally {
        this.db.pragma(`max_page_count = ${this.maxPages}`);
      }
    } else {
      this.insertRows(m, role, state, origin, originIncarnation);
    }
  }

  private insertRows(m: NewMessage, role: Role, state: MessageState, origin: string, originIncarnation: string): void {
    this.st.insertMsg.run({
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
      body: m.body,
    });
    m.recipients.forEach((r, i) => this.st.insertRcpt.run(m.id, i, r));
  }

  // ---- primary side -------------------------------------------------------------

  /** End of DATA: the message is on this node's disk, not yet acknowledged to the client. */
  spoolPrimary(m: NewMessage): Promise<void> {
    return this.write(() => this.insert(m, 'primary', 'spooled', this.opts.node, this.incarnation));
  }

  /**
   * The shadow copy is confirmed (or degraded policy): the message is ours to deliver.
   * `settles`: this message is the bounce for these failed recipients of another message;
   * they are marked reported in the same transaction (no lost and no double bounce).
   */
  markAccepted(id: string, shadowPeer: string | null, settles?: RecipientDiscard): Promise<void> {
    return this.write(() => {
      const r = this.st.setState.run('queued', shadowPeer, id);
      if (r.changes !== 1) throw new Error(`markAccepted: no primary message ${id}`);
      if (settles) this.reportLocked(settles.id, settles.idx);
    });
  }

  /** Failed recipients that need no bounce (null sender): mark them reported. */
  settleFailures(id: string, idxs: number[]): Promise<{ purged: boolean }> {
    return this.write(() => ({ purged: this.reportLocked(id, idxs) }));
  }

  private reportLocked(id: string, idxs: number[]): boolean {
    const msg = this.st.getMsg.get(id) as MessageRow | undefined;
    if (!msg || msg.role !== 'primary') return true;
    for (const idx of idxs) this.st.rcptReport.run(id, idx);
    return this.finishLocked(msg, idxs);
  }

  /**
   * Purges the message when nothing is left to do; otherwise owes the peer recipient-level
   * discards for `doneIdx`. Returns whether it was purged.
   */
  private finishLocked(msg: MessageRow, doneIdx: number[]): boolean {
    const pending = (this.st.rcptPending.get(msg.id) as { n: number }).n;
    const unreported = (this.st.rcptUnreported.get(msg.id) as { n: number }).n;
    if (pending === 0 && unreported === 0) {
      this.purgeLocked(msg);
      return true;
    }
    if (msg.shadow_peer) {
      const now = Date.now();
      for (const idx of doneIdx) this.st.outboxRcptAdd.run(msg.shadow_peer, msg.id, idx, now);
    }
    return false;
  }

  /**
   * The shadow copy failed: forget the local copy (the client gets 4xx and retries).
   * A peer may still hold a late copy, so a discard is owed to each peer named.
   */
  dropUnacked(id: string, owedDiscardTo: string[]): Promise<void> {
    return this.write(() => {
      this.st.deleteSpooled.run(id);
      for (const peer of owedDiscardTo) this.st.outboxAdd.run(peer, id, Date.now());
    });
  }

  /**
   * Records per-recipient outcomes of one delivery attempt. Purges when every recipient is
   * final and every failure reported; otherwise schedules the next attempt (pending
   * recipients, or a bounce still to be accepted) and owes the peer recipient discards.
   */
  recordAttempt(id: string, outcomes: RecipientOutcome[], nextAttemptAt: number, error: string | null): Promise<AttemptResult> {
    return this.write(() => {
      const msg = this.st.getMsg.get(id) as MessageRow | undefined;
      if (!msg || msg.role !== 'primary') return { purged: true, pending: 0, unreported: 0, gone: true };
      const done: number[] = [];
      for (const o of outcomes) {
        if (o.state !== 'pending') {
          if (this.st.rcptUpdate.run(o.state, o.error ?? null, id, o.idx).changes && o.state === 'delivered') done.push(o.idx);
        } else if (o.error) {
          this.st.rcptError.run(o.error, id, o.idx);
        }
      }
      if (this.finishLocked(msg, done)) return { purged: true, pending: 0, unreported: 0, gone: false };
      this.st.afterAttempt.run(nextAttemptAt, error, id);
      const pending = (this.st.rcptPending.get(id) as { n: number }).n;
      const unreported = (this.st.rcptUnreported.get(id) as { n: number }).n;
      return { purged: false, pending, unreported, gone: false };
    });
  }

  /** Moves the next attempt of a message (e.g. a bounce that could not be accepted yet). */
  deferUntil(id: string, at: number): Promise<void> {
    return this.write(() => {
      this.st.setNextAttempt.run(at, id);
    });
  }

  private purgeLocked(msg: MessageRow): void {
    this.st.deleteMsg.run(msg.id);
    if (msg.shadow_peer) {
      // the whole-message discard supersedes recipient discards still owed
      this.st.outboxRcptDelMsg.run(msg.shadow_peer, msg.id);
      this.st.outboxAdd.run(msg.shadow_peer, msg.id, Date.now());
    }
  }

  /**
   * Ids of accepted primaries due for an attempt, oldest first. `heldPeers`: skip messages
   * shadowed on these peers (this node must reconcile with them first).
   */
  due(now: number, limit: number, heldPeers: string[] = []): string[] {
    return (this.st.due.all(now, JSON.stringify(heldPeers), limit) as Array<{ id: string }>).map((r) => r.id);
  }

  /** Earliest next attempt of any queued primary (outside `heldPeers`), or null. */
  nextDueAt(heldPeers: string[] = []): number | null {
    return (this.st.nextDue.get(JSON.stringify(heldPeers)) as { t: number | null }).t;
  }

  /**
   * Reconcile (primary side): `peer` promoted these ids while it could not reach us. Drops
   * our own still-queued copies (the peer delivers them), owing no discard.
   */
  dropPromotedByPeer(peer: string, ids: string[]): Promise<string[]> {
    return this.write(() => ids.filter((id) => this.st.dropOwnPromoted.run(id, this.opts.node, peer).changes > 0));
  }

  /** Which of these ids this node holds as its own primary, in any state (orphan check). */
  knownPrimaries(ids: string[]): string[] {
    return ids.filter((id) => this.st.knownPrimary.get(id, this.opts.node) !== undefined);
  }

  // ---- shadow (peer) side -------------------------------------------------------

  /** Stores a copy for `origin`; idempotent by id. Resolves once durable. */
  storeShadow(m: ShadowCopy): Promise<'stored' | 'exists'> {
    return this.write(() => {
      if (this.st.exists.get(m.id)) return 'exists' as const;
      this.insert(m, 'shadow', 'shadow', m.origin, m.originIncarnation);
      return 'stored' as const;
    });
  }

  /**
   * The primary `origin` is done with these ids: drop our shadow copies. For a copy this
   * node promoted meanwhile, the origin delivered it too: cancel ours if still queued, and
   * report a duplicate when this node had already delivered (some of) it.
   */
  purgeShadows(origin: string, ids: string[]): Promise<DiscardResult> {
    return this.write(() => {
      const res: DiscardResult = { purged: 0, cancelled: [], duplicates: [] };
      for (const id of ids) {
        if (this.st.deleteShadow.run(id, origin).changes) {
          res.purged++;
          continue;
        }
        if (!this.st.promotedGet.get(origin, id)) continue;
        this.st.promotedDel.run(origin, id);
        const row = this.st.getMsg.get(id) as MessageRow | undefined;
        if (row && row.role === 'primary' && row.origin === origin) {
          if ((this.st.rcptNotPending.get(id) as { n: number }).n > 0) res.duplicates.push(id);
          this.st.deleteMsg.run(id);
          res.cancelled.push(id);
        } else {
          res.duplicates.push(id);
        }
      }
      return res;
    });
  }

  /**
   * The primary `origin` finished these recipients (partial delivery): a promotion must not
   * deliver them again. Applies to shadow copies and to copies this node promoted.
   */
  shadowRecipientsDone(origin: string, items: RecipientDiscard[]): Promise<{ applied: number; duplicates: string[] }> {
    return this.write(() => {
      let applied = 0;
      const duplicates: string[] = [];
      for (const { id, idx } of items) {
        const row = this.st.getMsg.get(id) as MessageRow | undefined;
        if (!row || row.origin !== origin) continue;
        const promoted = row.role === 'primary';
        if (promoted && !this.st.promotedGet.get(origin, id)) continue;
        for (const i of idx) {
          if (this.st.rcptDoneByOrigin.run(`done by ${origin}`, id, i).changes) applied++;
          else if (promoted && (this.st.rcptState.get(id, i) as { state: RecipientState } | undefined)?.state === 'delivered') {
            duplicates.push(`${id}/${i}`);
          }
        }
        if (promoted) this.finishLocked(row, []);
      }
      return { applied, duplicates };
    });
  }

  /**
   * Promotion: the shadow copies of `origin` (only those from incarnations other than
   * `exceptIncarnation`, when given) become this node's queued primaries with their still
   * pending recipients, recorded in `promoted` for the origin's reconcile. A copy with no
   * pending recipient left is simply dropped.
   */
  promoteShadows(origin: string, now: number, exceptIncarnation?: string): Promise<{ promoted: PromotedMessage[]; emptied: string[] }> {
    return this.write(() => {
      const promoted: PromotedMessage[] = [];
      const emptied: string[] = [];
      for (const r of this.st.shadowsOf.all(origin) as Array<{ id: string; origin_incarnation: string }>) {
        if (exceptIncarnation !== undefined && r.origin_incarnation === exceptIncarnation) continue;
        const pending = (this.st.rcptPending.get(r.id) as { n: number }).n;
        if (pending === 0) {
          this.st.deleteMsg.run(r.id);
          emptied.push(r.id);
          continue;
        }
        this.st.promote.run(now, r.id);
        this.st.promotedAdd.run(origin, r.origin_incarnation, r.id, now);
        promoted.push({ id: r.id, origin, pending });
      }
      return { promoted, emptied };
    });
  }

  hasShadowsFrom(origin: string): boolean {
    return this.st.hasShadowsOf.get(origin) !== undefined;
  }

  /** Incarnations of `origin` this node holds shadow copies from. */
  shadowIncarnations(origin: string): string[] {
    return (this.st.shadowIncarnations.all(origin) as Array<{ inc: string }>).map((r) => r.inc);
  }

  /**
   * Reconcile (shadow side): what this node promoted from `origin`'s current incarnation.
   * Runs in the write queue, so a promotion queued before the question is in the answer.
   * Records about earlier incarnations are useless to the origin and are dropped.
   */
  promotedFor(origin: string, incarnation: string): Promise<string[]> {
    return this.write(() => {
      this.st.promotedDropStale.run(origin, incarnation);
      return (this.st.promotedFor.all(origin, incarnation) as Array<{ message_id: string }>).map((r) => r.message_id);
    });
  }

  /** The origin has dropped its copies of these promoted ids: forget the records. */
  forgetPromoted(origin: string, ids: string[]): Promise<number> {
    return this.write(() => ids.reduce((n, id) => n + this.st.promotedDel.run(origin, id).changes, 0));
  }

  /** Drops promotion records older than `before` (the origin never came back). */
  prunePromoted(before: number): Promise<number> {
    return this.write(() => this.st.promotedPrune.run(before).changes);
  }

  /**
   * Shadow copies of `origin` (incarnation `incarnation`) received before `before`, after
   * the cursor (received_at, id), oldest first — candidates for the orphan check.
   */
  shadowsToVerify(origin: string, incarnation: string, before: number, after: { receivedAt: number; id: string }, limit: number): ShadowRef[] {
    return (
      this.st.shadowsToVerify.all(origin, incarnation, before, after.receivedAt, after.id, limit) as Array<{ id: string; received_at: number }>
    ).map((r) => ({ id: r.id, origin, originIncarnation: incarnation, receivedAt: r.received_at }));
  }

  /** Drops shadow copies only (orphans, expired copies); returns the ids dropped. */
  dropShadows(origin: string, ids: string[]): Promise<string[]> {
    return this.write(() => ids.filter((id) => this.st.deleteShadow.run(id, origin).changes > 0));
  }

  /** Shadow copies of `origin` received before `before` (maximum shadow age), oldest first. */
  oldShadows(origin: string, before: number, limit: number): ShadowRef[] {
    return (this.st.oldShadows.all(origin, before, limit) as Array<{ id: string; origin_incarnation: string; received_at: number }>).map(
      (r) => ({ id: r.id, origin, originIncarnation: r.origin_incarnation, receivedAt: r.received_at }),
    );
  }

  // ---- discards owed to peers ---------------------------------------------------

  owedDiscards(peer: string, limit: number): string[] {
    return (this.st.outboxList.all(peer, limit) as Array<{ message_id: string }>).map((r) => r.message_id);
  }

  discardsConfirmed(peer: string, ids: string[]): Promise<void> {
    return this.write(() => {
      for (const id of ids) this.st.outboxDel.run(peer, id);
    });
  }

  /** Recipient-level discards owed to `peer`, grouped by message. */
  owedRecipientDiscards(peer: string, limit: number): RecipientDiscard[] {
    const byId = new Map<string, number[]>();
    for (const r of this.st.outboxRcptList.all(peer, limit) as Array<{ message_id: string; idx: number }>) {
      const l = byId.get(r.message_id) ?? [];
      l.push(r.idx);
      byId.set(r.message_id, l);
    }
    return [...byId].map(([id, idx]) => ({ id, idx }));
  }

  recipientDiscardsConfirmed(peer: string, items: RecipientDiscard[]): Promise<void> {
    return this.write(() => {
      for (const { id, idx } of items) for (const i of idx) this.st.outboxRcptDel.run(peer, id, i);
    });
  }

  /** Discards (whole-message and recipient-level) not yet confirmed by peers. */
  discardsPending(): number {
    return (this.st.outboxCount.get() as { n: number }).n + (this.st.outboxRcptCount.get() as { n: number }).n;
  }

  // ---- operator actions (queue tools) --------------------------------------------

  /** Puts a queued primary on hold: delivery skips it until released. True if it was queued. */
  hold(id: string): Promise<boolean> {
    return this.write(() => this.st.hold.run(id).changes === 1);
  }

  /** Releases a held primary; it is due at once. True if it was held. */
  release(id: string, now = Date.now()): Promise<boolean> {
    return this.write(() => this.st.release.run(now, id).changes === 1);
  }

  /** Makes a queued primary due at once (`queue retry`). True if it was queued. */
  retryNow(id: string, now = Date.now()): Promise<boolean> {
    return this.write(() => this.st.retryNow.run(now, id).changes === 1);
  }

  /** Makes every queued primary due at once (`queue flush`). Resolves with how many moved. */
  retryAllNow(now = Date.now()): Promise<number> {
    return this.write(() => this.st.retryAllNow.run(now, now).changes);
  }

  /**
   * The operator deletes a primary (queued or held): it is purged without delivery and, in the
   * same transaction, a discard is owed to the peer holding its shadow copy. Resolves with that
   * peer's name (null when there was no shadow), or undefined when no such primary exists.
   */
  deletePrimary(id: string): Promise<string | null | undefined> {
    return this.write(() => {
      const msg = this.st.getMsg.get(id) as MessageRow | undefined;
      if (!msg || msg.role !== 'primary' || msg.state === 'spooled') return undefined;
      this.purgeLocked(msg);
      return msg.shadow_peer;
    });
  }

  /** Primaries whose last delivery attempt failed (Postfix's "deferred" queue), oldest first. */
  deferredIds(): string[] {
    return (this.st.deferredIds.all() as Array<{ id: string }>).map((r) => r.id);
  }

  /** Online backup to `dest` (SQLite backup API): consistent even while the daemon writes. */
  async backup(dest: string): Promise<{ totalPages: number }> {
    const r = await this.db.backup(dest);
    return { totalPages: r.totalPages };
  }

  // ---- recovery and inspection --------------------------------------------------

  /**
   * Start-up recovery: primaries that were spooled but never acknowledged are dropped (the
   * client saw no 250 and will retry), and a discard is owed to each peer in case one stored
   * the copy. Runs synchronously before anything else uses the spool.
   */
  recover(peers: string[] = []): { droppedUnacked: number } {
    const n = this.db.transaction(() => {
      const now = Date.now();
      for (const { id } of this.st.spooledIds.all() as Array<{ id: string }>) {
        for (const p of peers) this.st.outboxAdd.run(p, id, now);
      }
      return this.st.dropSpooled.run().changes;
    })();
    return { droppedUnacked: n };
  }

  get(id: string): MessageSummary | undefined {
    const row = this.st.getMsg.get(id) as MessageRow | undefined;
    return row ? this.summary(row) : undefined;
  }

  getWithBody(id: string): MessageWithBody | undefined {
    const s = this.get(id);
    if (!s) return undefined;
    const { body } = this.st.getBody.get(id) as { body: Buffer };
    return { ...s, body };
  }

  detail(id: string): MessageDetail | undefined {
    const s = this.get(id);
    if (!s) return undefined;
    const d = this.st.getDetail.get(id) as { client: string | null; origin_incarnation: string };
    return { ...s, client: d.client, originIncarnation: d.origin_incarnation };
  }

  /** Counts and oldest arrival per role and state (for the queue gauges). */
  queueStats(): QueueStat[] {
    return (this.st.stats.all() as Array<{ role: Role; state: MessageState; n: number; oldest: number }>).map((r) => ({
      role: r.role,
      state: r.state,
      count: r.n,
      oldestReceivedAt: r.oldest,
    }));
  }

  /** Bytes on disk: the database file and its write-ahead log. */
  diskBytes(): number {
    let n = 0;
    for (const f of [this.file, `${this.file}-wal`]) {
      try {
        n += statSync(f).size;
      } catch {
        /* no WAL file yet */
      }
    }
    return n;
  }

  list(): MessageSummary[] {
    return (this.st.all.all() as MessageRow[]).map((r) => this.summary(r));
  }

  counts(): { primary: number; shadow: number; outbox: number } {
    const c = { primary: 0, shadow: 0, outbox: 0 };
    for (const r of this.st.counts.all() as Array<{ role: Role; n: number }>) c[r.role] = r.n;
    c.outbox = this.discardsPending();
    return c;
  }

  private summary(r: MessageRow): MessageSummary {
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
        this.st.getRcpts.all(r.id) as Array<{ idx: number; address: string; state: RecipientState; last_error: string | null; reported: number }>
      ).map((x) => ({ idx: x.idx, address: x.address, state: x.state, lastError: x.last_error, reported: x.reported === 1 })),
    };
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Waits for queued writes, then closes the database. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.pending.length) await new Promise<void>((r) => setImmediate(r));
    // a batch SQLite rolled back is re-queued; each round settles at least one write
    while (this.pending.length) this.flush();
    this.closed = true;
    this.db.close();
  }
}
