/**
 * The queue browser's reads on a real spool of 100,000 messages (written through the
 * spool's own methods): a page of the whole queue, a deep page, a state's deep page, a
 * search by id prefix, sender and recipient, the counts by state and the top errors — each
 * checked for what it returns, and timed with the figures printed. The times are printed,
 * not asserted: a bound on wall time fails by the machine's load, not by the code (speed is
 * for the benchmark).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { Spool } from '../../src/spool/index.js';
import { tmpDir } from '../helpers/index.js';

const N = 100_000;
const T0 = Date.UTC(2026, 0, 1);

let spool: Spool;
let cleanup: () => void;

const idOf = (i: number) => `1A${i.toString(16).toUpperCase().padStart(12, '0')}ABCDEF0`;

beforeAll(async () => {
  const t = tmpDir();
  cleanup = t.cleanup;
  spool = Spool.open(t.dir, { node: 'relay-a', busyTimeoutMs: 1000 });
  const body = Buffer.from('Subject: browse\r\n\r\nx\r\n');
  const started = Date.now();
  // in slices, so each group commit stays a reasonable transaction
  for (let from = 0; from < N; from += 10_000) {
    const writes: Array<Promise<unknown>> = [];
    for (let i = from; i < from + 10_000; i++) {
      const m = { id: idOf(i), sender: `sender${i % 1000}@example.test`, recipients: [`rcpt${i}@dest${i % 50}.test`], body, receivedAt: T0 + i * 1000 };
      if (i % 10 === 9) writes.push(spool.storeShadow({ ...m, origin: 'relay-b', originIncarnation: 'inc-b' }));
      else writes.push(spool.spoolPrimary(m).then(() => spool.markAccepted(m.id, 'relay-b')));
    }
    await Promise.all(writes);
    const after: Array<Promise<unknown>> = [];
    for (let i = from; i < from + 10_000; i++) {
      if (i % 10 === 9) continue;
      // a quarter deferred (two kinds of reply), one in twenty held
      if (i % 4 === 0) after.push(spool.recordAttempt(idOf(i), [{ idx: 0, state: 'pending', error: i % 8 === 0 ? '451 4.3.0 try later' : 'ECONNECTION: connect ECONNREFUSED' }], T0 + 1e9, 'deferred'));
      else if (i % 20 === 1) after.push(spool.hold(idOf(i)));
    }
    await Promise.all(after);
  }
  console.log(`browse.test: ${N} messages written in ${Date.now() - started} ms`);
}, 300000);

afterAll(async () => {
  await spool?.close();
  cleanup?.();
});

function timed<T>(what: string, fn: () => T): T {
  fn(); // warm: the first read of a statement pays for the page cache
  const t = process.hrtime.bigint();
  const r = fn();
  const ms = Number(process.hrtime.bigint() - t) / 1e6;
  console.log(`browse.test: ${what}: ${ms.toFixed(1)} ms`);
  return r;
}

describe('queue browser on 100,000 messages', () => {
  it('pages the whole queue, newest first and oldest first, deep pages included', () => {
    const first = timed('first page (100, newest first)', () => spool.browse({ state: 'all', order: 'newest', offset: 0, limit: 100 }));
    expect(first.total).toBe(N);
    expect(first.messages).toHaveLength(100);
    expect(first.messages[0]!.id).toBe(idOf(N - 1));
    expect(first.messages[0]!.recipients[0]!.address).toBe(`rcpt${N - 1}@dest${(N - 1) % 50}.test`);
    const last = timed('last page (offset 99,900)', () => spool.browse({ state: 'all', order: 'newest', offset: N - 100, limit: 100 }));
    expect(last.messages[99]!.id).toBe(idOf(0));
    const oldest = timed('first page, oldest first', () => spool.browse({ state: 'all', order: 'oldest', offset: 0, limit: 500 }));
    expect(oldest.messages.map((m) => m.id).slice(0, 2)).toEqual([idOf(0), idOf(1)]);
  });

  it('filters by state (deferred, held, shadow, queued) with the right totals, deep pages included', () => {
    const c = timed('counts by state', () => spool.queueCounts());
    const shadows = N / 10;
    const primaries = N - shadows;
    let deferred = 0;
    let held = 0;
    for (let i = 0; i < N; i++) {
      if (i % 10 === 9) continue;
      if (i % 4 === 0) deferred++;
      else if (i % 20 === 1) held++;
    }
    expect(c).toEqual({ queued: primaries - deferred - held, deferred, held, spooled: 0, shadow: shadows, oldestPrimaryAt: T0, oldestShadowAt: T0 + 9000 });
    const d = timed('deferred, deep page', () => spool.browse({ state: 'deferred', order: 'newest', offset: deferred - 100, limit: 100 }));
    expect(d.total).toBe(deferred);
    expect(d.messages.every((m) => m.role === 'primary' && m.state === 'queued' && m.lastError === 'deferred')).toBe(true);
    const h = timed('held, first page', () => spool.browse({ state: 'held', order: 'newest', offset: 0, limit: 100 }));
    expect(h.total).toBe(held);
    expect(h.messages.every((m) => m.state === 'held')).toBe(true);
    const s = timed('shadow, deep page', () => spool.browse({ state: 'shadow', order: 'oldest', offset: shadows - 50, limit: 100 }));
    expect(s.total).toBe(shadows);
    expect(s.messages).toHaveLength(50);
    expect(s.messages.every((m) => m.role === 'shadow')).toBe(true);
    const q = timed('queued, first page', () => spool.browse({ state: 'queued', order: 'newest', offset: 0, limit: 100 }));
    expect(q.total).toBe(primaries - deferred - held);
    expect(q.messages.every((m) => m.state === 'queued' && m.lastError === null)).toBe(true);
  });

  it('searches by queue id prefix, sender and recipient (wildcards in the text are literal)', () => {
    const byId = timed('search: an id prefix', () => spool.browse({ state: 'all', order: 'newest', offset: 0, limit: 100, search: idOf(12345).slice(0, 14).toLowerCase() }));
    expect(byId.messages.map((m) => m.id)).toContain(idOf(12345));
    expect(byId.total).toBeLessThanOrEqual(16);
    const exact = spool.browse({ state: 'all', order: 'newest', offset: 0, limit: 100, search: idOf(4242) });
    expect(exact.messages.map((m) => m.id)).toEqual([idOf(4242)]);
    const bySender = timed('search: a sender', () => spool.browse({ state: 'all', order: 'newest', offset: 0, limit: 100, search: 'sender777@' }));
    expect(bySender.total).toBe(N / 1000);
    expect(bySender.messages.every((m) => m.sender === 'sender777@example.test')).toBe(true);
    const byRcpt = timed('search: a recipient', () => spool.browse({ state: 'all', order: 'newest', offset: 0, limit: 100, search: 'rcpt99999@' }));
    expect(byRcpt.messages.map((m) => m.id)).toEqual([idOf(99999)]);
    const deferredToDomain = timed('search within a state', () => spool.browse({ state: 'deferred', order: 'newest', offset: 0, limit: 100, search: '@dest20.test' }));
    expect(deferredToDomain.total).toBeGreaterThan(0);
    expect(deferredToDomain.messages.every((m) => m.lastError === 'deferred' && m.recipients[0]!.address.endsWith('@dest20.test'))).toBe(true);
    expect(spool.browse({ state: 'all', order: 'newest', offset: 0, limit: 10, search: '%' }).total).toBe(0);
    expect(spool.browse({ state: 'all', order: 'newest', offset: 0, limit: 10, search: 'rcpt_9999@' }).total).toBe(0);
  });

  it('groups the pending recipients by the reply they wait on', () => {
    const errors = timed('top errors', () => spool.topErrors(10));
    let r451 = 0;
    let refused = 0;
    for (let i = 0; i < N; i++) if (i % 10 !== 9 && i % 4 === 0) (i % 8 === 0 ? r451++ : refused++);
    expect(errors).toEqual(
      [
        { error: '451 4.3.0 try later', recipients: r451, messages: r451 },
        { error: 'ECONNECTION: connect ECONNREFUSED', recipients: refused, messages: refused },
      ].sort((a, b) => b.recipients - a.recipients || a.error.localeCompare(b.error)),
    );
  });
});
