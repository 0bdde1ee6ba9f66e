/**
 * The delivery worker's direct hand-off (an accepted id rung with its bytes goes straight to a
 * free slot): it still honours the reconcile hold, and it starts at once otherwise. An attempt
 * starts synchronously inside the ring (the spool read and the checks run before the first
 * await), so the assertions need no waiting. A message rung with its accepted mark still on
 * its way (Marking) starts too, and its outcome reaches the spool only after the mark.
 */
import { describe, it, expect, afterEach } from 'vitest';
import pino from 'pino';
import { Spool } from '../../src/spool/index.js';
import { DeliveryWorker } from '../../src/delivery/index.js';
import { Signal, type Marking } from '../../src/base/signal.js';
import { noMetrics } from '../../src/base/metrics.js';
import { tmpDir, Sink, waitFor } from '../helpers/index.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function worker(
  held: string[],
  nextHopPort = 1,
  onAttempted: () => void = () => {},
): Promise<{ spool: Spool; ring: Signal['ring']; started: () => number }> {
  const { dir, cleanup } = tmpDir('sr-offer-');
  const spool = Spool.open(dir, { node: 'relay-a', busyTimeoutMs: 1000 });
  let started = 0;
  const wakeUps = new Signal();
  const w = new DeliveryWorker({
    // nothing listens there: an attempt that starts fails and is retried later, which is all this needs
    nextHop: { host: '127.0.0.1', port: nextHopPort, tls: 'none' },
    concurrency: 4,
    retry: { initialMs: 60000, maxMs: 60000, maxAgeMs: 432000000 },
    hostname: 'relay-a.test',
    spool,
    log: pino({ level: 'silent' }),
    awaitingReconcile: () => held,
    wakeUps,
    metrics: { ...noMetrics, deliveryAttemptStarted: () => void started++, deliveryAttempt: () => onAttempted() },
  });
  cleanups.push(cleanup, () => spool.close(), () => w.stop(2000));
  w.start();
  return { spool, ring: wakeUps.ring, started: () => started };
}

async function spooled(spool: Spool, id: string): Promise<Buffer> {
  const body = Buffer.from('Subject: x\r\n\r\nhello\r\n');
  await spool.spoolPrimary({ id, sender: 'a@example.test', recipients: ['b@example.test'], body, receivedAt: Date.now(), client: '127.0.0.1' });
  return body;
}

async function accepted(spool: Spool, id: string): Promise<Buffer> {
  const body = await spooled(spool, id);
  await spool.markAccepted(id, 'relay-b');
  return body;
}

/**
 * Spools a message and rings it with its mark still on its way, as the acceptor does (its mark
 * rides a later transaction); resolves with the mark's write, which the test makes when it chooses.
 */
async function ringUnmarked(spool: Spool, ring: Signal['ring'], id: string): Promise<() => Promise<void>> {
  const body = await spooled(spool, id);
  let done!: () => void;
  const marking: Marking = { peer: 'relay-b', written: new Promise<void>((r) => (done = r)) };
  ring(id, body, marking);
  return async () => {
    await spool.markAccepted(id, 'relay-b');
    done();
  };
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

  it('starts a message whose accepted mark is still on its way', async () => {
    const { spool, ring, started } = await worker([]);
    const mark = await ringUnmarked(spool, ring, 'OFFER0000003');
    expect(started()).toBe(1);
    await mark();
  });

  it('holds such a message for a reconcile with the peer its mark names', async () => {
    const { spool, ring, started } = await worker(['relay-b']);
    const mark = await ringUnmarked(spool, ring, 'OFFER0000004');
    expect(started()).toBe(0);
    await mark();
  });

  it('writes the outcome of such a delivery only after the mark', async () => {
    const sink = new Sink();
    const port = await sink.listen();
    cleanups.push(() => sink.close());
    // the attempt is over (the next hop answered): an outcome written now would be queued
    // before the write below, which then resolves only once that outcome is committed too
    let attempted!: () => void;
    const over = new Promise<void>((r) => (attempted = r));
    const { spool, ring } = await worker([], port, () => attempted());
    const id = 'OFFER0000005';
    const mark = await ringUnmarked(spool, ring, id);
    await over;
    expect(sink.messages).toHaveLength(1);
    await spooled(spool, 'OFFER0000006');
    // the outcome waits for the mark: the row is still as spooled, so the mark finds it
    expect(spool.get(id)?.state).toBe('spooled');
    await mark();
    await waitFor(() => spool.get(id) === undefined, 10000, 'the purge after the mark');
  });
});
