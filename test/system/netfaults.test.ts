/**
 * Network faults between the two relays, made with nftables in their network namespaces
 * (test/helpers/netns.ts): silent partitions shorter and longer than promoteAfterMs, one-way loss at
 * packet level and at connection level, a flapping link. Relays are child processes; clients
 * send to both while the fault lasts. Each test prints one line of figures, including the
 * recovery time (end of the fault → each node's first 250 again; target heartbeat + timeout).
 * Without root / ip / nft these tests are skipped with one line saying why.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { performance } from 'node:perf_hooks';
import { FaultPair, Traffic, ShadowAudit, settle, waitUntil, NODES, FAST, type NodeName } from '../helpers/faultpair.js';
import { nftSupport, type DropRule } from '../helpers/netns.js';
import { seeded, seedFromEnv } from '../helpers/load.js';
import { waitFor, metricValue } from '../helpers/index.js';

const why = nftSupport();
if (why) process.stdout.write(`[netfaults] skipped: ${why}\n`);

const TARGET_MS = FAST.shadow.heartbeatMs + FAST.shadow.timeoutMs;
const PROMOTE_MS = FAST.shadow.promoteAfterMs;
/** flapping: 10 s in `npm test`, FLAP_SECONDS (the chaos run uses 30) */
const FLAP_SECONDS = Number(process.env.FLAP_SECONDS ?? 10);

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.now();

async function pair(): Promise<FaultPair> {
  const fp = await FaultPair.create({ mode: 'netns' });
  cleanups.push(async () => {
    const left = fp.lab!.leftovers;
    await fp.stop();
    expect(left.call(fp.lab), 'namespaces and links removed').toEqual([]);
  });
  await fp.sinkUp();
  await fp.startBoth();
  return fp;
}

function load(fp: FaultPair, seed: number, prefix: string, targets: () => NodeName[] = () => NODES): { t: Traffic; audit: ShadowAudit } {
  const t = new Traffic(fp, { clients: 6, targets, rand: seeded(seed), prefix, pinned: true }).start();
  const audit = new ShadowAudit(fp, t).start();
  cleanups.push(async () => {
    audit.stop();
    await t.stop();
  });
  return { t, audit };
}

/** Holds a fault for `ms` while watching that it took effect; returns the fault's end. */
async function hold(fp: FaultPair, ms: number, rules: DropRule[]): Promise<number> {
  fp.lab!.setDrops(rules);
  await sleep(ms); // the fault's length is what is being tested, not a wait for an outcome
  fp.lab!.heal();
  return now();
}

const fmt = (ms: number) => `${Math.round(ms)} ms`;

describe.skipIf(why !== null)('network faults between the relays (nft in namespaces)', () => {
  it('silent partition (2.5 s) shorter than promoteAfterMs: 451 while it lasts, /readyz 503, 250 again within heartbeat + timeout, nothing lost or doubled', async () => {
    const fp = await pair();
    const { t, audit } = load(fp, 11, 'ps');
    await t.more250(20);
    fp.lab!.partition('relay-a', 'relay-b');
    const began = now();
    // operators see it: both nodes say they cannot shadow
    let readyz = '';
    await waitUntil(
      async () => {
        const [a, b] = await Promise.all([fp.readyz('relay-a'), fp.readyz('relay-b')]);
        readyz = a.text;
        return a.status === 503 && b.status === 503;
      },
      2500,
      'both /readyz 503 while the partition lasts',
    );
    const notReadyAfter = now() - began;
    await sleep(Math.max(0, 2500 - (now() - began)));
    fp.lab!.heal();
    const end = now();
    const rec = await t.recovery(end, NODES);
    await t.more250(20);
    const r = await settle(fp, t, audit, 'partition 2.5 s', { recovery: fmt(rec), target: fmt(TARGET_MS), 'readyz 503 after': fmt(notReadyAfter) });
    expect(readyz).toMatch(/no shadow peer can take a copy: relay-b/);
    expect(fp.logged('relay-a', 'shadow peer down').length).toBeGreaterThan(0);
    // nothing sent after the partition began was answered 250 before it ended (451 at once,
    // or the answer waited until the peer could be asked)
    expect(t.ledger.filter((e) => e.outcome === '250' && e.t0 > began && e.t1 < end)).toEqual([]);
    expect(r.f.refused4xx).toBeGreaterThan(0);
    expect(r.f.lost).toEqual([]);
    expect(r.f.refusedDelivered).toEqual([]);
    expect(r.f.duplicateDeliveries).toBe(0);
    expect(audit.missing).toEqual([]);
    expect(rec).toBeLessThanOrEqual(TARGET_MS);
  }, 90000);

  it('silent partition longer than promoteAfterMs: both nodes deliver (the split-brain trade-off) — duplicates counted, nothing lost', async () => {
    const fp = await pair();
    // the next hop refuses first, so both nodes hold queued mail when the partition starts
    fp.nextHop.refuse();
    const { t, audit } = load(fp, 12, 'pl');
    await t.more250(30);
    fp.lab!.partition('relay-a', 'relay-b');
    const began = now();
    fp.nextHop.heal();
    // each side promotes the other's copies once promoteAfterMs has passed without contact
    await waitFor(() => NODES.every((n) => fp.logged(n, 'promoted').length > 0), PROMOTE_MS + 15000, 'promotions on both sides', 100);
    const promotedAfter = now() - began;
    await sleep(Math.max(0, 2 * PROMOTE_MS - (now() - began)));
    fp.lab!.heal();
    const end = now();
    const rec = await t.recovery(end, NODES);
    await t.more250(20);
    const counted = () =>
      NODES.reduce(
        (n, x) => n + fp.logged(x, 'duplicate risk: this node promoted and delivered a message its origin also finished (delivered it, or never answered its client)').length,
        0,
      );
    const r = await settle(fp, t, audit, `partition ${(2 * PROMOTE_MS) / 1000} s (> promoteAfterMs)`, {
      recovery: fmt(rec),
      'promoted after': fmt(promotedAfter),
      promoted: NODES.reduce((n, x) => n + fp.logged(x, 'promoted').length, 0),
      'duplicates counted by the relays': counted(),
    });
    expect(r.f.lost).toEqual([]);
    expect(r.f.refusedDelivered).toEqual([]);
    expect(audit.missing).toEqual([]);
    // the trade-off is real and visible: the sink got copies twice, and the relays said so
    expect(r.f.duplicateDeliveries).toBeGreaterThan(0);
    expect(counted()).toBeGreaterThan(0);
    const m = await fp.metrics('relay-a');
    expect((metricValue(m, 'shadowrelay_duplicate_risk_total', { kind: 'promoted_after_delivery' }) ?? 0) + (metricValue(await fp.metrics('relay-b'), 'shadowrelay_duplicate_risk_total', { kind: 'promoted_after_delivery' }) ?? 0)).toBeGreaterThan(0);
  }, 120000);

  const oneWay: Array<{ name: string; rules: DropRule[]; refused: NodeName[] }> = [
    { name: 'packet loss relay-a → relay-b (relay-b → relay-a delivered)', rules: [{ at: 'relay-a', peer: 'relay-b', dir: 'out', level: 'packet' }], refused: ['relay-a', 'relay-b'] },
    { name: 'packet loss relay-b → relay-a (relay-a → relay-b delivered)', rules: [{ at: 'relay-a', peer: 'relay-b', dir: 'in', level: 'packet' }], refused: ['relay-a', 'relay-b'] },
    { name: "connections relay-a opens to relay-b dropped (relay-b's to relay-a work)", rules: [{ at: 'relay-a', peer: 'relay-b', dir: 'out', level: 'conn' }], refused: ['relay-a'] },
    { name: "connections relay-b opens to relay-a dropped (relay-a's to relay-b work)", rules: [{ at: 'relay-a', peer: 'relay-b', dir: 'in', level: 'conn' }], refused: ['relay-b'] },
  ];
  for (const [i, c] of oneWay.entries()) {
    it(`one-way: ${c.name} for 3 s → ${c.refused.join(' and ')} answer 451 and are not ready; 250 again within heartbeat + timeout`, async () => {
      const fp = await pair();
      const { t, audit } = load(fp, 20 + i, `ow${i}-`);
      await t.more250(20);
      fp.lab!.setDrops(c.rules);
      const began = now();
      let ready: Record<string, number> = {};
      await waitUntil(
        async () => {
          ready = Object.fromEntries(await Promise.all(NODES.map(async (n) => [n, (await fp.readyz(n)).status] as const)));
          return c.refused.every((n) => ready[n] === 503);
        },
        3000,
        `${c.refused.join(', ')} /readyz 503`,
      ).catch(() => undefined);
      await sleep(Math.max(0, 3000 - (now() - began)));
      fp.lab!.heal();
      const end = now();
      const rec = await t.recovery(end, NODES);
      await t.more250(20);
      // answers given while the fault surely had effect (a node needs up to heartbeat + timeout to notice)
      const during = t.ledger.filter((e) => e.t1 > began + TARGET_MS && e.t1 < end);
      const byNode = (n: NodeName) => during.filter((e) => e.node === n);
      const r = await settle(fp, t, audit, `one-way ${c.name}`, {
        recovery: fmt(rec),
        target: fmt(TARGET_MS),
        'readyz a/b': `${ready['relay-a']}/${ready['relay-b']}`,
        'during: a 250/4xx': `${byNode('relay-a').filter((e) => e.outcome === '250').length}/${byNode('relay-a').filter((e) => e.outcome === '4xx').length}`,
        'b 250/4xx': `${byNode('relay-b').filter((e) => e.outcome === '250').length}/${byNode('relay-b').filter((e) => e.outcome === '4xx').length}`,
      });
      // the side whose own requests are blocked says so; the other keeps shadowing
      for (const n of NODES) {
        if (c.refused.includes(n)) {
          expect(ready[n]).toBe(503);
          expect(t.ledger.filter((e) => e.node === n && e.outcome === '250' && e.t0 > began && e.t1 < end)).toEqual([]);
        } else {
          expect(ready[n]).toBe(200);
          expect(byNode(n).some((e) => e.outcome === '250')).toBe(true);
        }
      }
      expect(r.f.lost).toEqual([]);
      expect(r.f.refusedDelivered).toEqual([]);
      expect(r.f.duplicateDeliveries).toBe(0);
      expect(audit.missing).toEqual([]);
      expect(rec).toBeLessThanOrEqual(TARGET_MS);
    }, 90000);
  }

  it(`a flapping link (partitioned/healed every 200–500 ms for ${FLAP_SECONDS} s): nothing lost or doubled, 250 again within heartbeat + timeout after it stops`, async () => {
    const seed = seedFromEnv('FLAP_SEED');
    const rand = seeded(seed);
    const fp = await pair();
    const { t, audit } = load(fp, seed, 'fl');
    await t.more250(20);
    const stopAt = now() + FLAP_SECONDS * 1000;
    let flips = 0;
    let end = now();
    while (now() < stopAt) {
      end = await hold(fp, 200 + Math.floor(rand() * 300), [
        { at: 'relay-a', peer: 'relay-b', dir: 'out', level: 'packet' },
        { at: 'relay-a', peer: 'relay-b', dir: 'in', level: 'packet' },
      ]);
      flips++;
      await sleep(200 + Math.floor(rand() * 300));
    }
    const rec = await t.recovery(end, NODES);
    await t.more250(20);
    const r = await settle(fp, t, audit, `flapping ${FLAP_SECONDS} s`, { seed, 'down phases': flips, recovery: fmt(rec), target: fmt(TARGET_MS) });
    expect(r.f.lost).toEqual([]);
    expect(r.f.refusedDelivered).toEqual([]);
    expect(r.f.duplicateDeliveries).toBe(0);
    expect(audit.missing).toEqual([]);
    expect(rec).toBeLessThanOrEqual(TARGET_MS);
  }, (FLAP_SECONDS + 90) * 1000);
});
