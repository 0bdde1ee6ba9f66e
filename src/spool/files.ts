/**
 * Large bodies in files of their own, in `<dataDir>/bodies/`, one per message; the row in
 * `body_files` names the file (schema 5).
 *
 * Why: SQLite writes a body to its log and again into the database at checkpoint, a 4 KB page
 * at a time (two writes per page in the log), and reads every page back to delete it: ~1,300
 * system calls and ~4.5 ms of CPU for a 1 MB body, against one write, one fdatasync and one
 * unlink (0.8 ms) for a file. Below FILE_MIN_BYTES SQLite is cheaper (a file costs an fsync of
 * its own), so small bodies stay in the `bodies` table.
 *
 * Durability: a file is written and fdatasync'ed in the transaction that inserts its row, the
 * folder is synced once per transaction that made files (before its commit), so a committed
 * row always has its file. A row's deletion (also by ON DELETE CASCADE) enters the name in
 * `gone_files` (a trigger); the file is unlinked only after a commit with an fsync, when the
 * deletion is durable — a power loss must not bring back a row without its file. Files
 * without a row (a crash between the file and its commit, or between a commit and an unlink)
 * are removed when the writer opens the spool.
 */
import { closeSync, fdatasyncSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { Statements } from './statements.js';

/** Bodies of this size and more go to files (paired microbenchmarks: the crossover is ~128-256 KB). */
export const FILE_MIN_BYTES = 256 * 1024;

/** A file name: the message id (ID_RE: letters, digits, '.', '-', '_') and a random tail, so a replaced row's file is never reused. */
const NAME_RE = /^[A-Za-z0-9._-]+\.[0-9a-f]{12}\.body$/;

export class BodyFiles {
  readonly dir: string;
  /** files written in the transaction under way: removed again if it (or their savepoint) rolls back */
  private batch: BodyFile[] = [];
  /** the folder gained entries since it was last synced */
  private dirty = false;
  /** bytes in files on disk (the writer's count: spool.maxSizeBytes covers them) */
  bytes = 0;

  constructor(dataDir: string, writable: boolean) {
    this.dir = path.join(dataDir, 'bodies');
    if (writable) mkdirSync(this.dir, { recursive: true, mode: 0o700 });
  }

  /** Writes `body` to a new file, durably; its name. ENOSPC/EDQUOT read as a full spool. */
  write(id: string, body: Uint8Array): string {
    const name = `${id.replace(/[^A-Za-z0-9._-]/g, '_')}.${randomBytes(6).toString('hex')}.body`;
    const file = path.join(this.dir, name);
    let fd: number | undefined;
    try {
      fd = openSync(file, 'wx', 0o600);
      this.batch.push({ name, size: body.byteLength });
      this.bytes += body.byteLength;
      this.dirty = true;
      for (let off = 0; off < body.byteLength; ) off += writeSync(fd, body, off);
      fdatasyncSync(fd);
    } catch (e) {
      throw asFull(e);
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
    return name;
  }

  /** Where a write's savepoint starts: its files are those written after this mark. */
  mark(): number {
    return this.batch.length;
  }

  /** The savepoint rolled back: the files written since `mark` have no rows. */
  rollBackTo(mark: number): void {
    this.unlink(this.batch.splice(mark));
  }

  /** Before the commit: the new files' folder entries are durable. */
  beforeCommit(): void {
    if (!this.dirty) return;
    const fd = openSync(this.dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    this.dirty = false;
  }

  committed(): void {
    this.batch = [];
  }

  /** The transaction rolled back: its files have no rows. */
  rolledBack(): void {
    this.unlink(this.batch);
    this.batch = [];
  }

  /** The body, or undefined when its file is gone (the message was purged since the row was read). */
  read(name: string): Buffer | undefined {
    try {
      return readFileSync(path.join(this.dir, name));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
  }

  /** Removes files (gone already is fine); an error other than ENOENT leaves the file for the next start's sweep. */
  unlink(files: Iterable<BodyFile>): void {
    for (const f of files) {
      try {
        unlinkSync(path.join(this.dir, f.name));
        this.bytes -= f.size;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') this.bytes -= f.size;
      }
    }
  }

  /** Removes the files no row names (start-up, before any write) and counts the rest; how many it removed. */
  sweep(referenced: Map<string, number>): number {
    let n = 0;
    for (const f of readdirSync(this.dir)) {
      if (referenced.has(f) || !NAME_RE.test(f)) continue;
      try {
        unlinkSync(path.join(this.dir, f));
        n++;
      } catch {
        /* the next start tries again */
      }
    }
    this.bytes = 0;
    for (const size of referenced.values()) this.bytes += size;
    return n;
  }
}

export interface BodyFile {
  name: string;
  size: number;
}

/** Out of room on the disk: the same answer as a full database (452 to a client, 507 to a peer). */
function asFull(e: unknown): unknown {
  const code = (e as NodeJS.ErrnoException).code;
  if (code !== 'ENOSPC' && code !== 'EDQUOT') return e;
  const err = new Error(`database or disk is full (body file: ${code})`) as Error & { code: string };
  err.code = 'SQLITE_FULL';
  return err;
}

/** How long a deleted body's file waits for a synced commit before one is made for it. */
const GONE_SYNC_MS = 1000;

/**
 * After each commit: the files whose rows it deleted (gone_files) are unlinked once a commit
 * with an fsync has made the deletion durable; when only bookkeeping commits follow (no
 * fsync), a synced write of their own comes a second later.
 */
export class GoneFiles {
  /** deleted rows' files waiting for a synced commit */
  private pending: BodyFile[] = [];
  /** names taken from gone_files whose rows are not deleted yet */
  private readonly seen = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly st: Pick<Statements, 'goneFiles' | 'goneFileDel'>,
    private readonly files: BodyFiles,
    private readonly write: (fn: () => void, lazy: boolean) => Promise<void>,
  ) {}

  committed(synced: boolean): void {
    // no body file on disk: no deleted row can name one (a 10 KB load never reads gone_files)
    if (this.files.bytes === 0) return;
    for (const f of this.st.goneFiles.all() as BodyFile[]) {
      if (this.seen.has(f.name)) continue;
      this.seen.add(f.name);
      this.pending.push(f);
    }
    if (this.pending.length === 0) return;
    if (!synced) {
      if (this.closed) return;
      this.timer ??= setTimeout(() => {
        this.timer = undefined;
        const names = this.pending.map((f) => f.name);
        // deleting their gone_files rows is the write: it has log frames, so its commit syncs
        if (names.length && !this.closed) void this.write(() => names.forEach((n) => this.st.goneFileDel.run(n)), false).catch(() => undefined);
      }, GONE_SYNC_MS).unref();
      return;
    }
    clearTimeout(this.timer);
    this.timer = undefined;
    const done = this.pending;
    this.pending = [];
    this.files.unlink(done);
    void this.write(() => done.forEach((f) => this.st.goneFileDel.run(f.name)), true).then(
      () => done.forEach((f) => this.seen.delete(f.name)),
      () => undefined,
    );
  }

  /** What is left is unlinked by the next start's sweep. */
  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
