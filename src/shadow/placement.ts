/**
 * Placement: which peer holds a message's one shadow copy.
 *
 * - Failure domains: with `preferRemote` (the default) a copy goes to a peer in another zone
 *   when one can take it, else to one in this node's zone; `remoteOnly` never uses this
 *   node's zone (no candidate → 451); `any` ignores zones. A peer whose zone is not known
 *   (not configured and not yet announced in a heartbeat), or a node without `node.zone`,
 *   counts as "another zone": that is what a two-node config without zones was.
 * - Spread: among equal candidates, rendezvous hashing of the message id (the peer with the
 *   highest hash of id+name first, then the next): every primary spreads its copies evenly
 *   over the healthy peers, and a peer that goes down moves only its own share to the others.
 * - The order returned is the failover order: the first candidate, then the next ones, all
 *   of the preferred tier before any of the other.
 * Pure functions: the link decides who is healthy; this decides the order.
 */

export type Placement = 'preferRemote' | 'remoteOnly' | 'any';

export interface Candidate {
  name: string;
  /** the peer's failure domain, if known */
  zone?: string | undefined;
}

/** 32-bit FNV-1a with a final avalanche (murmur3's fmix32): fast, well spread, no allocation. */
export function rendezvousScore(id: string, peer: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 0x01000193);
  h = Math.imul(h ^ 0xff, 0x01000193);
  for (let i = 0; i < peer.length; i++) h = Math.imul(h ^ peer.charCodeAt(i), 0x01000193);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Whether a copy on `peer` would leave this node's failure domain. */
export function isRemote(selfZone: string | undefined, peerZone: string | undefined): boolean {
  return !selfZone || !peerZone || selfZone !== peerZone;
}

/**
 * The candidates in the order to try them for message `id`: the preferred tier (other zones,
 * unless `any`) by rendezvous score, then the rest (`preferRemote`; none with `remoteOnly`).
 */
export function rankPeers(id: string, selfZone: string | undefined, candidates: Candidate[], placement: Placement): string[] {
  const byScore = (l: Candidate[]) =>
    l
      .map((c) => ({ name: c.name, s: rendezvousScore(id, c.name) }))
      .sort((a, b) => b.s - a.s || (a.name < b.name ? -1 : 1))
      .map((c) => c.name);
  if (placement === 'any') return byScore(candidates);
  const remote = candidates.filter((c) => isRemote(selfZone, c.zone));
  if (placement === 'remoteOnly') return byScore(remote);
  const local = candidates.filter((c) => !isRemote(selfZone, c.zone));
  return [...byScore(remote), ...byScore(local)];
}
