/**
 * Placement on paper (`npm run scale-sim`, README "Scale-out: on paper, at 100 relays"):
 * N relays in Z zones, each with Q messages queued, every message's one shadow copy placed
 * by the product's own placement (src/shadow/placement.ts: preferRemote, rendezvous over
 * the healthy peers). Then one node dies, and then a whole zone. Printed per scenario:
 * where the copies are (per zone, per holder), what each holder must promote when a node
 * or zone dies (the promotion burst), how the dead node's share of new copies moves, how
 * many messages are left with a single copy, and the fixed costs of a full mesh.
 * Deterministic: message ids are made from a counter, not at random.
 */
import { rankPeers, type Placement } from '../src/shadow/placement.js';

export interface SimOptions {
  nodes: number;
  zones: number;
  /** messages queued on each node at the moment of the fault */
  queued: number;
  placement: Placement;
  heartbeatMs: number;
  /** delivery.concurrency and one delivery's duration: how long a promotion burst takes */
  concurrency: number;
  deliveryMs: number;
}

export interface Stats {
  min: number;
  mean: number;
  max: number;
  /** coefficient of variation (stddev / mean) */
  cv: number;
}

export interface SimResult {
  o: SimOptions;
  copies: number;
  /** copies whose holder is in the primary's own zone */
  sameZone: number;
  /** copies held per zone */
  perZone: Record<string, number>;
  /** copies held per node */
  held: Stats;
  oneNode: {
    dead: string;
    /** the dead node's own messages, promoted by their holders */
    promoted: number;
    /** per holder that promotes some */
    burst: Stats;
    burstHolders: number;
    /** seconds for the busiest holder to deliver its burst */
    burstSeconds: number;
    /** messages of live primaries whose only copy elsewhere was on the dead node */
    singleCopy: number;
    /** new copies: the share each live holder takes once the dead node is skipped */
    heldAfter: Stats;
    /** of the new copies, the fraction whose holder changed (only the dead node's share should) */
    moved: number;
  };
  zone: {
    dead: string;
    deadNodes: number;
    promoted: number;
    burst: Stats;
    burstSeconds: number;
    singleCopy: number;
    /** copies of live primaries now placed in their own zone (preferRemote with one other zone left) */
    sameZoneAfter: number;
    heldAfter: Stats;
  };
  mesh: { sessions: number; heartbeatsPerSecond: number; perNodeHeartbeatsPerSecond: number };
}

const stats = (xs: number[]): Stats => {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const sd = Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / xs.length);
  return { min: Math.min(...xs), mean, max: Math.max(...xs), cv: mean ? sd / mean : 0 };
};

export function simulate(o: SimOptions): SimResult {
  const names = Array.from({ length: o.nodes }, (_, i) => `relay-${i}`);
  const zoneOf = new Map(names.map((n, i) => [n, `zone-${i % o.zones}`]));
  const ids = (origin: string) => Array.from({ length: o.queued }, (_, k) => `${origin}M${k.toString(36).padStart(6, '0')}`);
  const place = (origin: string, id: string, alive: Set<string>) =>
    rankPeers(
      id,
      zoneOf.get(origin),
      names.filter((n) => n !== origin && alive.has(n)).map((n) => ({ name: n, zone: zoneOf.get(n) })),
      o.placement,
    )[0];
  const all = new Set(names);
  // holder of every queued message, before any fault
  const holder = new Map<string, Map<string, string>>();
  for (const origin of names) {
    const m = new Map<string, string>();
    for (const id of ids(origin)) m.set(id, place(origin, id, all)!);
    holder.set(origin, m);
  }
  const heldBy = (alive: Set<string>, pick: (origin: string, id: string) => string | undefined) => {
    const c = new Map<string, number>([...alive].map((n) => [n, 0]));
    for (const origin of alive) for (const id of ids(origin)) {
      const h = pick(origin, id);
      if (h) c.set(h, (c.get(h) ?? 0) + 1);
    }
    return c;
  };
  const before = heldBy(all, (origin, id) => holder.get(origin)!.get(id));
  const perZone: Record<string, number> = {};
  let sameZone = 0;
  for (const origin of names) {
    for (const h of holder.get(origin)!.values()) {
      perZone[zoneOf.get(h)!] = (perZone[zoneOf.get(h)!] ?? 0) + 1;
      if (zoneOf.get(h) === zoneOf.get(origin)) sameZone++;
    }
  }
  const burstOf = (dead: Set<string>) => {
    const c = new Map<string, number>();
    for (const origin of dead) for (const h of holder.get(origin)!.values()) if (!dead.has(h)) c.set(h, (c.get(h) ?? 0) + 1);
    return c;
  };
  const singleCopies = (dead: Set<string>) => {
    let n = 0;
    for (const origin of names) if (!dead.has(origin)) for (const h of holder.get(origin)!.values()) if (dead.has(h)) n++;
    return n;
  };
  const seconds = (n: number) => (n / o.concurrency) * (o.deliveryMs / 1000);

  // one node dies
  const deadNode = names[0]!;
  const deadOne = new Set([deadNode]);
  const aliveOne = new Set(names.filter((n) => n !== deadNode));
  const b1 = burstOf(deadOne);
  let moved = 0;
  let placed = 0;
  for (const origin of aliveOne) for (const id of ids(origin)) {
    placed++;
    if (place(origin, id, aliveOne) !== holder.get(origin)!.get(id)) moved++;
  }
  const after1 = heldBy(aliveOne, (origin, id) => place(origin, id, aliveOne));

  // a whole zone dies
  const deadZone = 'zone-0';
  const deadZ = new Set(names.filter((n) => zoneOf.get(n) === deadZone));
  const aliveZ = new Set(names.filter((n) => !deadZ.has(n)));
  const bz = burstOf(deadZ);
  let sameZoneAfter = 0;
  const afterZ = heldBy(aliveZ, (origin, id) => {
    const h = place(origin, id, aliveZ);
    if (h && zoneOf.get(h) === zoneOf.get(origin)) sameZoneAfter++;
    return h;
  });

  return {
    o,
    copies: o.nodes * o.queued,
    sameZone,
    perZone,
    held: stats([...before.values()]),
    oneNode: {
      dead: deadNode,
      promoted: o.queued,
      burst: stats([...b1.values()]),
      burstHolders: b1.size,
      burstSeconds: seconds(Math.max(...b1.values())),
      singleCopy: singleCopies(deadOne),
      heldAfter: stats([...after1.values()]),
      moved: moved / placed,
    },
    zone: {
      dead: deadZone,
      deadNodes: deadZ.size,
      promoted: deadZ.size * o.queued,
      burst: stats([...bz.values()]),
      burstSeconds: seconds(Math.max(...bz.values())),
      singleCopy: singleCopies(deadZ),
      sameZoneAfter,
      heldAfter: stats([...afterZ.values()]),
    },
    mesh: {
      sessions: o.nodes * (o.nodes - 1),
      heartbeatsPerSecond: (o.nodes * (o.nodes - 1) * 1000) / o.heartbeatMs,
      perNodeHeartbeatsPerSecond: ((o.nodes - 1) * 1000) / o.heartbeatMs,
    },
  };
}

const f = (s: Stats) => `${s.min}–${s.max} (mean ${s.mean.toFixed(1)}, CV ${(s.cv * 100).toFixed(1)} %)`;

export function report(r: SimResult): string {
  const { o } = r;
  const pct = (n: number) => `${((100 * n) / r.copies).toFixed(1)} %`;
  return [
    `${o.nodes} relays in ${o.zones} zones, ${o.queued} messages queued on each (${r.copies} copies), placement ${o.placement}`,
    '',
    '| scenario | figure |',
    '|---|---|',
    `| healthy | copies in the primary's own zone: ${r.sameZone}; per holder zone: ${Object.entries(r.perZone).sort().map(([z, n]) => `${z} ${n}`).join(', ')}; copies per holder ${f(r.held)} |`,
    `| ${r.oneNode.dead} dies | its ${r.oneNode.promoted} messages are promoted by ${r.oneNode.burstHolders} holders, ${f(r.oneNode.burst)} each; the busiest delivers its share in ${r.oneNode.burstSeconds.toFixed(1)} s (concurrency ${o.concurrency}, ${o.deliveryMs} ms a delivery); ${r.oneNode.singleCopy} messages of live primaries (${pct(r.oneNode.singleCopy)}) are left with one copy; new copies per holder ${f(r.oneNode.heldAfter)}, ${(r.oneNode.moved * 100).toFixed(2)} % of placements moved (≈ 1/${o.nodes - 1}: only the dead node's share) |`,
    `| ${r.zone.dead} dies (${r.zone.deadNodes} nodes) | ${r.zone.promoted} messages promoted, ${f(r.zone.burst)} per holder, the busiest in ${r.zone.burstSeconds.toFixed(1)} s; ${r.zone.singleCopy} messages of live primaries (${pct(r.zone.singleCopy)}) left with one copy; new copies per holder ${f(r.zone.heldAfter)}, in the primary's own zone ${r.zone.sameZoneAfter} |`,
    `| always | ${r.mesh.sessions} replication sessions (each node ${o.nodes - 1}); heartbeats ${r.mesh.heartbeatsPerSecond.toFixed(0)}/s in all, ${r.mesh.perNodeHeartbeatsPerSecond.toFixed(1)}/s sent by each node (heartbeatMs ${o.heartbeatMs}) |`,
  ].join('\n');
}

export const DEFAULTS: SimOptions = { nodes: 100, zones: 3, queued: 1000, placement: 'preferRemote', heartbeatMs: 5000, concurrency: 10, deliveryMs: 50 };
