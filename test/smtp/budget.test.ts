/**
 * The body budget (smtp/budget.ts): admission by reservation, only the oldest message reads
 * past the budget, bytes come back when messages end — directly, and through a real pair.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { BodyBudget } from '../../src/smtp/budget.js';
import { startPair, RawSmtp, send, waitFor } from '../helpers/index.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('body budget (smtp.maxBytesInFlight)', () => {
  it('admits by reservation, pauses all but the oldest past the budget, and lets waiters in as bytes leave', async () => {
    const budget = new BodyBudget(100);
    const a = await budget.enter(60);
    let bIn: Awaited<ReturnType<typeof budget.enter>> | undefined;
    const b = budget.enter(60).then((t) => (bIn = t));
    await new Promise((r) => setImmediate(r));
    expect(bIn).toBeUndefined(); // 60 + 60 > 100: waits
    expect(a.add(60)).toBe(true);
    a.release();
    await b;
    expect(bIn).toBeDefined();
    // b is alone: it may exceed the budget (a message larger than the budget still passes)
    expect(bIn!.add(150)).toBe(true);
    const c = await new Promise<Awaited<ReturnType<typeof budget.enter>>>((resolve) => {
      void budget.enter(1).then(resolve);
      bIn!.release();
    });
    const d = await budget.enter(1);
    // c is the oldest reading: it goes on; d pauses until the budget has room again
    expect(c.add(120)).toBe(true);
    expect(d.add(10)).toBe(false);
    let resumed = false;
    d.resume(() => (resumed = true));
    expect(resumed).toBe(false);
    c.received(); // d is now the oldest still reading
    expect(resumed).toBe(true);
    c.release();
    d.release();
    expect(budget.bytesInFlight).toBe(0);
  });

  it('reserves the mean recent size when no SIZE was declared, and lets waiters in in arrival order', async () => {
    const budget = new BodyBudget(100 * 1024);
    const admitted: string[] = [];
    const a = await budget.enter(); // 64 KiB: the first mean
    expect(budget.bytesInFlight).toBe(64 * 1024);
    const b = budget.enter().then((t) => (admitted.push('b'), t)); // 64 more do not fit
    const c = budget.enter(1).then((t) => (admitted.push('c'), t)); // 1 would, but b came first
    await new Promise((r) => setImmediate(r));
    expect(admitted).toEqual([]);
    a.release();
    const [tb, tc] = await Promise.all([b, c]);
    expect(admitted).toEqual(['b', 'c']);
    tb.release();
    tc.release();
    expect(budget.bytesInFlight).toBe(0);
  });

  it('stays live with a tiny budget: concurrent messages all pass, abandoned ones free their bytes', async () => {
    const pair = await startPair({ smtp: { maxBytesInFlight: 64 * 1024 } });
    cleanups.push(() => pair.stop());
    const port = pair.a.addresses.smtp.port;
    // clients that leave in the middle of a body: the first is being read, the others wait
    // for the budget when they leave; the bytes of all of them must come back
    const leavers = await Promise.all(
      Array.from({ length: 4 }, async () => {
        const c = await RawSmtp.openData(port, { helo: 'leaver.test', from: 'a@example.test', to: 'b@example.test' });
        c.write('Subject: partial\r\n\r\n' + 'y'.repeat(50_000));
        return c;
      }),
    );
    await new Promise((r) => setTimeout(r, 100));
    for (const c of leavers) c.close();
    // 12 × 100 KB at once through a 64 KB budget
    const body = (n: number) => `Subject: budget ${n}\r\nMessage-ID: <budget-${n}@test>\r\n\r\n` + `${'q'.repeat(98)}\r\n`.repeat(1000);
    const results = await Promise.all(Array.from({ length: 12 }, (_, n) => send(port, { raw: body(n) })));
    expect(results.map((r) => r.code)).toEqual(Array(12).fill(250));
    await waitFor(() => pair.sink.messages.length === 12, 30000, 'all 12 delivered');
  });
});
