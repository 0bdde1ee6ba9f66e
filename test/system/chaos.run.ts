/**
 * `npm run chaos`: a bounded chaos run (default 120 s; CHAOS_SECONDS, CHAOS_SEED) of a pair of
 * relays (child processes) and a next hop under load from clients that use either relay.
 * At random it kills a relay with SIGKILL, stops one with SIGTERM, or crashes the next hop,
 * and brings it back after a random downtime (sometimes longer than promoteAfterMs, so
 * promotions and reconciles happen). At most one relay is down at a time, and the next relay
 * failure waits until the pair had SETTLE_MS together — the guarantee is about any single
 * node's failure. At the end everything is brought up, the queues drain,
 * and it prints sent / 250 / refused / delivered / lost / duplicates. Lost must be 0 and no
 * refused message may be delivered.
 */
import { it, expect } from 'vitest';
import { startCluster, type NodeName } from '../helpers/cluster.js';
import { Load, compare, formatFigures, seeded, seedFromEnv } from '../helpers/load.js';
import { waitFor } from '../helpers/index.js';

const SECONDS = Number(process.env.CHAOS_SECONDS ?? 120);
const PROMOTE_AFTER_MS = 4000;
// after a relay restarts, the pair gets this long to exchange owed discards before the next
// relay failure: two failures within a heartbeat or two are a double failure, not a single one
const SETTLE_MS = 2000;

it(`chaos: ${SECONDS} s of random relay and next-hop failures under load`, async () => {
  const seed = seedFromEnv('CHAOS_SEED');
  const rand = seeded(seed);
  const say = (s: string) => process.stdout.write(`[chaos ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${s}\n`);
  const t0 = Date.now();
  say(`seed ${seed} (replay with CHAOS_SEED=${seed}), ${SECONDS} s`);
  const c = await startCluster({
    shadow: { heartbeatMs: 300, timeoutMs: 3000, promoteAfterMs: PROMOTE_AFTER_MS, reconcileIntervalMs: 2000 },
    delivery: { retry: { initialMs: 300, maxMs: 2000, maxAgeMs: 432000000 } },
    node: { shutdownTimeoutMs: 5000 },
  });
  const names: NodeName[] = ['relay-a', 'relay-b'];
  // every log line of every incarnation of each node
  const lines: Array<Record<string, unknown>> = [];
  const start = async (n: NodeName) => {
    const p = await c.start(n);
    const drain = () => lines.push(...p.lines.splice(0));
    drain();
    const collect = setInterval(drain, 200);
    void p.exited.then(() => {
      clearInterval(collect);
      drain();
    });
  };
  const events: Record<string, number> = {};
  const count = (e: string) => (events[e] = (events[e] ?? 0) + 1);
  try {
    for (const n of [...names].reverse()) await start(n);
    const load = new Load({
      clients: 4,
      rand,
      prefix: 'c',
      ports: () => names.filter((n) => c.up(n)).map((n) => c.smtpPorts[n]),
    });
    load.start();
    const end = t0 + SECONDS * 1000;
    let down: { name: NodeName; until: number } | undefined;
    let restartedAt = 0;
    let sinkUntil: number | undefined;
    while (Date.now() < end) {
      await new Promise((r) => setTimeout(r, 250 + rand() * 1500));
      const now = Date.now();
      if (down && now >= down.until) {
        await start(down.name);
        say(`${down.name} restarted`);
        down = undefined;
        restartedAt = Date.now();
      }
      if (sinkUntil !== undefined && now >= sinkUntil) {
        await c.sinkUp();
        say('next hop back');
        sinkUntil = undefined;
      }
      const roll = rand();
      if (!down && roll < 0.35 && now - restartedAt >= SETTLE_MS) {
        const name = names[Math.floor(rand() * 2)]!;
        // sometimes past promoteAfterMs: the peer promotes, and the comeback reconciles
        const downtime = 300 + rand() * (2.5 * PROMOTE_AFTER_MS);
        const graceful = rand() < 0.25;
        await c.kill(name, graceful ? 'SIGTERM' : 'SIGKILL');
        count(graceful ? 'sigterm' : 'sigkill');
        say(`${name} ${graceful ? 'stopped (SIGTERM)' : 'killed (SIGKILL)'} for ${(downtime / 1000).toFixed(1)} s`);
        down = { name, until: Date.now() + downtime };
      } else if (sinkUntil === undefined && roll > 0.85) {
        const downtime = 500 + rand() * 8000;
        await c.sinkDown();
        count('next hop down');
        say(`next hop down for ${(downtime / 1000).toFixed(1)} s`);
        sinkUntil = Date.now() + downtime;
      }
    }
    // the end: everything comes back, the clients stop, the queues drain
    for (const n of names) if (!c.up(n)) await start(n);
    await c.sinkUp();
    await load.stop();
    say(`load stopped after ${load.ledger.length} messages; draining`);
    await waitFor(
      () => compare(load.ledger, c.received).lost.length === 0 && names.every((n) => c.spoolTotal(n) === 0),
      180000,
      'every 250 delivered and both spools empty',
      500,
    ).catch((e: Error) => say(`drain incomplete: ${e.message}`));
    const f = compare(load.ledger, c.received);
    const logged = (msg: string) => lines.filter((l) => l.msg === msg).length;
    say(`events: ${Object.entries(events).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    say(
      `relays logged: promoted ${logged('promoted')}, dropped after reconcile ${logged('dropped: the peer promoted and delivers this message')}, ` +
        `duplicates detected ${logged('duplicate risk: this node promoted and delivered a message its origin also finished (delivered it, or never answered its client)')}, ` +
        `orphans dropped ${logged('orphan shadow dropped: its primary does not hold the message')}`,
    );
    say(`FIGURES | ${formatFigures(f)}`);
    say(
      `sent ${f.sent} / 250 ${f.ok250} / refused ${f.refused4xx + f.refused5xx} / no reply ${f.noReply} / delivered ${f.delivered} / ` +
        `lost ${f.lost.length} / duplicates ${f.duplicateDeliveries}`,
    );
    if (f.lost.length) say(`LOST: ${f.lost.join(' ')}`);
    if (f.refusedDelivered.length) say(`REFUSED BUT DELIVERED: ${f.refusedDelivered.join(' ')}`);
    expect(f.lost).toEqual([]);
    expect(f.refusedDelivered).toEqual([]);
  } finally {
    await c.stop();
  }
}, (SECONDS + 300) * 1000);
