/**
 * The group-commit engine: the writes issued in one event-loop turn run in one transaction
 * (one fsync), each in a savepoint of its own; a write resolves only once it is durable.
 *
 * Bookkeeping writes (`lazy`: an accepted mark, a delivery outcome, a confirmed discard —
 * nobody waits on them for a reply) do not start a transaction of their own: they ride in
 * the next one a reply-path write starts, or, when none comes, in one of their own after
 * `lazyDelayMs`. Under load that takes them off the fsync count entirely; serially it makes
 * the message's own spool write the only fsync on its reply path. Order is kept: a batch
 * runs its writes in the order they were issued, lazy or not.
 *
 * A batch of bookkeeping writes alone commits without an fsync (`synchronous=NORMAL` for that
 * transaction): it is in the log at once — every connection reads it, a killed process loses
 * none of it — and durable with the next reply-path commit's fsync or the next checkpoint
 * (wal-index.ts: within a second or so of the log going quiet). The log is replayed in order,
 * so a power loss drops at most a tail of bookkeeping written after the last sync: a message
 * delivered again, a discard sent again, an accepted mark resolved with the peer at start-up
 * (all windows the protocol already has); never a message that was answered 250, whose own
 * write always waits for its fsync. Postfix does the same with its queue files: the removal
 * after delivery is never synced.
 */
import type Database from 'better-sqlite3';

/** How long a bookkeeping write waits for a transaction to join before it starts its own. */
// longer than the gap between two messages of one serial sender (so a message's mark and
// outcome ride in the next message's write), short enough that a kill -9 of an idle node
// re-sends few delivered messages whose outcome had not committed yet (under load they
// commit within one fsync anyway)
export const LAZY_DELAY_MS = 50;

/** What a part keeping state outside SQLite (files.ts) must hear of a transaction. */
export interface CommitHooks {
  /** inside the transaction, after its writes, before COMMIT (an exception rolls it back) */
  beforeCommit(): void;
  /** `synced`: the commit had its fsync (everything committed before it is durable too) */
  committed(synced: boolean): void;
  rolledBack(): void;
  /** where a write's savepoint starts, and that savepoint rolled back */
  mark(): number;
  rollBackTo(mark: number): void;
}

interface Pending {
  fn: () => unknown;
  lazy: boolean;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

export class GroupCommit {
  private pending: Pending[] = [];
  private scheduled = false;
  private lazyTimer: NodeJS.Timeout | undefined;
  private closed = false;
  /** transactions committed so far (tests and the fsync accounting read it) */
  commits = 0;
  /** of them, bookkeeping alone (committed without an fsync) */
  unsynced = 0;

  /** the connection's own level (FULL in the spool), and the two switches around a bookkeeping batch */
  private readonly level: number;
  private readonly toNormal: Database.Statement;
  private readonly toOwn: Database.Statement;

  constructor(
    private readonly db: Database.Database,
    private readonly lazyDelayMs = LAZY_DELAY_MS,
    private readonly hooks?: CommitHooks,
  ) {
    this.level = Number(db.pragma('synchronous', { simple: true }));
    // a batch's pages stay in memory until its commit: with the 2 MB page cache (schema.ts) a
    // batch of large bodies spilled pages to the log before its commit (1 MB at C=20: -7 %;
    // without spilling +10 %, paired runs). A batch is bounded by the writes in flight (the
    // body budget); set after the migrations, whose one transaction may copy every body.
    db.pragma('cache_spill = false');
    this.toNormal = db.prepare('PRAGMA synchronous = NORMAL');
    this.toOwn = db.prepare(`PRAGMA synchronous = ${this.level}`);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Runs `fn` in the next group commit; resolves once it is durable. `lazy`: the write may
   * wait up to lazyDelayMs for a transaction that another write starts, and resolves once it
   * is committed (durable with the next sync: see above).
   */
  write<T>(fn: () => T, lazy = false): Promise<T> {
    if (this.closed) return Promise.reject(new Error('spool is closed'));
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ fn, lazy, resolve: resolve as (v: unknown) => void, reject });
      if (lazy) this.scheduleLazy();
      else this.schedule();
    });
  }

  private schedule(): void {
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  private scheduleLazy(): void {
    if (this.scheduled || this.lazyTimer) return;
    this.lazyTimer = setTimeout(() => {
      this.lazyTimer = undefined;
      this.schedule();
    }, this.lazyDelayMs);
  }

  private flush(): void {
    this.scheduled = false;
    // the lazy writes waiting go into this transaction
    clearTimeout(this.lazyTimer);
    this.lazyTimer = undefined;
    const batch = this.pending;
    this.pending = [];
    if (batch.length === 0) return;
    const results: Array<{ ok: true; v: unknown } | { ok: false; e: unknown }> = [];
    let culprit = -1;
    // NORMAL (1) is a connection setting read at commit: only this transaction skips the fsync
    const synced = this.level <= 1 || batch.some((op) => !op.lazy);
    if (!synced) this.toNormal.run();
    try {
      // IMMEDIATE: take the write lock up front, so a locked database costs one busy wait
      // per batch, not one per write
      this.db
        .transaction(() => {
          for (const [i, op] of batch.entries()) {
            const mark = this.hooks?.mark() ?? 0;
            try {
              // a nested transaction is a savepoint: a failing op rolls back alone ...
              results.push({ ok: true, v: this.db.transaction(op.fn)() });
            } catch (e) {
              results.push({ ok: false, e });
              this.hooks?.rollBackTo(mark);
              // ... except when SQLite rolled the whole transaction back (SQLITE_FULL, IOERR)
              if (!this.db.inTransaction) {
                culprit = i;
                throw e;
              }
            }
          }
          this.hooks?.beforeCommit();
        })
        .immediate();
      this.commits++;
      if (!synced) this.unsynced++;
    } catch (e) {
      this.hooks?.rolledBack();
      if (culprit >= 0) {
        batch[culprit]!.reject(e);
        // the others were rolled back with it and did nothing: run them again
        this.pending = batch.filter((_, i) => i !== culprit).concat(this.pending);
        if (this.pending.length) this.schedule();
        return;
      }
      for (const op of batch) op.reject(e);
      return;
    } finally {
      if (!synced) this.toOwn.run();
    }
    this.hooks?.committed(synced);
    batch.forEach((op, i) => {
      const r = results[i]!;
      if (r.ok) op.resolve(r.v);
      else op.reject(r.e);
    });
  }

  /**
   * Commits what is queued (writes issued in this turn still make it), refuses new writes and
   * closes the connection: the engine is its last user.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    clearTimeout(this.lazyTimer);
    this.lazyTimer = undefined;
    if (this.pending.length) await new Promise<void>((r) => setImmediate(r));
    // a batch SQLite rolled back is re-queued; each round settles at least one write
    while (this.pending.length) this.flush();
    this.closed = true;
    this.db.close();
  }
}
