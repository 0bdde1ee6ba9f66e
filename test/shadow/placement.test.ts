/**
 * Placement on its own (src/shadow/placement.ts) and the 100-relay simulation that uses it
 * (tools/scale-sim.ts, here at a size that runs in a second).
 */
import { describe, it, expect } from 'vitest';
import { rankPeers, rendezvousScore, isRemote } from '../../src/shadow/placement.js';
import { simulate } from '../../tools/scale-sim.js';

const ids = (n: number) => Array.from({ length: n }, (_, i) => `ID${i.toString(36).padStart(8, '0')}`);
const peers = [
  { name: 'b1', zone: 'b' },
  { name: 'b2', zone: 'b' },
  { name: 'a2', zone: 'a' },
  { name: 'c1', zone: 'c' },
];

describe('placement', () => {
  it('preferRemote: every other zone before this node\'s own; remoteOnly never this zone; any ignores zones', () => {
    for (const id of ids(200)) {
      const r = rankPeers(id, 'a', peers, 'preferRemote');
      expect(r.at(-1)).toBe('a2');
      expect(r).toHaveLength(4);
      expect(rankPeers(id, 'a', peers, 'remoteOnly')).not.toContain('a2');
      expect(rankPeers(id, 'a', peers, 'any').sort()).toEqual(['a2', 'b1', 'b2', 'c1']);
    }
    // only the own zone left: preferRemote uses it, remoteOnly has nobody (→ 451)
    expect(rankPeers('X1234567', 'a', [{ name: 'a2', zone: 'a' }], 'preferRemote')).toEqual(['a2']);
    expect(rankPeers('X1234567', 'a', [{ name: 'a2', zone: 'a' }], 'remoteOnly')).toEqual([]);
    // an unknown zone (not configured, not yet announced), or no node.zone, counts as remote
    expect(isRemote('a', undefined)).toBe(true);
    expect(isRemote(undefined, 'a')).toBe(true);
    expect(isRemote('a', 'a')).toBe(false);
  });

  it('rendezvous spreads copies evenly over equal candidates, and losing one moves only its share', () => {
    const three = [{ name: 'p1' }, { name: 'p2' }, { name: 'p3' }];
    const count = new Map<string, number>();
    let moved = 0;
    for (const id of ids(6000)) {
      const first = rankPeers(id, undefined, three, 'any')[0]!;
      count.set(first, (count.get(first) ?? 0) + 1);
      const without = rankPeers(id, undefined, three.filter((p) => p.name !== 'p3'), 'any')[0]!;
      if (first !== 'p3' && without !== first) moved++;
    }
    for (const n of count.values()) expect(Math.abs(n - 2000)).toBeLessThan(200);
    expect(moved).toBe(0);
    expect(rendezvousScore('a', 'b')).toBe(rendezvousScore('a', 'b'));
    expect(rendezvousScore('a', 'b')).not.toBe(rendezvousScore('a', 'c'));
  });

  it('the simulation: no copy in its own zone, a dead node\'s messages spread over the other zones\' holders, a lost zone leaves about half of the rest with one copy', () => {
    const r = simulate({ nodes: 12, zones: 3, queued: 300, placement: 'preferRemote', heartbeatMs: 5000, concurrency: 10, deliveryMs: 50 });
    expect(r.sameZone).toBe(0);
    expect(r.oneNode.burstHolders).toBe(8);
    expect(r.oneNode.moved).toBeLessThan(0.15);
    expect(r.zone.deadNodes).toBe(4);
    expect(r.zone.sameZoneAfter).toBe(0);
    expect(r.zone.singleCopy / (8 * 300)).toBeGreaterThan(0.4);
    expect(r.zone.singleCopy / (8 * 300)).toBeLessThan(0.6);
  });
});
