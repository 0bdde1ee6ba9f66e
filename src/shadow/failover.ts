/**
 * Failover on the replication link: promotion, reconcile, orphan and age checks.
 *
 * Every node is both a primary (for what it accepted) and a shadow holder (for its peers).
 *
 * As a shadow holder, for each origin X (every configured peer, and any other origin whose
 * copies this node still holds — with N relays each holder watches the origins of the
 * copies it holds, independently of the others):
 * - Promotion: when X has been unreachable for `promoteAfterMs` (since the last successful
 *   exchange in either direction, or since this node started if X was never seen), X's
 *   shadow copies become this node's queued primaries (remaining recipients only) and are
 *   recorded in the spool's `promoted` table.
 * - Lost disk: each spool has an incarnation id. When X shows up with an incarnation other
 *   than the one its copies were made under, X lost its spool: those copies are promoted
 *   at once.
 * - Orphans: every `reconcileIntervalMs`, copies older than a grace period (2 × timeoutMs)
 *   from X's current incarnation are checked against what X still holds (`/v1/known`);
 *   copies X does not know (it answered 451, or dropped an unacknowledged message at
 *   restart) are dropped, never delivered.
 * - Age: copies older than `maxShadowAgeMs` are dropped with a warning.
 * - Reconcile answers: X asks what was promoted from it; X confirms what it dropped.
 *
 * As a primary, for each peer P: after this node starts and after every down→up transition
 * of P, it first asks P what P promoted from it and drops those from its own queue. Until
 * that succeeds, messages shadowed on P wait (are not delivered) — for at most
 * `promoteAfterMs`: if P cannot be reached for that long it is either dead (and promotes
 * nothing) or cut off (and the pair accepts duplicates, see README "Failure handling").
 */
import type { Logger } from 'pino';
import type { FailoverSpool, DiscardResult } from '../spool/index.js';
import type { PeerClient } from './client.js';
import type { DiscardBody } from './protocol.js';
import { noMetrics, type RelayMetrics } from '../base/metrics.js';
import { monotonicMs } from '../base/clock.js';

export interface FailoverOptions {
  nodeName: string;
  spool: FailoverSpool;
  log: Logger;
  /** the configured peers' clients (the list changes on reload) */
  clients: () => PeerClient[];
  /** the link's deadline per request (a reload may change it) */
  timeoutMs: () => number;
  promoteAfterMs: number;
  maxShadowAgeMs: number;
  reconcileIntervalMs: number;
  /** monotonic time of the last successful exchange with a peer (either direction), or null */
  lastContact: (peer: string) => number | null;
  /** this node's requests to the peer succeed (the link, from this side) */
  isUp: (peer: string) => boolean;
  /** shadow copies became deliverable here */
  onPromoted: () => void;
  /** a reconcile ended a wait on delivery */
  onReleased: () => void;
  metrics?: FailoverMetrics;
}

export type FailoverMetrics = Pick<RelayMetrics, 'promoted' | 'promotedCancelled' | 'duplicateRisk' | 'shadowsDropped' | 'reconciled'>;

/** Promotion records are kept this long after the fact if the origin never reconciles. */
const PROMOTED_RETENTION_MS = 30 * 86400_000;
const VERIFY_BATCH = 500;

interface PrimarySide {
  /** a reconcile with this peer is owed before delivering what it holds copies of */
  needed: boolean;
  /** monotonic time the wait began */
  since: number;
  running: boolean;
}

export class Failover {
  /** monotonic: durations must survive a wall-clock step */
  private readonly startedAt = monotonicMs();
  private readonly incarnationOf = new Map<string, string>();
  private readonly promoting = new Set<string>();
  private readonly primary = new Map<string, PrimarySide>();
  private readonly cursor = new Map<string, { receivedAt: number; id: string }>();
  private lastSweep = -Infinity;
  private sweeping = false;
  private stopped = false;

  private readonly metrics: FailoverMetrics;

  constructor(private readonly o: FailoverOptions) {
    this.metrics = o.metrics ?? noMetrics;
    for (const c of o.clients()) this.primary.set(c.name, { needed: true, since: this.startedAt, running: false });
  }

  /** A peer added by reload: reconcile with it before delivering what it may hold. */
  addPeer(name: string): void {
    if (!this.primary.has(name)) this.primary.set(name, { needed: true, since: monotonicMs(), running: false });
  }

  removePeer(name: string): void {
    this.primary.delete(name);
    this.cursor.delete(name);
  }

  private client(name: string): PeerClient | undefined {
    return this.o.clients().find((c) => c.name === name);
  }

  /**
   * Every origin to watch as a shadow holder: the configured peers and any other origin this
   * node still holds copies of (a peer removed from the list, a node that left).
   */
  private origins(): string[] {
    const names = new Set(this.o.clients().map((c) => c.name));
    for (const o of this.o.spool.shadowOrigins()) names.add(o);
    return [...names];
  }

  stop(): void {
    this.stopped = true;
  }

  // ---- shadow-holder side -----------------------------------------------------------

  /** A peer named its incarnation: copies from any other incarnation are promoted now. */
  observeIncarnation(peer: string, incarnation: string): void {
    if (this.incarnationOf.get(peer) === incarnation) return;
    this.incarnationOf.set(peer, incarnation);
    const stale = this.o.spool.shadowIncarnations(peer).filter((i) => i !== incarnation);
    if (stale.length === 0) return;
    this.o.log.warn({ peer, incarnation, stale }, 'peer came back with a new spool (incarnation changed): promoting its old shadow copies');
    void this.promote(peer, 'origin lost its spool', incarnation);
  }

  /**
   * Periodic: promotion of unreachable peers (timed on the monotonic clock `mono`), orphan
   * check and maximum age (against the wall-clock arrival dates stored with the copies).
   */
  async tick(now = Date.now(), mono = monotonicMs()): Promise<void> {
    if (this.stopped) return;
    for (const origin of this.origins()) {
      const since = this.o.lastContact(origin) ?? this.startedAt;
      if (mono - since >= this.o.promoteAfterMs && !this.promoting.has(origin) && this.o.spool.hasShadowsFrom(origin)) {
        this.o.log.warn({ peer: origin, unreachableMs: Math.round(mono - since) }, 'peer unreachable for promoteAfterMs: promoting its shadow copies');
        await this.promote(origin, 'origin unreachable');
      }
    }
    if (mono - this.lastSweep >= this.o.reconcileIntervalMs && !this.sweeping) {
      this.lastSweep = mono;
      this.sweeping = true;
      try {
        await this.expireShadows(now);
        await this.checkOrphans(now);
        await this.o.spool.prunePromoted(now - PROMOTED_RETENTION_MS);
      } finally {
        this.sweeping = false;
      }
    }
  }

  private async promote(peer: string, reason: string, exceptIncarnation?: string): Promise<void> {
    if (this.promoting.has(peer)) return;
    this.promoting.add(peer);
    try {
      const r = await this.o.spool.promoteShadows(peer, Date.now(), exceptIncarnation);
      if (r.promoted.length) this.metrics.promoted(peer, r.promoted.length);
      for (const m of r.promoted) this.o.log.warn({ id: m.id, origin: peer, reason, pending: m.pending }, 'promoted');
      for (const id of r.emptied) this.o.log.info({ id, origin: peer }, 'shadow dropped: no recipient left to deliver');
      if (r.promoted.length) this.o.onPromoted();
    } catch (err) {
      this.o.log.error({ peer, err: (err as Error).message }, 'promotion failed (retried on the next tick)');
    } finally {
      this.promoting.delete(peer);
    }
  }

  private async expireShadows(now: number): Promise<void> {
    for (const origin of this.origins()) {
      const old = this.o.spool.oldShadows(origin, now - this.o.maxShadowAgeMs, 1000);
      if (old.length === 0) continue;
      const dropped = await this.o.spool.dropShadows(origin, old.map((r) => r.id));
      if (dropped.length) this.metrics.shadowsDropped('expired', dropped.length);
      for (const id of dropped) {
        this.o.log.warn({ id, origin, maxShadowAgeMs: this.o.maxShadowAgeMs }, 'shadow expired: dropped a copy older than maxShadowAgeMs');
      }
    }
  }

  /** Drops copies whose live primary (same incarnation) no longer holds the message. */
  private async checkOrphans(now: number): Promise<void> {
    for (const c of this.o.clients()) {
      const inc = this.incarnationOf.get(c.name);
      if (!inc || !this.o.isUp(c.name)) continue;
      const after = this.cursor.get(c.name) ?? { receivedAt: -1, id: '' };
      const refs = this.o.spool.shadowsToVerify(c.name, inc, now - 2 * this.o.timeoutMs(), after, VERIFY_BATCH);
      if (refs.length < VERIFY_BATCH) this.cursor.delete(c.name);
      else this.cursor.set(c.name, { receivedAt: refs.at(-1)!.receivedAt, id: refs.at(-1)!.id });
      if (refs.length === 0) continue;
      let known: Set<string>;
      try {
        known = new Set(await c.known(refs.map((r) => r.id), this.o.timeoutMs()));
      } catch (err) {
        this.o.log.debug({ peer: c.name, err: (err as Error).message }, 'orphan check failed (retried later)');
        continue;
      }
      // the answer is about the incarnation we asked; a change since then voids it
      if (this.incarnationOf.get(c.name) !== inc) continue;
      const unknown = refs.filter((r) => !known.has(r.id)).map((r) => r.id);
      if (unknown.length === 0) continue;
      const dropped = await this.o.spool.dropShadows(c.name, unknown);
      if (dropped.length) this.metrics.shadowsDropped('orphan', dropped.length);
      for (const id of dropped) this.o.log.warn({ id, origin: c.name }, 'orphan shadow dropped: its primary does not hold the message');
    }
  }

  /** A discard from `peer`: purge copies; cancel or count what this node had promoted. */
  async applyDiscard(peer: string, body: DiscardBody): Promise<number> {
    let duplicates: string[] = [];
    if (body.rcpts?.length) {
      const r = await this.o.spool.shadowRecipientsDone(peer, body.rcpts);
      duplicates = r.duplicates;
      for (const d of body.rcpts) this.o.log.info({ id: d.id, peer, idx: d.idx }, 'shadow recipients done by origin');
    }
    let res: DiscardResult = { purged: 0, cancelled: [], duplicates: [] };
    if (body.ids.length) res = await this.o.spool.purgeShadows(peer, body.ids);
    for (const id of body.ids) this.o.log.info({ id, peer }, 'shadow discarded');
    for (const id of res.cancelled) this.o.log.warn({ id, origin: peer }, 'promoted copy cancelled: its origin delivered it');
    if (res.cancelled.length) this.metrics.promotedCancelled(res.cancelled.length);
    const dups = [...res.duplicates, ...duplicates];
    if (dups.length) this.metrics.duplicateRisk('promoted_after_delivery', dups.length);
    for (const id of dups) {
      this.o.log.warn({ id, origin: peer }, 'duplicate risk: this node promoted and delivered a message its origin also finished (delivered it, or never answered its client)');
    }
    return res.purged;
  }

  /** `peer` asks what this node promoted from it. */
  async answerReconcile(peer: string, incarnation: string): Promise<string[]> {
    const ids = await this.o.spool.promotedFor(peer, incarnation);
    this.o.log.info({ peer, promoted: ids.length }, 'reconcile: told the peer what was promoted from it');
    return ids;
  }

  async reconcileDone(peer: string, ids: string[]): Promise<number> {
    return this.o.spool.forgetPromoted(peer, ids);
  }

  /** `peer` asks which of these it holds copies of are still ours with our shadow on it. */
  known(peer: string, ids: string[]): string[] {
    return this.o.spool.knownPrimaries(ids, peer);
  }

  // ---- primary side -----------------------------------------------------------------

  /** `peer` is reachable again (or for the first time): reconcile before delivering more. */
  peerUp(peer: string): void {
    const p = this.primary.get(peer);
    if (!p) return;
    if (!p.needed) {
      p.needed = true;
      p.since = monotonicMs();
    }
    void this.reconcileWith(peer);
  }

  /** Retry owed reconciles (called on every heartbeat round). */
  retryReconciles(): void {
    for (const [peer, p] of this.primary) if (p.needed && this.o.isUp(peer)) void this.reconcileWith(peer);
  }

  private async reconcileWith(peer: string): Promise<void> {
    const p = this.primary.get(peer);
    const client = this.client(peer);
    if (!p || !client || !p.needed || p.running || this.stopped) return;
    p.running = true;
    const started = p.since;
    try {
      const promoted = await client.reconcile(this.o.spool.incarnation, this.o.timeoutMs());
      const dropped = promoted.length ? await this.o.spool.dropPromotedByPeer(peer, promoted) : [];
      for (const id of dropped) this.o.log.warn({ id, peer }, 'dropped: the peer promoted and delivers this message');
      // only what we dropped is settled; an id we no longer hold was delivered here, and
      // our discard for it (still owed) tells the peer, which counts the duplicate
      if (dropped.length) await client.reconcileDone(dropped, this.o.timeoutMs());
      this.metrics.reconciled(peer, dropped.length);
      this.o.log.info({ peer, promotedByPeer: promoted.length, dropped: dropped.length }, 'reconciled with peer');
      // a new down→up transition while we asked restarts the wait
      if (p.since === started) p.needed = false;
      this.o.onReleased();
    } catch (err) {
      this.o.log.debug({ peer, err: (err as Error).message }, 'reconcile failed (retried)');
    } finally {
      p.running = false;
    }
  }

  /**
   * Peers this node must reconcile with before delivering what they hold copies of. The wait
   * lasts at most promoteAfterMs (see the summary at the top).
   */
  awaitingReconcile(now = monotonicMs()): string[] {
    const waiting: string[] = [];
    for (const [peer, p] of this.primary) {
      if (!p.needed) continue;
      if (now - p.since < this.o.promoteAfterMs) waiting.push(peer);
      else {
        p.needed = false;
        this.metrics.duplicateRisk('delivered_without_reconcile');
        this.o.log.warn({ peer, heldMs: Math.round(now - p.since) }, 'no reconcile with the peer within promoteAfterMs: delivering anyway (duplicate risk if it promoted)');
      }
    }
    return waiting;
  }
}
