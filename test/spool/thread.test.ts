/**
 * The spool's writer thread (spool/thread.ts): writes run on the worker and are durable when
 * they resolve, reads on the caller's thread see them, and no write method of Spool can be
 * left running on the read-only connection.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { Spool } from '../../src/spool/index.js';
import { ThreadedSpool, WRITES, READS, Batcher } from '../../src/spool/thread.js';
import { tmpDir } from '../helpers/index.js';
import { Parts } from '../../src/base/buffers.js';
import { openDatabase } from '../../src/spool/schema.js';
import { GroupCommit } from '../../src/spool/commit.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const msg = (id: string, body = 'Subject: t\r\n\r\nhello\r\n') => ({
  id,
  sender: 'a@example.test',
  recipients: ['b@example.test', 'c@example.test'],
  body: Buffer.from(body),
  receivedAt: Date.now(),
  client: '127.0.0.1',
});

async function open(): Promise<{ spool: ThreadedSpool; dir: string; fatal: Error[] }> {
  const { dir, cleanup } = tmpDir('sr-spool-thread-');
  const fatal: Error[] = [];
  const spool = await ThreadedSpool.openThreaded(dir, { node: 'relay-a', busyTimeoutMs: 1000 }, { onFatal: (e) => fatal.push(e) });
  cleanups.push(cleanup, () => spool.close());
  return { spool, dir, fatal };
}

describe('threaded spool', () => {
  it('lists as WRITES exactly the Spool methods that write (the compiler sees only that each member is listed)', () => {
    // a write listed in READS would fail on the read-only connection. Descriptors, not
    // proto[n]: a getter read off the bare prototype has no instance behind it
    const method = (n: string): unknown => Object.getOwnPropertyDescriptor(Spool.prototype, n)?.value;
    const writers = Object.getOwnPropertyNames(Spool.prototype).filter(
      // `later` is write's lazy form, not a method of the spool's contract
      (n) => n !== 'constructor' && n !== 'later' && typeof method(n) === 'function' && /this\.(write|later)\(/.test(String(method(n))),
    );
    expect(writers.length).toBeGreaterThan(0);
    for (const n of writers) expect(WRITES as readonly string[], `Spool.${n} writes: list it in WRITES, not READS`).toContain(n);
    expect([...WRITES].sort()).toEqual(writers.sort());
    for (const n of [...WRITES, ...READS]) expect(typeof method(n), n).toBe('function');
  });

  it('writes resolve once durable and reads on this thread see them; data survives a reopen', async () => {
    const { spool, dir } = await open();
    await spool.spoolPrimary(msg('AAAAAAAA0001', 'x'.repeat(100_000)));
    expect(spool.get('AAAAAAAA0001')?.state).toBe('spooled');
    await spool.markAccepted('AAAAAAAA0001', 'relay-b');
    expect(spool.due(Date.now() + 1000, 10)).toEqual(['AAAAAAAA0001']);
    expect(spool.getWithBody('AAAAAAAA0001')!.body.equals(Buffer.from('x'.repeat(100_000)))).toBe(true);
    expect(await spool.storeShadow({ ...msg('BBBBBBBB0001'), origin: 'relay-b', originIncarnation: 'inc' })).toBe('stored');
    expect(await spool.storeShadow({ ...msg('BBBBBBBB0001'), origin: 'relay-b', originIncarnation: 'inc' })).toBe('exists');
    // many writes at once: each resolves with its own result
    const ids = Array.from({ length: 50 }, (_, i) => `CCCCCCCC${String(i).padStart(4, '0')}`);
    await Promise.all(ids.map((id) => spool.spoolPrimary(msg(id))));
    await Promise.all(ids.map((id) => spool.markAccepted(id, 'relay-b')));
    const r = await spool.recordAttempt(ids[0]!, [{ idx: 0, state: 'delivered' }, { idx: 1, state: 'delivered' }], Date.now(), null);
    expect(r).toMatchObject({ purged: true, pending: 0 });
    expect(spool.owedDiscards('relay-b', 10)).toEqual([ids[0]]);
    expect(spool.counts()).toEqual({ primary: 50, shadow: 1, outbox: 1 });
    await spool.close();
    const again = Spool.open(dir, { node: 'relay-a', busyTimeoutMs: 1000 });
    expect(again.counts()).toEqual({ primary: 50, shadow: 1, outbox: 1 });
    await again.close();
  });

  it("a failing write rejects with the spool's own error; the others in its batch are unaffected", async () => {
    const { spool } = await open();
    const results = await Promise.allSettled([
      spool.spoolPrimary(msg('DDDDDDDD0001')),
      spool.markAccepted('NOSUCHMESSAGE1', null),
      spool.spoolPrimary(msg('DDDDDDDD0002')),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(((results[1] as PromiseRejectedResult).reason as Error).message).toMatch(/markAccepted: no primary message NOSUCHMESSAGE1/);
    expect(spool.counts().primary).toBe(2);
  });

  it('recovery runs in the writer thread on open: primaries left without their mark are kept, in doubt', async () => {
    const { dir, cleanup } = tmpDir('sr-spool-thread-');
    cleanups.push(cleanup);
    const plain = Spool.open(dir, { node: 'relay-a', busyTimeoutMs: 1000 });
    await plain.spoolPrimary(msg('EEEEEEEE0001'));
    await plain.close();
    const spool = await ThreadedSpool.openThreaded(dir, { node: 'relay-a', busyTimeoutMs: 1000 });
    cleanups.push(() => spool.close());
    expect(spool.recover()).toEqual({ inDoubt: 1 });
    expect(spool.inDoubt()).toEqual(['EEEEEEEE0001']);
  });

  it('a writer thread that dies fails every write from then on and is reported', async () => {
    const { spool, fatal } = await open();
    await (spool as unknown as { worker: { terminate(): Promise<number> } }).worker.terminate();
    await expect(spool.spoolPrimary(msg('FFFFFFFF0001'))).rejects.toThrow(/spool writer thread/);
    expect(fatal.length).toBe(1);
  });
});

describe('shared message bodies', () => {
  it('sharedConcat joins parts into memory a worker thread shares instead of copying', async () => {
    const { sharedConcat } = await import('../../src/base/buffers.js');
    const b = sharedConcat([Buffer.from('Received: x\r\n'), Buffer.from('body'), Buffer.from('!')]);
    expect(b.toString()).toBe('Received: x\r\nbody!');
    expect(b.buffer).toBeInstanceOf(SharedArrayBuffer);
    // a declared total shorter than the parts stops there (like Buffer.concat)
    expect(sharedConcat([Buffer.from('abc'), Buffer.from('def')], 4).toString()).toBe('abcd');
    // the spool thread stores a shared body like any other
    const { spool } = await open();
    await spool.spoolPrimary({ ...msg('GGGGGGGG0001'), body: b });
    expect(spool.getWithBody('GGGGGGGG0001')!.body.toString()).toBe('Received: x\r\nbody!');
  });
});

describe('calls and results between the threads', () => {
  it('go in one message per task: what one task pushes is sent together, after its synchronous work', async () => {
    const sent: number[][] = [];
    const b = new Batcher<number>((items) => sent.push(items));
    b.push(1);
    b.push(2);
    b.push(3);
    expect(sent).toEqual([]); // not before the task's own work is done
    await Promise.resolve();
    expect(sent).toEqual([[1, 2, 3]]);
    await new Promise<void>((r) => setImmediate(() => (b.push(4), r())));
    await new Promise<void>((r) => setImmediate(() => (b.push(5), r())));
    await Promise.resolve();
    expect(sent).toEqual([[1, 2, 3], [4], [5]]);
    b.push(6);
    b.flush(); // at once (before a close)
    expect(sent.at(-1)).toEqual([6]);
    await Promise.resolve();
    expect(sent).toHaveLength(4); // the scheduled flush finds nothing left
  });
});

describe('staging area for large bodies', () => {
  it('takes slots in a ring, frees them in any order, says no when full; the caller then posts the body itself', async () => {
    const { Staging, stageArgs, STAGE_MIN_BYTES } = await import('../../src/spool/staging.js');
    const s = new Staging(100);
    const b = (n: number, c: number) => Buffer.alloc(n, c);
    const a0 = s.put(b(30, 1));
    const a1 = s.put(b(30, 2));
    expect([a0, a1]).toEqual([0, 30]);
    expect(s.put(b(51, 3))).toBeNull(); // more than half the area
    const a2 = s.put(b(30, 3));
    expect(a2).toBe(60);
    expect(s.put(b(20, 4))).toBeNull(); // 10 left at the end, nothing free at the start
    s.free(a1!); // out of order: the oldest still holds the start
    expect(s.put(b(20, 4))).toBeNull();
    s.free(a0!); // now [0, 60) is free: wrap to the start
    const a3 = s.put(b(20, 4));
    expect(a3).toBe(0);
    expect(Buffer.from(s.area, a3!, 20).equals(b(20, 4))).toBe(true);
    expect(Buffer.from(s.area, a2!, 30).equals(b(30, 3))).toBe(true);
    // only large bodies are staged, inside new argument objects
    const big = new Staging(4 * STAGE_MIN_BYTES);
    const env = { id: 'x', body: Buffer.alloc(STAGE_MIN_BYTES, 7) };
    const taken: number[] = [];
    const wire = stageArgs([env, Buffer.from('small')], big, taken) as [{ body: unknown }, Buffer];
    expect(wire[0].body).toEqual({ $staged: [0, STAGE_MIN_BYTES] });
    expect(env.body).toBeInstanceOf(Buffer);
    expect(wire[1].toString()).toBe('small');
    expect(taken).toEqual([0]);
  });

  it('large bodies reach the writer intact through the staging area, and past it when it is full', async () => {
    const { spool } = await open();
    // 40 x 1 MB at once: more than the 32 MB area holds, so some are posted as they are
    const ids = Array.from({ length: 40 }, (_, i) => `SSSSSSSS${String(i).padStart(4, '0')}`);
    const bodyOf = (i: number) => Buffer.alloc(1_000_000, 65 + (i % 26));
    await Promise.all(ids.map((id, i) => spool.spoolPrimary({ ...msg(id), body: bodyOf(i) })));
    for (const [i, id] of ids.entries()) expect(spool.getWithBody(id)!.body.equals(bodyOf(i)), id).toBe(true);
    // bodies in pieces (as the listener and the link hand them over): staged, posted whole without room, or small
    const pieces = (b: Buffer) => new Parts([b.subarray(0, 7), b.subarray(7, 70_000), b.subarray(70_000)]);
    const more = Array.from({ length: 40 }, (_, i) => `PPPPPPPP${String(i).padStart(4, '0')}`);
    await Promise.all(more.map((id, i) => spool.spoolPrimary({ ...msg(id), body: pieces(bodyOf(i)) })));
    for (const [i, id] of more.entries()) expect(spool.getWithBody(id)!.body.equals(bodyOf(i)), id).toBe(true);
    await spool.spoolPrimary({ ...msg('PPPPPPPP9999'), body: new Parts([Buffer.from('Subject: s\r\n'), Buffer.from('\r\nsmall\r\n')]) });
    expect(spool.getWithBody('PPPPPPPP9999')!.body.toString()).toBe('Subject: s\r\n\r\nsmall\r\n');
    // and again once the area is free
    await spool.storeShadow({ ...msg('TTTTTTTT0001'), body: bodyOf(3), origin: 'relay-b', originIncarnation: 'inc' });
    expect(spool.getWithBody('TTTTTTTT0001')!.body.equals(bodyOf(3))).toBe(true);
  });
});

describe('page cache', () => {
  it('every spool connection keeps a 2 MB page cache (bodies written once do not fill 16 MB each)', async () => {
    const { dir } = await open();
    // the writer's settings, as openDatabase gives them, and a read-only connection's
    for (const readonly of [false, true]) {
      const { db } = openDatabase(dir, { node: 'relay-a', busyTimeoutMs: 1000, readonly });
      cleanups.push(() => void db.close());
      expect(db.pragma('cache_size', { simple: true })).toBe(-2048);
    }
  });

  it('the group commit keeps a batch in memory until its commit (no spill to the log at 2 MB)', async () => {
    const { dir } = await open();
    const { db } = openDatabase(dir, { node: 'relay-a', busyTimeoutMs: 1000 });
    cleanups.push(() => void db.close());
    new GroupCommit(db);
    expect(db.pragma('cache_spill', { simple: true })).toBe(0);
  });
});
