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
 * - When every recipient of a primary is final (delivered or failed), the message is purged
 *   and a discard for its shadow copy is queued in the outbox in the same transaction.
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
}

const SCHEMA_VERSION = 1;

const MIGRATIONS: Record<number, string> = {
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
}

export class Spool {
  readonly incarnation: string;
  readonly file: string;
  private readonly db: Database.Database;
  private pending: Pending[] = [];
  private scheduled = false;
  private closed = false;
  private readonly st: ReturnType<Spool['prepare']>;

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
    db.pragma('busy_timeout = 5000');
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
      getRcpts: db.prepare(`SELECT idx,address,state,last_error FROM recipients WHERE message_id=? ORDER BY idx`),
      due: db.prepare(
        `SELECT id FROM messages WHERE role='primary' AND state='queued' AND next_attempt_at<=? ORDER BY next_attempt_at LIMIT ?`,
      ),
      nextDue: db.prepare(`SELECT MIN(next_attempt_at) AS t FROM messages WHERE role='primary' AND state='queued'`),
      all: db.prepare(
        `SELECT id,role,state,origin,sender,size,received_at,next_attempt_at,attempts,last_error,shadow_peer FROM messages ORDER BY received_at`,
      ),
      outboxAdd: db.prepare(
        `INSERT INTO outbox(peer,message_id,created_at) VALUES(?,?,?) ON CONFLICT(peer,message_id) DO NOTHING`,
      ),
      outboxList: db.prepare(`SELECT message_id FROM outbox WHERE peer=? ORDER BY created_at LIMIT ?`),
      outboxDel: db.prepare(`DELETE FROM outbox WHERE peer=? AND message_id=?`),
      outboxCount: db.prepare(`SELECT COUNT(*) AS n FROM outbox`),
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
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.scheduled = false;
    const batch = this.pending;
    this.pending = [];
    if (batch.length === 0) return;
    const results: Array<{ ok: true; v: unknown } | { ok: false; e: unknown }> = [];
    try {
      this.db.transaction(() => {
        for (const op of batch) {
          try {
            // a nested transaction is a savepoint: a failing op rolls back alone
            results.push({ ok: true, v: this.db.transaction(op.fn)() });
          } catch (e) {
            results.push({ ok: false, e });
          }
        }
      })();
    } catch (e) {
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

  /** The shadow copy is confirmed (or degraded policy): the message is ours to deliver. */
  markAccepted(id: string, shadowPeer: string | null): Promise<void> {
    return this.write(() => {
      const r = this.st.setState.run('queued', shadowPeer, id);
      if (r.changes !== 1) throw new Error(`markAccepted: no primary message ${id}`);
    });
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

  /** Records per-recipient outcomes of one delivery attempt; purges when all are final. */
  recordAttempt(id: string, outcomes: RecipientOutcome[], nextAttemptAt: number, error: string | null): Promise<AttemptResult> {
    return this.write(() => {
      const msg = this.st.getMsg.get(id) as MessageRow | undefined;
      if (!msg) return { purged: true, pending: 0 };
      for (const o of outcomes) {
        if (o.state !== 'pending') this.st.rcptUpdate.run(o.state, o.error ?? null, id, o.idx);
        else if (o.error) {
          this.st.rcptError.run(o.error, id, o.idx);
        }
      }
      const pending = (this.st.rcptPending.get(id) as { n: number }).n;
      if (pending === 0) {
        this.purgeLocked(msg);
        return { purged: true, pending: 0 };
      }
      this.st.afterAttempt.run(nextAttemptAt, error, id);
      return { purged: false, pending };
    });
  }

  private purgeLocked(msg: MessageRow): void {
    this.st.deleteMsg.run(msg.id);
    if (msg.shadow_peer) this.st.outboxAdd.run(msg.shadow_peer, msg.id, Date.now());
  }

  /** Ids of accepted primaries due for an attempt, oldest first. */
  due(now: number, limit: number): string[] {
    return (this.st.due.all(now, limit) as Array<{ id: string }>).map((r) => r.id);
  }

  /** Earliest next attempt of any queued primary, or null when none is queued. */
  nextDueAt(): number | null {
    return (this.st.nextDue.get() as { t: number | null }).t;
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

  /** The primary `origin` is done with these ids: drop our copies. Returns how many were held. */
  purgeShadows(origin: string, ids: string[]): Promise<number> {
    return this.write(() => {
      let n = 0;
      for (const id of ids) n += this.st.deleteShadow.run(id, origin).changes;
      return n;
    });
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
   * client saw no 250 and will retry). Runs synchronously before anything else uses the spool.
   */
  recover(): { droppedUnacked: number } {
    const n = this.db.transaction(() => this.st.dropSpooled.run().changes)();
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
    c.outbox = (this.st.outboxCount.get() as { n: number }).n;
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
      recipients: (this.st.getRcpts.all(r.id) as Array<{ idx: number; address: string; state: RecipientState; last_error: string | null }>).map(
        (x) => ({ idx: x.idx, address: x.address, state: x.state, lastError: x.last_error }),
      ),
    };
  }

  /** Waits for queued writes, then closes the database. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.pending.length) await new Promise<void>((r) => setImmediate(r));
    this.flush();
    this.closed = true;
    this.db.close();
  }
}
