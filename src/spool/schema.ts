/**
 * The database file: how a connection is opened (pragmas), the versioned schema with its
 * migrations, and the `meta` rows (schema version, incarnation).
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import type { SpoolOptions } from './types.js';

export const SCHEMA_VERSION = 5;

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
  3: `
    -- the queue browser (dashboard): pages in arrival order, whole queue or one state, read
    -- from the index alone (deep pages of a 100,000-message queue skip index entries, not rows);
    -- 'deferred' (queued after a failed attempt) is the queued rows with an error
    CREATE INDEX messages_arrival ON messages (received_at, id);
    CREATE INDEX messages_state_arrival ON messages (role, state, (last_error IS NOT NULL), received_at, id);
    -- top next-hop errors: the pending recipients by reply. Partial, so that no query of the
    -- delivery path (which finds recipients by message id) can be planned onto it
    CREATE INDEX recipients_pending_error ON recipients (last_error) WHERE state = 'pending' AND last_error IS NOT NULL;
  `,
  4: `
    -- bodies in a table of their own: SQLite rewrites a whole record when an UPDATE changes its
    -- size, overflow pages included, so the accepted mark, an attempt or a promotion of a 1 MB
    -- message wrote 1 MB more log (and a checkpoint 1 MB more database) with the body in the row
    CREATE TABLE bodies (
      id TEXT PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
      body BLOB NOT NULL
    );
    INSERT INTO bodies (id, body) SELECT id, body FROM messages;
    ALTER TABLE messages DROP COLUMN body;
  `,
  5: `
    -- large bodies in files of their own next to the database (files.ts): the row names the
    -- file; a body is in bodies or here, never both
    CREATE TABLE body_files (
      id TEXT PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
      name TEXT NOT NULL,
      size INTEGER NOT NULL
    );
    -- a file whose row is gone, until the deletion is durable and the file unlinked
    CREATE TABLE gone_files (name TEXT PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TRIGGER body_file_gone AFTER DELETE ON body_files BEGIN
      INSERT OR IGNORE INTO gone_files (name, size) VALUES (old.name, old.size);
    END;
  `,
};

/** Opens (creating if needed) `<dataDir>/spool.db` with the pragmas our durability promise needs. */
export function openDatabase(dataDir: string, opts: SpoolOptions): { db: Database.Database; file: string } {
  const file = path.join(dataDir, 'spool.db');
  if (opts.readonly) {
    const db = new Database(file, { readonly: true, fileMustExist: true });
    db.pragma('busy_timeout = 5000');
    pageCache(db);
    return { db, file };
  }
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  // better-sqlite3 builds SQLite with WAL + synchronous=NORMAL by default, which can lose
  // the last commits on power loss; our 250 promises durability.
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  pageCache(db);
  if (opts.externalCheckpoints) {
    // 64 MB of log before this connection checkpoints itself (normally never: checkpointer.ts
    // keeps it short), and the log file cut back to that size when it restarts
    db.pragma('wal_autocheckpoint = 16384');
    db.pragma('journal_size_limit = 67108864');
  }
  busyTimeout(db, opts.busyTimeoutMs);
  return { db, file };
}

/**
 * Every spool connection's page cache: 2 MB (better-sqlite3 builds SQLite with 16 MB). The
 * pages read again are the tables' and indexes' b-tree pages, a few hundred; a body's overflow
 * pages are written once and read at most once, yet they filled the writer's and the reader's
 * caches: up to 32 MB per node holding pages nobody reads again (README "Performance", memory).
 * The checkpointer copies log frames without its cache; it gets the same bound all the same.
 */
export function pageCache(db: Database.Database): void {
  db.pragma('cache_size = -2048');
}

/** How long a statement waits for a lock another connection holds. */
export function busyTimeout(db: Database.Database, ms: number): void {
  db.pragma(`busy_timeout = ${Math.max(0, Math.floor(ms))}`);
}

/**
 * Brings the schema to this build's version (a read-only connection only checks it) and
 * returns the spool's incarnation, made on its first open.
 */
export function openSchema(db: Database.Database, file: string, readonly: boolean): string {
  if (readonly) {
    const v = Number(meta(db, 'schema_version') ?? 0);
    if (v !== SCHEMA_VERSION) throw new Error(`spool ${file} has schema version ${v}, this build reads ${SCHEMA_VERSION}`);
  } else {
    migrate(db, file);
  }
  return meta(db, 'incarnation') ?? initIncarnation(db);
}

function migrate(db: Database.Database, file: string): void {
  const hasMeta = db.prepare(`SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'`).get();
  let version = hasMeta ? Number(meta(db, 'schema_version') ?? 0) : 0;
  if (version > SCHEMA_VERSION) {
    throw new Error(`spool ${file} has schema version ${version}, newer than this build (${SCHEMA_VERSION})`);
  }
  while (version < SCHEMA_VERSION) {
    const next = version + 1;
    db.transaction(() => {
      db.exec(MIGRATIONS[next]!);
      db.prepare(`INSERT INTO meta(key,value) VALUES('schema_version',?) ON CONFLICT(key) DO UPDATE SET value=excluded.value`).run(
        String(next),
      );
    })();
    version = next;
  }
}

function meta(db: Database.Database, key: string): string | undefined {
  const row = db.prepare(`SELECT value FROM meta WHERE key=?`).get(key) as { value: string } | undefined;
  return row?.value;
}

function initIncarnation(db: Database.Database): string {
  const id = randomUUID();
  db.prepare(`INSERT INTO meta(key,value) VALUES('incarnation',?)`).run(id);
  return id;
}

/** Pages a new message must leave free under the cap (bookkeeping and purges need some). */
function reservePages(maxPages: number): number {
  return Math.max(32, Math.floor(maxPages * 0.05));
}

/**
 * Page caps for `maxSizeBytes` (0 = none): the hard cap, which a writable connection applies
 * at once, and the tighter one a new message must fit under.
 */
export function sizeCaps(db: Database.Database, opts: SpoolOptions): { maxPages: number; insertPages: number; pageSize: number } {
  const pageSize = Number(db.pragma('page_size', { simple: true }));
  const maxPages = opts.maxSizeBytes ? Math.max(1, Math.floor(opts.maxSizeBytes / pageSize)) : 0;
  const insertPages = maxPages ? Math.max(1, maxPages - reservePages(maxPages)) : 0;
  if (maxPages && !opts.readonly) db.pragma(`max_page_count = ${maxPages}`);
  return { maxPages, insertPages, pageSize };
}
