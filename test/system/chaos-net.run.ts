/**
 * `npm run chaos` — the network nemesis: a seeded, Jepsen-style schedule of faults over the
 * network namespaces (test/helpers/netns.ts) while six clients (three per relay, falling back to the other) send. CHAOS_SECONDS long
 * (default 120), CHAOS_SEED replays a schedule. One relay/network fault at a time — the
 * guarantee is about any single fault — each followed by a calm gap; a next-hop fault may
 * overlap it (the next hop is not in the path of a 250). The menu:
 *   partition (short, or longer than promoteAfterMs), one-way packet loss either way, one
 *   side's connections dropped, a flapping link, a relay frozen (SIGSTOP), a relay killed
 *   (SIGKILL, sometimes SIGTERM) and restarted; next hop: black hole, one byte a second,
 *   reset in DATA, crash.
 * After each relay/network fault it measures the recovery (the fault's end → each live
 * relay's first 250). At the end everything heals, the queues drain, and the checker prints
 * sent / 250 / 4xx / delivered / lost / refused-but-delivered / duplicates and the worst
 * recovery. Lost and refused-but-delivered must be 0, every 250 must have had its shadow copy,
 * and every fault shorter than promoteAfterMs must recover within heartbeat + timeout.
 * Without namespaces the network faults are left out (one line says so).
 */
import { it, expect } from 'vitest';
import { performance } from 'node:perf_hooks';
import { FaultPair, Traffic, ShadowAudit, settle, NODES, FAST, other, type NodeName } from '../helpers/faultpair.js';
import { nftSupport, type DropRule } from '../helpers/netns.js';
import { seeded, seedFromEnv } from '../helpers/load.js';

const SECONDS = Number(process.env.CHAOS_SECONDS ?? 120);
const PROMOTE_MS = FAST.shadow.promoteAfterMs;
const TARGET_MS = FAST.shadow.heartbeatMs + FAST.shadow.timeoutMs;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.now();

interface FaultRecord {
  kind: string;
  ms: number;
  /** end of the fault → every live relay's first 250 */
  recovery: number | null;
  /** the fault lasted less than promoteAfterMs: recovery must meet the target */
  short: boolean;
}

it(`chaos (network nemesis): ${SECONDS} s of seeded network, process and next-hop faults under load`, async () => {
  const seed = seedFromEnv('CHAOS_SEED');
  const rand = seeded(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const between = (lo: number, hi: number) => Math.round(lo + rand() * (hi - lo));
  const t0 = now();
  const say = (s: string) => process.stdout.write(`[chaos-net ${((now() - t0) / 1000).toFixed(1).padStart(6)} s] ${s}\n`);
  const nftWhy = nftSupport();
  say(`seed ${seed} (replay with CHAOS_SEED=${seed}), ${SECONDS} s${nftWhy ? ` — network faults left out: ${nftWhy}` : ''}`);

  const fp = await FaultPair.create();
  const paused = new Set<NodeName>();
  const records: FaultRecord[] = [];
  const events: Record<string, number> = {};
  let traffic: Traffic | undefined;
  let audit: ShadowAudit | undefined;
  try {
    await fp.sinkUp();
    await fp.startBoth();
    const t = new Traffic(fp, { clients: 6, rand, prefix: 'x', pinned: true, targets: () => NODES.filter((n) => fp.up(n) && !paused.has(n)) }).start();
    traffic = t;
    audit = new ShadowAudit(fp, t).start();
    await t.more250(20);

    // next-hop faults run on their own clock and may overlap a relay fault
    let nextHopUntil = 0;
    let nextHopKind = '';
    const nextHopTick = async () => {
      const tnow = now();
      if (nextHopKind && tnow >= nextHopUntil) {
        if (nextHopKind === 'crash') await fp.sinkUp();
        else fp.nextHop.heal();
        say(`next hop healthy again (after ${nextHopKind})`);
        nextHopKind = '';
      } else if (!nextHopKind && rand() < 0.25) {
        nextHopKind = pick(['black hole', 'one byte per second', 'reset in DATA', 'crash']);
        const ms = between(1000, 6000);
        nextHopUntil = tnow + ms;
        if (nextHopKind === 'black hole') fp.nextHop.blackhole();
        else if (nextHopKind === 'one byte per second') fp.nextHop.trickle(1);
        else if (nextHopKind === 'reset in DATA') fp.nextHop.resetInData();
        else await fp.sinkDown();
        events[`next hop ${nextHopKind}`] = (events[`next hop ${nextHopKind}`] ?? 0) + 1;
        say(`next hop: ${nextHopKind} for ${(ms / 1000).toFixed(1)} s`);
      }
    };
    /** waits `ms` while the next-hop schedule goes on */
    const run = async (ms: number) => {
      const until = now() + ms;
      while (now() < until) {
        await nextHopTick();
        await sleep(Math.min(250, Math.max(0, until - now())));
      }
    };

    // short: no outage in it reaches promoteAfterMs (a flapping link's phases are short)
    type Fault = { kind: string; apply: () => Promise<number>; short?: boolean };
    const drops = (rules: DropRule[], ms: number) => async () => {
      fp.lab!.setDrops(rules);
      await run(ms);
      fp.lab!.heal();
      return ms;
    };
    const menu: Array<() => Fault> = [];
    if (!nftWhy) {
      menu.push(() => {
        const long = rand() < 0.2;
        const ms = long ? between(PROMOTE_MS + 1000, PROMOTE_MS + 5000) : between(500, 3000);
        return { kind: `partition ${(ms / 1000).toFixed(1)} s${long ? ' (> promoteAfterMs)' : ''}`, apply: drops([{ at: 'relay-a', peer: 'relay-b', dir: 'out', level: 'packet' }, { at: 'relay-a', peer: 'relay-b', dir: 'in', level: 'packet' }], ms) };
      });
      menu.push(() => {
        const from = pick(NODES);
        const ms = between(500, 3000);
        return { kind: `packet loss ${from} → ${other(from)} ${(ms / 1000).toFixed(1)} s`, apply: drops([{ at: from, peer: other(from), dir: 'out', level: 'packet' }], ms) };
      });
      menu.push(() => {
        const from = pick(NODES);
        const ms = between(500, 3000);
        return { kind: `connections ${from} opens to ${other(from)} dropped ${(ms / 1000).toFixed(1)} s`, apply: drops([{ at: from, peer: other(from), dir: 'out', level: 'conn' }], ms) };
      });
      menu.push(() => {
        const ms = between(3000, 8000);
        return {
          kind: `flapping ${(ms / 1000).toFixed(1)} s`,
          short: true,
          apply: async () => {
            const until = now() + ms;
            while (now() < until) {
              fp.lab!.partition('relay-a', 'relay-b');
              await run(between(200, 500));
              fp.lab!.heal();
              await run(between(200, 500));
            }
            return ms;
          },
        };
      });
    }
    menu.push(() => {
      const n = pick(NODES);
      const ms = between(300, 3000);
      return {
        kind: `${n} frozen ${(ms / 1000).toFixed(1)} s`,
        apply: async () => {
          paused.add(n);
          fp.pause(n);
          await run(ms);
          fp.resume(n);
          paused.delete(n);
          return ms;
        },
      };
    });
    menu.push(() => {
      const n = pick(NODES);
      const long = rand() < 0.2;
      const down = long ? between(PROMOTE_MS + 500, PROMOTE_MS + 4000) : between(200, 3000);
      const sig: NodeJS.Signals = rand() < 0.25 ? 'SIGTERM' : 'SIGKILL';
      return {
        kind: `${n} ${sig} down ${(down / 1000).toFixed(1)} s${long ? ' (> promoteAfterMs)' : ''}`,
        apply: async () => {
          const began = now();
          await fp.kill(n, sig);
          await run(down);
          await fp.start(n);
          return now() - began;
        },
      };
    });

    const end = t0 + SECONDS * 1000;
    // the full-length flapping link (npm test runs it for 10 s), once, in a run long enough
    let first: Fault | undefined =
      !nftWhy && SECONDS >= 120
        ? {
            kind: 'flapping 30.0 s (full length)',
            short: true,
            apply: async () => {
              const until = now() + 30000;
              while (now() < until) {
                fp.lab!.partition('relay-a', 'relay-b');
                await run(between(200, 500));
                fp.lab!.heal();
                await run(between(200, 500));
              }
              return 30000;
            },
          }
        : undefined;
    while (now() < end - 5000) {
      await run(between(1000, 4000)); // calm: the pair is whole again before the next fault
      const f = first ?? pick(menu)();
      first = undefined;
      events[f.kind.replace(/ [\d.]+ s.*$/, '').replace(/relay-[ab]/g, 'relay')] = (events[f.kind.replace(/ [\d.]+ s.*$/, '').replace(/relay-[ab]/g, 'relay')] ?? 0) + 1;
      say(`fault: ${f.kind}`);
      const ms = await f.apply();
      const faultEnd = now();
      const short = f.short ?? ms < PROMOTE_MS;
      let recovery: number | null = null;
      try {
        recovery = await t.recovery(faultEnd, NODES.filter((n) => fp.up(n)), 60000);
      } catch (e) {
        say(`NO RECOVERY: ${(e as Error).message}`);
      }
      records.push({ kind: f.kind, ms, recovery, short });
      say(`  healed; recovery ${recovery === null ? 'none' : `${Math.round(recovery)} ms`}${short && recovery !== null && recovery > TARGET_MS ? ` — OVER the ${TARGET_MS} ms target` : ''}`);
    }
    // the end: everything heals, the queues drain
    fp.lab?.heal();
    fp.nextHop.heal();
    await fp.sinkUp();
    for (const n of NODES) if (!fp.up(n)) await fp.start(n);
    say('all faults healed; draining');
    const r = await settle(fp, t, audit, 'chaos-net', {}, 180000);
    const shortOnes = records.filter((x) => x.short);
    const worst = (xs: FaultRecord[]) => Math.max(0, ...xs.map((x) => x.recovery ?? Infinity));
    const logged = (msg: string) => NODES.reduce((n, x) => n + fp.logged(x, msg).length, 0);
    say(`events: ${Object.entries(events).map(([k, v]) => `${k} ×${v}`).join(', ')}`);
    say(
      `relays logged: promoted ${logged('promoted')}, duplicates detected ${logged('duplicate risk: this node promoted and delivered a message its origin also finished (delivered it, or never answered its client)')}, ` +
        `doubts settled held ${logged('shadow copy confirmed after a doubt: the peer holds it')}, closed without reply ${logged('closed without a reply: the peer may hold the shadow copy and could not be asked (neither 250 nor 451 would be true)')}`,
    );
    say(
      `CHECKER | sent ${r.f.sent} | 250 ${r.f.ok250} | 4xx ${r.f.refused4xx} | no-reply ${r.f.noReply} | delivered ${r.f.delivered} | lost ${r.f.lost.length} | ` +
        `refused-but-delivered ${r.f.refusedDelivered.length} | no-reply-but-delivered ${r.f.noReplyDelivered.length} | duplicates ${r.f.duplicateDeliveries} | ` +
        `faults ${records.length} | worst recovery (faults < promoteAfterMs, ${shortOnes.length}) ${Math.round(worst(shortOnes))} ms (target ${TARGET_MS} ms) | worst recovery (all) ${Math.round(worst(records))} ms | ${audit.summary}`,
    );
    expect(r.f.lost).toEqual([]);
    expect(r.f.refusedDelivered).toEqual([]);
    expect(audit.missing).toEqual([]);
    expect(records.filter((x) => x.recovery === null).map((x) => x.kind)).toEqual([]);
    expect(shortOnes.filter((x) => x.recovery! > TARGET_MS).map((x) => `${x.kind}: ${Math.round(x.recovery!)} ms`)).toEqual([]);
  } finally {
    audit?.stop();
    await traffic?.stop();
    for (const n of paused) fp.resume(n);
    await fp.stop();
  }
}, (SECONDS + 400) * 1000);
