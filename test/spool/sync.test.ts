/**
 * When the spool syncs (spool/commit.ts, spool/wal-index.ts): a reply-path write waits for
 * its fsync; bookkeeping alone commits without one; checkpoints go by how much log waits and
 * by the log going quiet, read from the real WAL-index of a real database. fsyncs are counted
 * by the benchmark's LD_PRELOAD shim (tools/bench/fsync-shim.c), built with the machine's gcc.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import { FsyncShim } from '../../tools/bench/fsync.js';
import { Registry } from '../../tools/bench/procs.js';
import { WalIndexReader, checkpointDue, CHECKPOINT_FRAMES, CHECKPOINT_IDLE_MS, CHECKPOINT_MAX_AGE_MS } from '../../src/spool/wal-index.js';
import { ThreadedSpool } from '../../src/spool/thread.js';
import { tmpDir, waitFor } from '../helpers/index.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

// runs in a child with the shim preloaded; prints the fsync count after each step
const CHILD = `
import Database from 'better-sqlite3';
import { readFileSync } from 'node:fs';
const { GroupCommit } = await import(process.argv[1]);
const count = () => Number(readFileSync(process.env.SR_FSYNC_COUNT_FILE).readBigInt64LE(0));
const db = new Database(process.argv[2] + '/g.db');
db.pragma('journal_mode = WAL');
db.pragma('synchronous = FULL');
db.exec('CREATE TABLE t (x INTEGER)');
const g = new GroupCommit(db, 5);
const ins = (x) => () => db.prepare('INSERT INTO t VALUES (?)').run(x);
// SQLite syncs the log's header once when bookkeeping is the first to write a (re)started log
await g.write(ins(-1), true);
const out = { start: count() };
for (let i = 0; i < 20; i++) await g.write(ins(i), true);
out.lazyAlone = count();
await g.write(ins(100));
out.replyPath = count();
await Promise.all([g.write(ins(101), true), g.write(ins(102))]);
out.mixed = count();
out.level = db.pragma('synchronous', { simple: true });
out.rows = db.prepare('SELECT count(*) AS n FROM t').get().n;
out.unsynced = g.unsynced;
await g.close();
console.log(JSON.stringify(out));
`;

describe('spool sync points', () => {
  it('bookkeeping alone commits without an fsync; a reply-path write, alone or with bookkeeping, waits for one', async (ctx) => {
    const reg = new Registry();
    cleanups.push(() => reg.closeAll());
    const shim = FsyncShim.build(reg);
    if (typeof shim === 'string') return ctx.skip();
    const { dir, cleanup } = tmpDir('sr-sync-');
    cleanups.push(cleanup);
    const disk = shim.disk('child');
    const commitJs = pathToFileURL(path.join(root, 'dist', 'spool', 'commit.js')).href;
    const stdout = execFileSync(process.execPath, ['--input-type=module', '-e', CHILD, commitJs, dir], {
      cwd: root,
      env: { ...process.env, ...disk.env },
      encoding: 'utf8',
    });
    const r = JSON.parse(stdout.trim().split('\n').pop()!) as Record<string, number>;
    expect(r.rows).toBe(24);
    expect(r.unsynced, 'each lazy write alone was its own transaction').toBe(21);
    expect(r.lazyAlone - r.start, '20 bookkeeping transactions: no fsync').toBe(0);
    expect(r.replyPath - r.lazyAlone, 'a reply-path write syncs (and with it the log before it)').toBeGreaterThanOrEqual(1);
    expect(r.mixed - r.replyPath, 'a batch with one reply-path write in it syncs').toBeGreaterThanOrEqual(1);
    expect(r.level, 'the connection is back at FULL').toBe(2);
  });

  it('reads the frames waiting in a real WAL-index, as SQLite reports them', () => {
    const { dir, cleanup } = tmpDir('sr-walidx-');
    cleanups.push(cleanup);
    const file = path.join(dir, 'w.db');
    const db = new Database(file);
    cleanups.push(() => void db.close());
    db.pragma('journal_mode = WAL');
    db.pragma('wal_autocheckpoint = 0');
    db.exec('CREATE TABLE t (x BLOB)');
    for (let i = 0; i < 50; i++) db.prepare('INSERT INTO t VALUES (?)').run(Buffer.alloc(3000, i));
    const idx = new WalIndexReader(`${file}-shm`);
    cleanups.push(() => idx.close());
    const before = idx.read()!;
    expect(before.mxFrame).toBeGreaterThan(50);
    expect(before.nBackfill).toBe(0);
    const [ck] = db.pragma('wal_checkpoint(PASSIVE)') as Array<{ log: number; checkpointed: number }>;
    expect(idx.read()).toEqual({ mxFrame: ck!.log, nBackfill: ck!.checkpointed });
    expect(ck!.checkpointed).toBe(ck!.log);
    // the next write restarts the log from its first frame
    db.prepare('INSERT INTO t VALUES (?)').run(Buffer.alloc(10));
    expect(idx.read()!.mxFrame).toBeLessThan(ck!.log);
    expect(new WalIndexReader(path.join(dir, 'none-shm')).read()).toBeNull();
  });

  it('checkpoints when enough log waits, when the log went quiet, or at the latest after a while; never for an empty log', () => {
    const s = { lastFrame: -1, changedAt: 0, checkpointAt: 0 };
    expect(checkpointDue(null, s, 0), 'no index to read: as before, every round').toBe(true);
    expect(checkpointDue({ mxFrame: 10, nBackfill: 0 }, s, 100)).toBe(false);
    expect(checkpointDue({ mxFrame: 500, nBackfill: 0 }, s, 200), 'still growing').toBe(false);
    expect(checkpointDue({ mxFrame: 500, nBackfill: 0 }, s, 200 + CHECKPOINT_IDLE_MS - 1)).toBe(false);
    expect(checkpointDue({ mxFrame: 500, nBackfill: 0 }, s, 200 + CHECKPOINT_IDLE_MS), 'quiet for a second').toBe(true);
    expect(checkpointDue({ mxFrame: 500, nBackfill: 500 }, s, 5000), 'all copied').toBe(false);
    const g = { lastFrame: -1, changedAt: 0, checkpointAt: 0 };
    expect(checkpointDue({ mxFrame: CHECKPOINT_FRAMES + 7, nBackfill: 7 }, g, 10), 'a full step of log').toBe(true);
    const slow = { lastFrame: -1, changedAt: 0, checkpointAt: 0 };
    for (let t = 0; t < CHECKPOINT_MAX_AGE_MS; t += 250) expect(checkpointDue({ mxFrame: 1 + t / 250, nBackfill: 0 }, slow, t)).toBe(false);
    expect(checkpointDue({ mxFrame: 100, nBackfill: 0 }, slow, CHECKPOINT_MAX_AGE_MS), 'slow growth: at the latest').toBe(true);
    expect(checkpointDue({ mxFrame: 0, nBackfill: 0 }, { lastFrame: 0, changedAt: 0, checkpointAt: 0 }, 1e9)).toBe(false);
  });

  it("the spool's checkpointer copies in a log that stopped growing (the quiet rule; the age rule at the latest)", async () => {
    const { dir, cleanup } = tmpDir('sr-ckpt-');
    const spool = await ThreadedSpool.openThreaded(dir, { node: 'relay-a', busyTimeoutMs: 1000 });
    cleanups.push(cleanup, () => spool.close());
    const base = { sender: 'a@example.test', recipients: ['b@example.test'], receivedAt: Date.now(), client: '127.0.0.1' };
    await Promise.all(Array.from({ length: 20 }, (_, i) => spool.spoolPrimary({ ...base, id: `DDDDDDDD${String(i).padStart(4, '0')}`, body: Buffer.alloc(20_000, 65) })));
    const idx = new WalIndexReader(path.join(dir, 'spool.db-shm'));
    cleanups.push(() => idx.close());
    const written = idx.read()!;
    // far below a step of log: only the quiet rule copies it in
    expect(written.mxFrame - written.nBackfill).toBeGreaterThan(20);
    expect(written.mxFrame - written.nBackfill).toBeLessThan(CHECKPOINT_FRAMES);
    await waitFor(() => {
      const i = idx.read();
      return i !== null && i.nBackfill === i.mxFrame;
    }, 10_000, 'log checkpointed');
  });
});
