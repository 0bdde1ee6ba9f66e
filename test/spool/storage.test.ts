/**
 * Issue 3 — storage failures with real SQLite (no mocks): a full spool (SQLite's page limit),
 * a spool locked by another connection (SQLITE_BUSY), shadow copies past their maximum age,
 * and the spool's own guarantees (group commit after a rollback, start-up recovery, migration).
 */
import { describe, it, expect, afterEach } from 'vitest';
import path from 'node:path';
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import { Spool, MIGRATIONS } from '../../src/spool/index.js';
import { GroupCommit } from '../../src/spool/commit.js';
import { FILE_MIN_BYTES } from '../../src/spool/files.js';
import { deepMerge } from '../../tools/pair.js';
import { startPair, send, queueIdOf, waitFor, waitForMetric, tmpDir, type Pair } from '../helpers/index.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const FAST = { delivery: { retry: { initialMs: 200, maxMs: 1000, maxAgeMs: 432000000 } }, shadow: { heartbeatMs: 300 } };

async function pairWith(o: Record<string, unknown>, nodes: Record<string, Record<string, unknown>>, opts = {}): Promise<Pair> {
  const pair = await startPair(deepMerge(FAST, o), nodes, opts);
  cleanups.push(() => pair.stop());
  return pair;
}

/** 2 MB of recipient rows: fills a 1 MB spool in SQLite itself (a body that large would be a file) */
const fillingRecipients = () => Array.from({ length: 2048 }, (_, i) => `${'r'.repeat(1000)}${i}@x.test`);

const subjects = (p: Pair) => p.sink.messages.map((m) => /Subject: ([^\r\n]*)/.exec(m.raw.toString())?.[1]);

describe('storage errors', () => {
  it('spool full (spool.maxSizeBytes, SQLite page limit) → 452 4.3.1; what was accepted is delivered; accepted again once delivery freed space', async () => {
    const pair = await pairWith({}, { 'relay-a': { spool: { maxSizeBytes: 1048576 } } }, { sinkDown: true });
    const port = pair.a.addresses.smtp.port;
    const big = (n: number) => `Subject: big${n}\r\n\r\n${('x'.repeat(998) + '\r\n').repeat(100)}`; // ~100 KB
    const accepted: string[] = [];
    let full: { code: number; response: string } | undefined;
    for (let n = 1; n <= 20 && !full; n++) {
      const r = await send(port, { raw: big(n) });
      if (r.code === 250) accepted.push(`big${n}`);
      else full = r;
    }
    expect(full, 'the cap is reached within 20 messages').toBeDefined();
    expect(full!.response).toBe('452 4.3.1 Insufficient system storage');
    expect(accepted.length).toBeGreaterThanOrEqual(3);
    const failure = pair.logs['relay-a']!.find((l) => l.msg === 'spool write failed');
    expect(String(failure?.err)).toMatch(/database or disk is full/);
    // the daemon is up and its accepted mail is intact: it all goes out once the next hop is back
    await pair.openSink();
    await waitFor(() => accepted.every((s) => subjects(pair).includes(s)), 30000, 'accepted mail delivered');
    await waitFor(() => pair.a.spool.counts().primary === 0, 20000, 'A purged');
    // delivery freed the pages: the spool accepts again
    const again = await send(port, { raw: big(99) });
    expect(again.code).toBe(250);
    await waitFor(() => subjects(pair).includes('big99'), 20000, 'delivered after recovery');
    expect(subjects(pair).length).toBe(new Set(subjects(pair)).size); // nothing twice
  });

  it('spool locked by another connection (SQLITE_BUSY) → 452 4.3.1; a delivery outcome is kept and recorded once the lock is gone; nothing twice', async () => {
    const pair = await pairWith({}, { 'relay-a': { spool: { busyTimeoutMs: 200 } } });
    const port = pair.a.addresses.smtp.port;
    // the next hop holds its answer to m1 until the lock below is in place
    let release!: () => void;
    pair.sink.replyAfter = new Promise((r) => (release = r));
    cleanups.push(() => release());
    const m1 = queueIdOf((await send(port, { raw: 'Subject: m1\r\n\r\nx\r\n' })).response);
    await waitForMetric(pair.a, 'shadowrelay_delivery_attempts_total', (n) => n >= 1, 20000, 'm1 being delivered');
    // delivery starts before the accepted mark is written (it rides a later transaction);
    // the outcome's write, the one this test holds back, comes after the mark
    await waitFor(() => pair.a.spool.get(m1)?.state === 'queued', 20000, 'm1 marked accepted');
    const locker = new Database(path.join(pair.a.config.node.dataDir, 'spool.db'));
    cleanups.push(() => {
      if (locker.inTransaction) locker.exec('ROLLBACK');
      locker.close();
    });
    locker.exec('BEGIN EXCLUSIVE');
    const refused = await send(port, { raw: 'Subject: m2\r\n\r\nx\r\n' });
    expect(refused.response).toBe('452 4.3.1 Insufficient system storage');
    // the next hop takes m1, but A cannot write the outcome: it must keep it, not send again
    release();
    pair.sink.replyAfter = null;
    await waitForMetric(pair.a, 'shadowrelay_delivery_record_retries_total', (n) => n >= 2, 30000, 'outcome write retried');
    expect(pair.a.spool.get(m1)?.state).toBe('queued'); // not recorded yet
    expect(subjects(pair)).toEqual(['m1']);
    locker.exec('COMMIT');
    await waitFor(() => pair.a.spool.counts().primary === 0, 30000, 'outcome recorded, m1 purged');
    expect((await send(port, { raw: 'Subject: m3\r\n\r\nx\r\n' })).code).toBe(250);
    await waitFor(() => subjects(pair).includes('m3'), 20000, 'm3 delivered');
    await waitFor(() => pair.b.spool.counts().shadow === 0, 20000, 'B discarded both');
    expect(subjects(pair)).toEqual(['m1', 'm3']);
  });

  it('shadow copies older than maxShadowAgeMs are dropped with a warning; the primary still delivers', async () => {
    const pair = await pairWith({}, { 'relay-b': { shadow: { maxShadowAgeMs: 1500, reconcileIntervalMs: 300 } } }, { sinkDown: true });
    expect(pair.logs['relay-b']!.some((l) => /maxShadowAgeMs is shorter than delivery.retry.maxAgeMs/.test(String(l.msg)))).toBe(true);
    const r = await send(pair.a.addresses.smtp.port, { raw: 'Subject: aged\r\n\r\nx\r\n' });
    const id = queueIdOf(r.response);
    await waitFor(() => pair.b.spool.get(id) !== undefined, 10000, 'copy on B');
    await waitFor(
      () => pair.logs['relay-b']!.some((l) => l.msg === 'shadow expired: dropped a copy older than maxShadowAgeMs' && l.id === id && l.level === 40),
      20000,
      'expiry warning',
    );
    expect(pair.b.spool.get(id)).toBeUndefined();
    expect(pair.a.spool.get(id)?.state).toBe('queued');
    await pair.openSink();
    await waitFor(() => pair.a.spool.counts().primary === 0 && pair.a.spool.counts().outbox === 0, 20000, 'delivered and discard confirmed');
    expect(subjects(pair)).toEqual(['aged']);
    expect((await pair.b.metrics.snapshot()).value('shadowrelay_shadows_dropped_total', { reason: 'expired' })).toBe(1);
  });
});

describe('spool (real SQLite)', () => {
  const msg = (id: string, size = 10) => ({ id, sender: 's@x.test', recipients: ['r@x.test'], body: Buffer.alloc(size, 120), receivedAt: Date.now() });

  it('a write that hits SQLITE_FULL fails alone: the other writes of its group commit run again and succeed', async () => {
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    const spool = Spool.open(dir, { node: 'n', busyTimeoutMs: 1000, maxSizeBytes: 1048576 });
    cleanups.push(() => spool.close());
    // one event-loop turn: one group commit; SQLite rolls the whole transaction back on FULL
    const r = await Promise.allSettled([
      spool.spoolPrimary(msg('AAAAAAAA01')),
      spool.spoolPrimary({ ...msg('AAAAAAAA02'), recipients: fillingRecipients() }),
      spool.spoolPrimary(msg('AAAAAAAA03')),
    ]);
    expect(r.map((x) => x.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(String((r[1] as PromiseRejectedResult).reason)).toMatch(/database or disk is full/);
    expect(spool.list().map((m) => m.id)).toEqual(['AAAAAAAA01', 'AAAAAAAA03']);
  });

  it('start-up recovery keeps messages left without their accepted mark; settleInDoubt queues, drops or queues-and-owes by the peers\' answer', async () => {
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    let spool = Spool.open(dir, { node: 'n', busyTimeoutMs: 1000 });
    for (const id of ['BBBBBBBB01', 'BBBBBBBB02', 'BBBBBBBB03', 'BBBBBBBB04']) await spool.spoolPrimary(msg(id));
    await spool.markAccepted('BBBBBBBB04', 'peer-x');
    await spool.close();
    spool = Spool.open(dir, { node: 'n', busyTimeoutMs: 1000 });
    cleanups.push(() => spool.close());
    expect(spool.recover()).toEqual({ inDoubt: 3 });
    expect(spool.inDoubt().sort()).toEqual(['BBBBBBBB01', 'BBBBBBBB02', 'BBBBBBBB03']);
    const r = await spool.settleInDoubt(
      [
        { id: 'BBBBBBBB01', outcome: { held: 'peer-x' } },
        { id: 'BBBBBBBB02', outcome: 'absent' },
        { id: 'BBBBBBBB03', outcome: 'unanswered' },
        // no longer in doubt: left alone
        { id: 'BBBBBBBB04', outcome: 'absent' },
      ],
      ['peer-x', 'peer-y'],
    );
    expect(r).toEqual({ queued: ['BBBBBBBB01', 'BBBBBBBB03'], dropped: ['BBBBBBBB02'] });
    expect(spool.list().map((m) => [m.id, m.state, m.shadowPeer])).toEqual([
      ['BBBBBBBB01', 'queued', 'peer-x'],
      ['BBBBBBBB03', 'queued', null],
      ['BBBBBBBB04', 'queued', 'peer-x'],
    ]);
    // an unanswered copy may be on a peer: each is owed a discard so none promotes it
    expect(spool.owedDiscards('peer-x', 10)).toEqual(['BBBBBBBB03']);
    expect(spool.owedDiscards('peer-y', 10)).toEqual(['BBBBBBBB03']);
  });

  it('bookkeeping writes ride in the next reply-path transaction: one commit (one fsync) for a spool write and the marks before it', async () => {
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    const db = new Database(path.join(dir, 'g.db'));
    db.pragma('journal_mode = WAL');
    db.exec('CREATE TABLE t (x INTEGER)');
    const g = new GroupCommit(db, 200);
    cleanups.push(() => g.close());
    const ins = (x: number) => () => db.prepare('INSERT INTO t VALUES (?)').run(x);
    const lazy = g.write(ins(1), true);
    await new Promise((r) => setTimeout(r, 50));
    expect(g.commits, 'a lazy write alone waits for company').toBe(0);
    await Promise.all([lazy, g.write(ins(2))]);
    expect(g.commits).toBe(1);
    expect(db.prepare('SELECT x FROM t ORDER BY rowid').all()).toEqual([{ x: 1 }, { x: 2 }]);
    // alone, it commits after its delay
    const t0 = Date.now();
    await g.write(ins(3), true);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(150);
    expect(g.commits).toBe(2);
  });

  it('migrates a version-1 spool to the current version, keeping its messages, their bodies and its incarnation', async () => {
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    const db = new Database(path.join(dir, 'spool.db'));
    db.exec(MIGRATIONS[1]!);
    db.prepare(`INSERT INTO meta VALUES ('schema_version','1'), ('incarnation','inc-1')`).run();
    db.prepare(
      `INSERT INTO messages(id,role,state,origin,origin_incarnation,sender,size,received_at,next_attempt_at,body)
       VALUES ('CCCCCCCC01','primary','queued','n','inc-1','s@x.test',1,0,0,x'78')`,
    ).run();
    db.prepare(`INSERT INTO recipients(message_id,idx,address,state) VALUES ('CCCCCCCC01',0,'r@x.test','failed')`).run();
    db.close();
    const spool = Spool.open(dir, { node: 'n', busyTimeoutMs: 1000 });
    cleanups.push(() => spool.close());
    expect(spool.incarnation).toBe('inc-1');
    const m = spool.get('CCCCCCCC01')!;
    expect(m.recipients).toEqual([{ idx: 0, address: 'r@x.test', state: 'failed', lastError: null, reported: false }]);
    expect(spool.getWithBody('CCCCCCCC01')!.body.toString()).toBe('x');
    const ro = Spool.open(dir, { node: 'n', readonly: true });
    expect(ro.list()).toHaveLength(1);
    await ro.close();
  });

  it('a change to a message row (accepted mark, failed attempt) does not rewrite its body; purging the message deletes the body', async () => {
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    const spool = Spool.open(dir, { node: 'n', busyTimeoutMs: 1000 });
    cleanups.push(() => spool.close());
    const file = path.join(dir, 'spool.db');
    const side = new Database(file);
    cleanups.push(() => void side.close());
    // in the database (a body from FILE_MIN_BYTES on is a file: below)
    const body = Buffer.alloc(FILE_MIN_BYTES - 1, 120);
    await spool.spoolPrimary({ id: 'EEEEEEEE01', sender: 's@x.test', recipients: ['r@x.test'], body, receivedAt: Date.now(), client: '127.0.0.1' });
    // the log emptied, so what follows is all the next changes wrote
    side.pragma('wal_checkpoint(TRUNCATE)');
    await spool.markAccepted('EEEEEEEE01', 'relay-b'); // 'spooled' -> 'queued', a peer named: the row changes size
    await spool.recordAttempt('EEEEEEEE01', [], Date.now() + 600_000, '451 4.4.1 a long error text that makes the row grow');
    const walBytes = statSync(`${file}-wal`).size;
    // a few pages (row, indexes); the body in the row would be 256 KB more each time
    expect(walBytes).toBeLessThan(64 * 1024);
    expect(spool.getWithBody('EEEEEEEE01')!.body.equals(body)).toBe(true);
    const done = await spool.recordAttempt('EEEEEEEE01', [{ idx: 0, state: 'delivered' }], Date.now(), null);
    expect(done.purged).toBe(true);
    expect(side.prepare('SELECT COUNT(*) AS n FROM bodies').get()).toEqual({ n: 0 });
  });
});

describe('large bodies in files (spool/files.ts)', () => {
  const big = (id: string, size = FILE_MIN_BYTES) => ({
    id,
    sender: 's@x.test',
    recipients: ['r@x.test'],
    body: Buffer.alloc(size, id.charCodeAt(id.length - 1)),
    receivedAt: Date.now(),
  });
  const files = (dir: string) => readdirSync(path.join(dir, 'bodies')).sort();
  const open = (dir: string, o: { maxSizeBytes?: number } = {}) => {
    const spool = Spool.open(dir, { node: 'n', busyTimeoutMs: 1000, ...o });
    cleanups.push(() => spool.close());
    return spool;
  };
  const side = (dir: string) => {
    const db = new Database(path.join(dir, 'spool.db'));
    cleanups.push(() => void db.close());
    return db;
  };
  const n = (db: Database.Database, sql: string) => (db.prepare(sql).get() as { n: number }).n;

  it('a body from FILE_MIN_BYTES on is a file of its own, read back whole; a smaller one stays in the database', async () => {
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    const spool = open(dir);
    await spool.spoolPrimary(big('FFFFFFFF01'));
    await spool.spoolPrimary(big('FFFFFFFF02', FILE_MIN_BYTES - 1));
    expect(files(dir)).toHaveLength(1);
    expect(files(dir)[0]).toMatch(/^FFFFFFFF01\.[0-9a-f]{12}\.body$/);
    expect(statSync(path.join(dir, 'bodies', files(dir)[0]!)).size).toBe(FILE_MIN_BYTES);
    const db = side(dir);
    expect(db.prepare(`SELECT id, size FROM body_files`).all()).toEqual([{ id: 'FFFFFFFF01', size: FILE_MIN_BYTES }]);
    expect(db.prepare(`SELECT id FROM bodies`).all()).toEqual([{ id: 'FFFFFFFF02' }]);
    expect(spool.getWithBody('FFFFFFFF01')!.body.equals(big('FFFFFFFF01').body)).toBe(true);
    expect(spool.getWithBody('FFFFFFFF02')!.body.equals(big('FFFFFFFF02', FILE_MIN_BYTES - 1).body)).toBe(true);
    // the reader connection (the daemon's main thread, the queue tools) reads the file too
    const ro = Spool.open(dir, { node: 'n', readonly: true });
    cleanups.push(() => ro.close());
    expect(ro.getWithBody('FFFFFFFF01')!.body.equals(big('FFFFFFFF01').body)).toBe(true);
    // the spool's size on disk counts it (the gauge and the dashboard)
    expect(ro.diskBytes()).toBeGreaterThanOrEqual(FILE_MIN_BYTES + statSync(path.join(dir, 'spool.db')).size);
  });

  it('a purged body’s file is unlinked once the purge is durable: at the next synced commit, or by a synced write of its own a second later', async () => {
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    const spool = open(dir);
    for (const id of ['FFFFFFFF11', 'FFFFFFFF12']) {
      await spool.spoolPrimary(big(id));
      await spool.markAccepted(id, null);
    }
    expect(files(dir)).toHaveLength(2);
    const [f11, f12] = files(dir);
    // delivered: the purge is bookkeeping, committed without an fsync, so the file stays
    expect((await spool.recordAttempt('FFFFFFFF11', [{ idx: 0, state: 'delivered' }], Date.now(), null)).purged).toBe(true);
    expect(files(dir)).toEqual([f11, f12]);
    // the next reply-path write syncs the log: the purge is durable, the file goes
    await spool.spoolPrimary(big('FFFFFFFF13', 10));
    expect(files(dir)).toEqual([f12]);
    // a purge with nothing after it: a synced write of its own unlinks the file
    await spool.recordAttempt('FFFFFFFF12', [{ idx: 0, state: 'delivered' }], Date.now(), null);
    expect(files(dir)).toEqual([f12]);
    await waitFor(() => files(dir).length === 0, 10000, 'the second file unlinked');
    const db = side(dir);
    await waitFor(() => n(db, `SELECT COUNT(*) AS n FROM gone_files`) === 0, 10000, 'gone_files emptied');
    expect(n(db, `SELECT COUNT(*) AS n FROM body_files`)).toBe(0);
  });

  it('files without a row are removed when the writer opens the spool (a crash between a file and its commit, or a purge and its unlink)', async () => {
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    let spool = Spool.open(dir, { node: 'n', busyTimeoutMs: 1000 });
    await spool.spoolPrimary(big('FFFFFFFF21'));
    await spool.spoolPrimary(big('FFFFFFFF22'));
    await spool.close();
    const [kept, purged] = files(dir);
    // a purge that committed before its file was unlinked (kill -9 then): the trigger's entry
    const db = new Database(path.join(dir, 'spool.db'));
    db.pragma('foreign_keys = ON');
    db.prepare(`DELETE FROM messages WHERE id='FFFFFFFF22'`).run();
    expect(db.prepare(`SELECT name FROM gone_files`).all()).toEqual([{ name: purged }]);
    db.close();
    // a file written for a transaction that never committed; and a file that is not ours
    writeFileSync(path.join(dir, 'bodies', 'FFFFFFFF23.0123456789ab.body'), 'x');
    writeFileSync(path.join(dir, 'bodies', 'notes.txt'), 'x');
    spool = open(dir);
    expect(files(dir)).toEqual([kept, 'notes.txt']);
    expect(n(side(dir), `SELECT COUNT(*) AS n FROM gone_files`)).toBe(0);
    expect(spool.getWithBody('FFFFFFFF21')!.body.equals(big('FFFFFFFF21').body)).toBe(true);
  });

  it('a body that does not fit under spool.maxSizeBytes is refused as a full spool; a rolled-back write leaves no file', async () => {
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    const spool = open(dir, { maxSizeBytes: 1048576 });
    // a write whose savepoint rolls back after its file was written (a recipient SQLite refuses)
    await expect(spool.spoolPrimary({ ...big('FFFFFFFF33', 300 * 1024), recipients: [null as unknown as string] })).rejects.toThrow(/NOT NULL/);
    expect(files(dir)).toHaveLength(0);
    await spool.spoolPrimary(big('FFFFFFFF31', 600 * 1024));
    // the files count against the cap: this one would pass it
    const full = await spool.spoolPrimary(big('FFFFFFFF32', 600 * 1024)).catch((e: unknown) => e as Error & { code?: string });
    expect(full).toBeInstanceOf(Error);
    expect((full as Error & { code?: string }).code).toBe('SQLITE_FULL');
    expect(String(full)).toMatch(/database or disk is full/);
    expect(files(dir)).toHaveLength(1);
    // SQLite rolls a whole group commit back (SQLITE_FULL on rows): the body written in it goes;
    // its write runs again in the next one and writes its file anew
    // (a dropped copy's deletion commits with an fsync: its file goes at once)
    await spool.dropUnacked('FFFFFFFF31', []);
    expect(files(dir)).toHaveLength(0);
    const r = await Promise.allSettled([
      spool.spoolPrimary(big('FFFFFFFF35', 300 * 1024)),
      spool.spoolPrimary({ ...big('FFFFFFFF36', 10), recipients: fillingRecipients() }),
    ]);
    expect(r.map((x) => x.status)).toEqual(['fulfilled', 'rejected']);
    expect(files(dir)).toHaveLength(1);
    expect(side(dir).prepare(`SELECT name FROM body_files`).all()).toEqual([{ name: files(dir)[0] }]);
  });

  it('a backup is one file: the bodies kept in files are in its bodies table, and a spool restored from it reads them', async () => {
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    const spool = open(dir);
    await spool.spoolPrimary(big('FFFFFFFF41'));
    await spool.spoolPrimary(big('FFFFFFFF42', 10));
    const { dir: restored, cleanup: c2 } = tmpDir();
    cleanups.push(c2);
    const ro = Spool.open(dir, { node: 'n', readonly: true });
    await ro.backup(path.join(restored, 'spool.db'));
    await ro.close();
    const db = new Database(path.join(restored, 'spool.db'));
    expect(n(db, `SELECT COUNT(*) AS n FROM body_files`)).toBe(0);
    expect(n(db, `SELECT COUNT(*) AS n FROM bodies`)).toBe(2);
    db.close();
    const back = open(restored);
    expect(back.getWithBody('FFFFFFFF41')!.body.equals(big('FFFFFFFF41').body)).toBe(true);
    expect(back.list().map((m) => m.id)).toEqual(['FFFFFFFF41', 'FFFFFFFF42']);
    expect(existsSync(path.join(restored, 'bodies'))).toBe(true);
  });
});
