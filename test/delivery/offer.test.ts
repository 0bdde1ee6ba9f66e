/**
 * The delivery worker's direct hand-off (an accepted id rung with its bytes goes straight to a
 * free slot): it still honours the reconcile hold, and it starts at once otherwise. An attempt
 * starts synchronously inside the ring (the spool read and the checks run before the first
 * await), so the assertions need no waiting.
 */
import { describe, it, expect, afterEach } from 'vitest';
import pino from 'pino';
import { Spool } from '../../src/spool/index.js';
import { DeliveryWorker } from '../../src/delivery/index.js';
import { Signal } from '../../src/base/signal.js';
import { noMetrics } from '../../src/base/metrics.js';
import { tmpDir } from '../helpers/index.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function worker(held: string[]): Promise<{ spool: Spool; ring: Signal['ring']; started: () => number }> {
  const { dir, cleanup } = tmpDir('sr-offer-');
  const spool = Spool.open(dir, { node: 'relay-a', busyTimeoutMs: 1000 });
  let started = 0;
  const wakeUps = new Signal();
  const w = new DeliveryWorker({
    // nothing listens there: an attempt that starts fails and is retried later, which is all this needs
    nextHop: { host: '127.0.0.1', port: 1, tls: 'none' },
    concurrency: 4,
    retry: { initialMs: 60000, maxMs: 60000, maxAgeMs: 432000000 },
    hostname: 'relay-a.test',
    spool,
    log: pino({ level: 'silent' }),
    awaitingReconcile: () => held,
    wakeUps,
    metrics: { ...noMetrics, deliveryAttemptStarted: () => void started++ },
  });
  cleanups.push(cleanup, () => spool.close(), () => w.stop(2000));
  w.start();
  return { spool, ring: wakeUps.ring, started: () => started };
}

async function accepted(spool: Spool, id: string): Promise<Buffer> {
  const body = Buffer.from('Subject: x\r\n\r\nhello\r\n');
  await spool.spoolPrimary({ id, sender: 'a@example.test', recipients: ['b@example.test'], body, receivedAt: Date.now(), client: '127.0.0.1' });
  await spool.markAccepted(id, 'relay-b');
  return body;
}

describe('delivery hand-off of an accepted message', () => {
  it('starts the attempt at once with the bytes in hand', async () => {
    const { spool, ring, started } = await worker([]);
    const body = await accepted(spool, 'OFFER0000001');
    ring('OFFER0000001', body);
    expect(started()).toBe(1);
  });

  it('does not deliver a message shadowed on a peer this node must reconcile with first', async () => {
    const { spool, ring, started } = await worker(['relay-b']);
    const body = await accepted(spool, 'OFFER0000002');
    ring('OFFER0000002', body);
    expect(started()).toBe(0);
  });
});
