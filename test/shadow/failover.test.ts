/**
 * Failover (shadow/failover.ts) on its own: a real spool in a temp dir, the clocks injected
 * (tick's wall and monotonic times, the last-contact source), no network — the peer clients
 * are never asked anything in these cases.
 */
import { describe, it, expect, afterEach } from 'vitest';
import pino from 'pino';
import { Spool } from '../../src/spool/index.js';
import { PeerClient } from '../../src/shadow/client.js';
import { Failover } from '../../src/shadow/failover.js';
import { Metrics } from '../../src/ops/metrics.js';
import { newQueueId } from '../../src/base/ids.js';
import { monotonicMs } from '../../src/base/clock.js';
import { tmpDir, waitFor } from '../helpers/index.js';

const PROMOTE_AFTER = 60_000;
const MAX_AGE = 3_600_000;
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function setup(o: { lastContact?: number | null } = {}) {
  const { dir, cleanup } = tmpDir('sr-failover-');
  const spool = Spool.open(dir, { node: 'relay-a', busyTimeoutMs: 1000 });
  cleanups.push(cleanup, () => spool.close());
  const metrics = new Metrics('relay-a');
  const none = Buffer.alloc(0);
  const peer = new PeerClient({ name: 'relay-b', host: '127.0.0.1', port: 9, tls: { ca: none, cert: none, key: none } });
  cleanups.push(() => peer.close());
  const events = { promoted: 0, released: 0 };
  // the failover's start lies between these two readings of the monotonic clock
  const before = monotonicMs();
  const failover = new Failover({
    nodeName: 'relay-a',
    spool,
    log: pino({ level: 'silent' }),
    clients: () => [peer],
    timeoutMs: () => 5000,
    promoteAfterMs: PROMOTE_AFTER,
    maxShadowAgeMs: MAX_AGE,
    reconcileIntervalMs: 30_000,
    lastContact: () => o.lastContact ?? null,
    isUp: () => false,
    onPromoted: () => events.promoted++,
    onReleased: () => events.released++,
    metrics,
  });
  cleanups.push(() => failover.stop());
  const after = monotonicMs();
  const shadowOf = async (incarnation = 'inc-1', receivedAt = Date.now()) => {
    const id = newQueueId();
    await spool.storeShadow({ id, origin: 'relay-b', originIncarnation: incarnation, sender: 's@x.test', recipients: ['r@x.test'], receivedAt, body: Buffer.from('Subject: x\r\n\r\nx\r\n') });
    return id;
  };
  return { spool, metrics, failover, events, before, after, shadowOf };
}

describe('Failover', () => {
  it('promotes the copies of a peer never heard from once promoteAfterMs has passed since start, not before', async () => {
    const { spool, metrics, failover, events, before, after, shadowOf } = setup();
    const id = await shadowOf();
    await failover.tick(Date.now(), before + PROMOTE_AFTER - 1);
    expect(spool.get(id)?.role).toBe('shadow');
    await failover.tick(Date.now(), after + PROMOTE_AFTER);
    expect(spool.get(id)).toMatchObject({ role: 'primary', state: 'queued' });
    expect(events.promoted).toBe(1);
    const m = await metrics.snapshot();
    expect(m.value('shadowrelay_promoted_messages_total', { peer: 'relay-b' })).toBe(1);
    expect(m.value('shadowrelay_promotions_total', { peer: 'relay-b' })).toBe(1);
  });

  it('counts promotion time from the last contact, on the monotonic clock', async () => {
    const contact = Math.round(monotonicMs()) + 30_000;
    const { spool, failover, shadowOf } = setup({ lastContact: contact });
    const id = await shadowOf();
    // a minute after start, but only 40 s after the last contact: not yet
    await failover.tick(Date.now(), contact + 40_000);
    expect(spool.get(id)?.role).toBe('shadow');
    await failover.tick(Date.now(), contact + PROMOTE_AFTER);
    expect(spool.get(id)?.role).toBe('primary');
  });

  it('promotes at once the copies of an older incarnation when the peer comes back with a new one', async () => {
    const { spool, failover, shadowOf } = setup();
    const old = await shadowOf('inc-1');
    const current = await shadowOf('inc-2');
    failover.observeIncarnation('relay-b', 'inc-2');
    await waitFor(() => spool.get(old)?.role === 'primary', 5000, 'the old incarnation promoted');
    expect(spool.get(current)?.role).toBe('shadow');
  });

  it('drops (never delivers) copies older than maxShadowAgeMs, by their arrival date', async () => {
    const { spool, metrics, failover, after, shadowOf } = setup();
    const now = Date.now();
    const aged = await shadowOf('inc-1', now - MAX_AGE - 1000);
    const young = await shadowOf('inc-1', now - MAX_AGE + 60_000);
    await failover.tick(now, after);
    expect(spool.get(aged)).toBeUndefined();
    expect(spool.get(young)?.role).toBe('shadow');
    expect((await metrics.snapshot()).value('shadowrelay_shadows_dropped_total', { reason: 'expired' })).toBe(1);
  });

  it('delivery waits for a reconcile with the peer for at most promoteAfterMs, then goes on and counts the duplicate risk', async () => {
    const { metrics, failover, before, after } = setup();
    expect(failover.awaitingReconcile(after)).toEqual(['relay-b']);
    expect(failover.awaitingReconcile(before + PROMOTE_AFTER - 1)).toEqual(['relay-b']);
    expect(failover.awaitingReconcile(after + PROMOTE_AFTER)).toEqual([]);
    expect(failover.awaitingReconcile(after + 2 * PROMOTE_AFTER)).toEqual([]);
    expect((await metrics.snapshot()).value('shadowrelay_duplicate_risk_total', { kind: 'delivered_without_reconcile' })).toBe(1);
  });
});
