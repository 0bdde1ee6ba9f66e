/**
 * shadow — the replication link between a primary and its shadow peer(s).
 *
 * Implementation summary:
 * - Transport: HTTP/2 over mutual TLS (Node core). One warm session per peer, requests
 *   multiplexed, TCP_NODELAY on every socket. Both ends verify against `shadow.tls.ca` and
 *   check that the other's certificate names a configured peer.
 * - replicate(): puts the shadow copy on one peer, chosen per message (placement.ts: another
 *   zone first, rendezvous hashing of the id over the peers this node can replicate to now —
 *   the link's own health: up, spool not full, not draining, no put stalled on it). Within
 *   one `timeoutMs` budget: a peer that fails fast (refused, reconnecting) gives way to the
 *   next candidate at once; one that has not answered after half the budget gets the next
 *   candidate started beside it (a hedge), first confirmation wins. A copy that may have
 *   been left on a loser is owed a discard. The caller answers 250 only after a confirmation
 *   and records the winner as the message's shadow peer: its discards, recipient discards
 *   and reconcile go there.
 * - Discards: the spool's outbox holds discards owed to each peer; a pump sends them in
 *   batches and deletes them only once the peer confirms (retried until then).
 * - Discards are whole-message (every recipient done) or recipient-level (some done, so a
 *   promotion delivers only the rest).
 * - Heartbeats every `heartbeatMs` keep the peer's liveness and incarnation known.
 * - Two notions of a live peer, kept apart: the *link* is up only while this node's own
 *   requests to the peer succeed (client.ts: dead sessions are replaced, reconnects back off)
 *   — that is what replication, readiness and reconcile go by; *contact* is any successful
 *   exchange in either direction — that is what promotion timing goes by (a peer that still
 *   reaches us is alive, even if we cannot reach it).
 * - Promotion, reconcile, orphan and age checks live in failover.ts (summary there; README
 *   "Failure handling"), per origin: every origin this node holds copies of is watched.
 * - The peer list is live (`setPeers`, on reload): a node added starts taking shadows.
 * - Drain (drain.ts): `transfer` hands a primary to a peer, `reshadow` asks an origin to
 *   shadow its copies elsewhere; the answering side is `takeTransfer` / `answerReshadow`.
 */
import type { Logger } from 'pino';
import type { DrainSpool, MessageWithBody } from '../spool/index.js';
import { PeerClient, PeerError } from './client.js';
import { ShadowServer, type TlsFiles, type PeerInfo } from './server.js';
import { rankPeers, type Placement } from './placement.js';
import type { PutMeta, TransferMeta } from './protocol.js';
import { Failover, type FailoverMetrics } from './failover.js';
import { noMetrics, type RelayMetrics } from '../base/metrics.js';
import type { HostPort } from '../base/net.js';
import type { Envelope } from '../base/message.js';
import { monotonicMs } from '../base/clock.js';
import type { Body } from '../base/buffers.js';

export { PeerError } from './client.js';
export type { TlsFiles } from './server.js';
export type { Placement } from './placement.js';

export interface PeerAddress {
  name: string;
  address: HostPort;
  /** configured failure domain; else the one the peer announces */
  zone?: string | undefined;
}

/** What a config reload may change on a running link. */
export interface ShadowLinkSettings {
  tls: TlsFiles;
  timeoutMs: number;
  peers: PeerAddress[];
  placement: Placement;
}

export interface ShadowLinkOptions extends ShadowLinkSettings {
  nodeName: string;
  /** this node's failure domain (node.zone) */
  zone?: string | undefined;
  listen: HostPort;
  heartbeatMs: number;
  promoteAfterMs: number;
  maxShadowAgeMs: number;
  /** delivery.retry.maxAgeMs: shadow copies should outlive their primary's retries (warned otherwise) */
  retryMaxAgeMs: number;
  reconcileIntervalMs: number;
  maxMessageSize: number;
  spool: DrainSpool;
  log: Logger;
  /** shadow copies were promoted: there is new work for the delivery worker */
  onPromoted?: () => void;
  /** a reconcile ended a wait on delivery */
  onReleased?: () => void;
  /** promotion and reconcile report promotions and duplicate-risk events here */
  metrics?: ShadowMetrics;
}

type ShadowMetrics = FailoverMetrics & Pick<RelayMetrics, 'replicated' | 'replicationFailed' | 'discardsConfirmed' | 'linkReconnect'>;

export interface PeerStatus {
  name: string;
  /** this node's requests to the peer succeed (the link, seen from this side) */
  up: boolean;
  /** 'up' | 'connecting' | 'down', from this side */
  link: 'up' | 'connecting' | 'down';
  /** wall time of the last successful exchange in either direction */
  lastSeen: number | null;
  /** wall time of the last shadow copy the peer confirmed */
  lastPut: number | null;
  /** round trip of the last answered HTTP/2 PING or heartbeat, ms */
  rttMs: number | null;
  incarnation: string | null;
  lastError: string | null;
  /** the peer's spool refused the last copy for lack of room (its answer 507, or its heartbeat) */
  spoolFull: boolean;
  /** its failure domain (configured, or announced in its heartbeats) */
  zone: string | null;
  /** it said it is draining: it takes no new copies */
  draining: boolean;
}

/** How a put whose outcome was unknown was settled with the peer(s). */
export type Resolution = { held: string } | 'absent' | 'unknown';

interface PeerState {
  name: string;
  lastSeen: number | null;
  /** monotonic time of the last contact (promotion timing) */
  lastContact: number | null;
  lastPut: number | null;
  rttMs: number | null;
  incarnation: string | null;
  lastError: string | null;
  spoolFull: boolean;
  /** announced in its heartbeats */
  zone: string | null;
  draining: boolean;
  /** monotonic start times of puts to it still unanswered */
  inflight: Set<number>;
  /** monotonic time of its last answer to a put */
  lastAnswer: number;
}

/** A copy on a peer that could not be made (the link's own words), and where it may linger. */
export type ReplicationError = Error & { maybeStoredOn?: string[]; triedOn?: string[] };

export interface ReplicateOptions {
  /** peers that must not hold this copy (drain: the node leaving, the copy's old holder) */
  exclude?: string[];
  /** recipients already delivered (a copy made again for a partly delivered message) */
  done?: number[];
}

const DISCARD_BATCH = 500;
/** ids per resolve request after a restart (the server takes up to 10000) */
const RESOLVE_BATCH = 1000;
const DISCARD_INTERVAL_MS = 1000;
/** how long a pump request waits for more discards to join it */
const DISCARD_DELAY_MS = 50;

export class ShadowLink {
  private readonly failover: Failover;
  private readonly metrics: ShadowMetrics;
  private readonly server: ShadowServer;
  private readonly clients = new Map<string, PeerClient>();
  private readonly status = new Map<string, PeerState>();
  private draining = false;
  private hbTimer: NodeJS.Timeout | undefined;
  private discardTimer: NodeJS.Timeout | undefined;
  private tickTimer: NodeJS.Timeout | undefined;
  private ticking = false;
  private discardBusy = false;
  private discardSoon: NodeJS.Timeout | undefined;
  private discardAgain = false;
  private stopped = false;
  /** stopping: doubtful copies are no longer asked about (their clients get no reply) */
  private doubtsEnded = false;

  constructor(private readonly o: ShadowLinkOptions) {
    this.metrics = o.metrics ?? noMetrics;
    if (o.maxShadowAgeMs < o.retryMaxAgeMs) {
      // a copy dropped while its primary still retries is lost if that primary then dies
      o.log.warn(
        { maxShadowAgeMs: o.maxShadowAgeMs, maxAgeMs: o.retryMaxAgeMs },
        'shadow.maxShadowAgeMs is shorter than delivery.retry.maxAgeMs: a peer drops copies its primary still retries',
      );
    }
    this.server = new ShadowServer({
      nodeName: o.nodeName,
      zone: o.zone,
      peerNames: o.peers.map((p) => p.name),
      tls: o.tls,
      // the envelope meta rides along with the message bytes
      maxBodyBytes: o.maxMessageSize + 1024 * 1024,
      spool: o.spool,
      log: o.log,
      hooks: {
        contact: (peer, incarnation, info) => this.contact(peer, incarnation, info),
        discard: (peer, body) => this.failover.applyDiscard(peer, body),
        reconcile: (peer, incarnation) => this.failover.answerReconcile(peer, incarnation),
        reconcileDone: (peer, ids) => this.failover.reconcileDone(peer, ids),
        known: (peer, ids) => this.failover.known(peer, ids),
        draining: () => this.draining,
        transfer: (peer, id, meta, raw) => this.takeTransfer(peer, id, meta, raw),
        reshadow: (peer, ids) => this.answerReshadow(peer, ids),
      },
    });
    for (const p of o.peers) this.addPeer(p);
    this.failover = new Failover({
      nodeName: o.nodeName,
      spool: o.spool,
      log: o.log,
      clients: () => [...this.clients.values()],
      timeoutMs: () => this.o.timeoutMs,
      promoteAfterMs: o.promoteAfterMs,
      maxShadowAgeMs: o.maxShadowAgeMs,
      reconcileIntervalMs: o.reconcileIntervalMs,
      lastContact: (peer) => this.status.get(peer)?.lastContact ?? null,
      isUp: (peer) => this.isUp(peer),
      onPromoted: () => o.onPromoted?.(),
      onReleased: () => o.onReleased?.(),
      metrics: this.metrics,
    });
  }

  private addPeer(p: PeerAddress): PeerClient {
    const o = this.o;
    this.status.set(p.name, {
      name: p.name,
      lastSeen: null,
      lastContact: null,
      lastPut: null,
      rttMs: null,
      incarnation: null,
      lastError: null,
      spoolFull: false,
      zone: null,
      draining: false,
      inflight: new Set(),
      lastAnswer: 0,
    });
    const client = new PeerClient({
      name: p.name,
      host: p.address.host,
      port: p.address.port,
      tls: o.tls,
      // a handshake takes milliseconds; waiting the whole request deadline for one that
      // stalled would delay recovery after a silent fault
      connectTimeoutMs: Math.min(o.timeoutMs, Math.max(1000, o.heartbeatMs)),
      pingIntervalMs: o.heartbeatMs,
      pingTimeoutMs: o.timeoutMs,
      backoffMs: { initialMs: 100, maxMs: Math.min(1000, o.heartbeatMs) },
      events: {
        connected: (reconnect) => {
          if (reconnect) this.metrics.linkReconnect(p.name);
          this.o.log.debug({ peer: p.name, reconnect }, 'shadow link session established');
        },
        up: () => this.linkUp(p.name),
        down: (reason) => this.linkDown(p.name, reason),
        pinged: (ms) => {
          const st = this.status.get(p.name);
          if (st) st.rttMs = ms;
        },
      },
    });
    this.clients.set(p.name, client);
    return client;
  }

  /**
   * Live change of the peer list (reload): new peers get a client (and take copies once
   * their link is up), removed ones are closed. A removed peer's copies here stay watched as
   * an origin (failover.ts); copies of ours it holds get no more discards — drain a node
   * before removing it.
   */
  private setPeers(peers: PeerAddress[]): { added: string[]; removed: string[] } {
    const want = new Map(peers.map((p) => [p.name, p]));
    const added: string[] = [];
    const removed: string[] = [];
    const same = (a: HostPort | undefined, b: HostPort) => a?.host === b.host && a.port === b.port;
    for (const [name, c] of this.clients) {
      const p = want.get(name);
      // a changed address is a new client
      if (p && same(this.o.peers.find((x) => x.name === name)?.address, p.address)) continue;
      c.close();
      this.clients.delete(name);
      this.status.delete(name);
      if (!p) removed.push(name);
    }
    for (const p of peers) {
      if (this.clients.has(p.name)) continue;
      this.addPeer(p);
      if (!this.o.peers.some((x) => x.name === p.name)) added.push(p.name);
      this.failover.addPeer(p.name);
    }
    for (const name of removed) this.failover.removePeer(name);
    this.server.setPeerNames(peers.map((p) => p.name));
    this.o.peers = peers;
    if (added.length || removed.length) this.o.log.info({ added, removed }, 'shadow peers changed');
    if (!this.stopped && added.length) void this.heartbeatAll();
    return { added, removed };
  }

  async start(): Promise<HostPort> {
    const addr = await this.server.listen(this.o.listen.host, this.o.listen.port);
    this.hbTimer = setInterval(() => void this.heartbeatAll(), this.o.heartbeatMs);
    this.hbTimer.unref();
    this.discardTimer = setInterval(() => this.pumpDiscards(), DISCARD_INTERVAL_MS);
    this.discardTimer.unref();
    // promotion precision is one tick; a second is plenty against promoteAfterMs
    this.tickTimer = setInterval(() => void this.tick(), Math.min(this.o.heartbeatMs, 1000));
    this.tickTimer.unref();
    void this.heartbeatAll();
    return addr;
  }

  private async tick(): Promise<void> {
    if (this.ticking || this.stopped) return;
    this.ticking = true;
    try {
      await this.failover.tick();
    } catch (err) {
      this.o.log.error({ err: (err as Error).message }, 'failover check failed (retried on the next tick)');
    } finally {
      this.ticking = false;
    }
  }

  /** A successful exchange in either direction: the peer is alive (promotion timing). */
  private contact(peer: string, incarnation: string | null, info?: PeerInfo): void {
    const s = this.status.get(peer);
    if (!s) return;
    s.lastSeen = Date.now();
    s.lastContact = monotonicMs();
    if (info) {
      if (info.zone !== undefined) s.zone = info.zone || null;
      if (info.draining !== undefined) s.draining = info.draining;
    }
    if (incarnation) {
      s.incarnation = incarnation;
      try {
        this.failover.observeIncarnation(peer, incarnation);
      } catch (err) {
        this.o.log.error({ peer, err: (err as Error).message }, 'incarnation check failed');
      }
    }
  }

  /** This node's requests reach the peer again (the client saw the transition). */
  private linkUp(peer: string): void {
    const s = this.status.get(peer);
    if (!s || this.stopped) return;
    s.lastError = null;
    this.o.log.info({ peer }, 'shadow peer up');
    this.pumpDiscards();
    this.failover.peerUp(peer);
  }

  private linkDown(peer: string, reason: string): void {
    const s = this.status.get(peer);
    if (!s || this.stopped) return;
    s.lastError = reason;
    this.o.log.warn({ peer, err: reason }, 'shadow peer down');
  }

  private isUp(peer: string): boolean {
    return this.clients.get(peer)?.state === 'up';
  }

  /** A put to this peer has gone unanswered for half the budget while it answered nothing else. */
  private stalled(s: PeerState, now: number): boolean {
    for (const t of s.inflight) if (now - t > this.o.timeoutMs / 2 && s.lastAnswer < t) return true;
    return false;
  }

  /** This node can replicate to the peer now: the link is up, its spool has room, it is not leaving. */
  private healthy(name: string, now = monotonicMs()): boolean {
    const s = this.status.get(name);
    return !!s && this.clients.get(name)?.state === 'up' && !s.spoolFull && !s.draining && !this.stalled(s, now);
  }

  private zoneOf(name: string): string | undefined {
    return this.o.peers.find((p) => p.name === name)?.zone ?? this.status.get(name)?.zone ?? undefined;
  }

  /**
   * The peers to try for message `id`, in order: placement over the healthy ones; when none
   * is healthy, over all of them (each fails at once while its link reconnects).
   */
  placementOrder(id: string, exclude: string[] = []): string[] {
    const now = monotonicMs();
    const all = [...this.clients.keys()].filter((n) => !exclude.includes(n) && !this.status.get(n)?.draining);
    const rank = (names: string[]) => rankPeers(id, this.o.zone, names.map((name) => ({ name, zone: this.zoneOf(name) })), this.o.placement);
    const order = rank(all.filter((n) => this.healthy(n, now)));
    return order.length ? order : rank(all);
  }

  /** Peers this node must reconcile with before delivering what they hold copies of. */
  awaitingReconcile(): string[] {
    return this.failover.awaitingReconcile();
  }

  private failed(peer: string, err: Error): void {
    const s = this.status.get(peer);
    if (s) s.lastError = err.message;
  }

  /** Sends one heartbeat to every peer. Resolves when all have answered or failed. */
  async heartbeatAll(): Promise<void> {
    const me = { name: this.o.nodeName, incarnation: this.o.spool.incarnation, ...(this.o.zone ? { zone: this.o.zone } : {}), ...(this.draining ? { draining: true } : {}) };
    await Promise.all(
      [...this.clients.values()].map(async (c) => {
        try {
          const t0 = monotonicMs();
          const r = await c.heartbeat(me, this.o.timeoutMs);
          const st = this.status.get(c.name);
          if (!st) return;
          st.rttMs = monotonicMs() - t0;
          st.spoolFull = r.spoolFull === true;
          // an older peer says nothing about zones or draining
          this.contact(c.name, r.incarnation, { zone: typeof r.zone === 'string' ? r.zone : undefined, draining: r.draining === true });
        } catch (e) {
          this.failed(c.name, e as Error);
        }
      }),
    );
    this.failover.retryReconciles();
  }

  /**
   * Puts the shadow copy on one peer's disk (placement, failover within one `timeoutMs`
   * budget: see the summary at the top). Resolves with the peer's name; rejects with a
   * PeerError naming in `maybeStoredOn` the peers that got the bytes but gave no answer, and
   * in `triedOn` every peer a request went to.
   */
  replicate(m: Envelope, opts: ReplicateOptions = {}): Promise<string> {
    const order = this.placementOrder(m.id, opts.exclude);
    const budgetEnd = monotonicMs() + this.o.timeoutMs;
    const hedgeMs = this.o.timeoutMs / 2;
    const meta: PutMeta = { sender: m.sender, recipients: m.recipients, receivedAt: m.receivedAt, incarnation: this.o.spool.incarnation };
    if (opts.done?.length) meta.done = opts.done;
    return new Promise<string>((resolve, reject) => {
      let next = 0;
      let running = 0;
      let settled = false;
      const tried: string[] = [];
      const maybe: string[] = [];
      let last: Error | undefined;
      const failAll = () => {
        settled = true;
        const why =
          order.length === 0
            ? this.o.placement === 'remoteOnly'
              ? 'no peer in another zone can take a copy (shadow.placement: remoteOnly)'
              : 'no peer can take a copy'
            : 'no peer confirmed the copy';
        const err: ReplicationError = last ?? new PeerError(why, 'unreachable');
        if (maybe.length) err.maybeStoredOn = maybe;
        err.triedOn = tried;
        reject(err);
      };
      // a copy that may be on a peer other than the one recorded: it is owed a discard
      const stray = (peer: string) => void this.o.spool.oweDiscards(peer, [m.id]).then(() => this.pumpDiscards(), () => undefined);
      const launch = (): boolean => {
        while (next < order.length && !settled) {
          const left = budgetEnd - monotonicMs();
          if (left <= 1) return false;
          const c = this.clients.get(order[next++]!);
          if (!c) continue;
          const st = this.status.get(c.name);
          running++;
          tried.push(c.name);
          const t0 = monotonicMs();
          st?.inflight.add(t0);
          // no answer after half the budget: start the next candidate beside it
          const hedge = next < order.length ? setTimeout(() => settled || launch(), Math.min(hedgeMs, left)) : undefined;
          c.put(m.id, meta, m.body, left).then(
            () => {
              running--;
              this.metrics.replicated(c.name, (monotonicMs() - t0) / 1000);
              this.contact(c.name, null);
              if (st) {
                st.lastPut = Date.now();
                st.spoolFull = false;
                st.lastAnswer = monotonicMs();
              }
              if (settled) return stray(c.name);
              settled = true;
              for (const p of maybe) stray(p);
              resolve(c.name);
            },
            (e: unknown) => {
              running--;
              this.metrics.replicationFailed(c.name);
              const pe = e as PeerError;
              if (st && pe instanceof PeerError && pe.kind === 'refused') st.lastAnswer = monotonicMs();
              if (pe instanceof PeerError && pe.status === 507 && st) st.spoolFull = true;
              if (pe instanceof PeerError && pe.status === 503 && /draining/.test(pe.message) && st) st.draining = true;
              this.failed(c.name, pe);
              if (settled) {
                if (pe instanceof PeerError && pe.maybeDone) stray(c.name);
                return;
              }
              last = pe;
              if (pe instanceof PeerError && pe.maybeDone) maybe.push(c.name);
              // a failure: the next candidate now (no waiting for the hedge)
              if (!launch() && running === 0) failAll();
            },
          ).finally(() => {
            clearTimeout(hedge);
            st?.inflight.delete(t0);
          });
          return true;
        }
        return false;
      };
      if (!launch()) failAll();
    });
  }

  /**
   * Settles copies whose put got no answer (`replicate` said `maybeStoredOn`): asks those
   * peers whether they hold it until one answers, for at most 2 × timeoutMs (and never past
   * promoteAfterMs − timeoutMs: a cut-off peer promotes what it holds once promoteAfterMs
   * passed without contact, so an answer must come before). 'held': a peer has it on disk
   * (the 250 is true); 'absent': none has it and none will take a late copy (the 451 is
   * true); 'unknown': no answer in time, a peer that cannot tell, or this node is stopping.
   */
  async resolve(id: string, peers: string[]): Promise<Resolution> {
    // 2 × timeoutMs bounds how long the client waits; promoteAfterMs − timeoutMs keeps the
    // answer ahead of any promotion by a cut-off peer
    const deadline = monotonicMs() + Math.min(2 * this.o.timeoutMs, Math.max(this.o.timeoutMs, this.o.promoteAfterMs - this.o.timeoutMs));
    const open = new Set(peers);
    // answered, but not the question (an older peer without /v1/resolve: 404)
    let unanswerable = false;
    this.o.log.warn({ id, peers }, 'shadow copy in doubt (no answer from the peer): asking whether it stored it');
    while (!this.stopped && !this.doubtsEnded && monotonicMs() < deadline) {
      for (const name of [...open]) {
        const c = this.clients.get(name);
        if (!c) {
          open.delete(name);
          continue;
        }
        try {
          const held = await c.resolve([id], Math.min(this.o.timeoutMs, Math.max(1, deadline - monotonicMs())));
          this.contact(name, null);
          if (held.includes(id)) return { held: name };
          open.delete(name);
        } catch (e) {
          if (e instanceof PeerError && e.kind === 'refused') {
            open.delete(name);
            unanswerable = true;
          }
          // otherwise not reachable yet: ask again shortly
        }
      }
      if (open.size === 0) return unanswerable ? 'unknown' : 'absent';
      await new Promise((r) => setTimeout(r, 100));
    }
    return 'unknown';
  }

  /**
   * After a restart: asks every peer which of these copies it holds (`/v1/resolve`, which
   * also makes a peer refuse late copies of the others). One round: `answered` names the
   * peers that answered; a copy held by none of them stays open if some peer did not.
   */
  async whoHolds(ids: string[]): Promise<{ held: Map<string, string>; answered: string[] }> {
    const held = new Map<string, string>();
    const answered: string[] = [];
    await Promise.all(
      [...this.clients.values()].map(async (c) => {
        try {
          for (let i = 0; i < ids.length; i += RESOLVE_BATCH) {
            for (const id of await c.resolve(ids.slice(i, i + RESOLVE_BATCH), this.o.timeoutMs)) held.set(id, c.name);
          }
          this.contact(c.name, null);
          answered.push(c.name);
        } catch (e) {
          this.failed(c.name, e as Error);
        }
      }),
    );
    return { held, answered };
  }

  /** Asks the pump to send owed discards soon (coalesced). */
  pumpDiscards(): void {
    // wait a moment so the discards of many delivered messages travel in one request (and one
    // transaction on the peer) instead of one request per delivery
    if (this.stopped || this.discardSoon) return;
    this.discardSoon = setTimeout(() => {
      this.discardSoon = undefined;
      this.pumpNow();
    }, DISCARD_DELAY_MS);
    this.discardSoon.unref();
  }

  private pumpNow(): void {
    if (this.stopped) return;
    if (this.discardBusy) {
      this.discardAgain = true;
      return;
    }
    this.discardBusy = true;
    void this.sendDiscards().finally(() => {
      this.discardBusy = false;
      if (this.discardAgain) {
        this.discardAgain = false;
        setImmediate(() => this.pumpDiscards());
      }
    });
  }

  private async sendDiscards(): Promise<void> {
    for (const c of [...this.clients.values()]) {
      for (;;) {
        if (this.stopped) return;
        const ids = this.o.spool.owedDiscards(c.name, DISCARD_BATCH);
        const rcpts = this.o.spool.owedRecipientDiscards(c.name, DISCARD_BATCH);
        if (ids.length === 0 && rcpts.length === 0) break;
        try {
          await c.discard(rcpts.length ? { ids, rcpts } : { ids }, this.o.timeoutMs);
          await this.o.spool.discardsConfirmed(c.name, ids);
          if (rcpts.length) await this.o.spool.recipientDiscardsConfirmed(c.name, rcpts);
          if (ids.length) this.metrics.discardsConfirmed('message', ids.length);
          if (rcpts.length) this.metrics.discardsConfirmed('recipient', rcpts.reduce((n, r) => n + r.idx.length, 0));
          for (const id of ids) this.o.log.debug({ id, peer: c.name }, 'discard confirmed by peer');
        } catch (e) {
          this.failed(c.name, e as Error);
          break; // retried on the next tick
        }
        if (ids.length < DISCARD_BATCH && rcpts.length < DISCARD_BATCH) break;
      }
    }
  }

  /**
   * Live change (config reload): new certificates for both ends of the link. The server
   * presents them on new connections; client sessions close gracefully (requests in flight
   * finish) and the next request reconnects with the new ones.
   */
  reload(s: ShadowLinkSettings): { added: string[]; removed: string[] } {
    this.server.setTls(s.tls);
    this.o.tls = s.tls;
    for (const c of this.clients.values()) c.setTls(s.tls);
    this.o.timeoutMs = s.timeoutMs;
    this.o.placement = s.placement;
    return this.setPeers(s.peers);
  }

  peers(): PeerStatus[] {
    return [...this.clients.values()].map((c) => {
      const s = this.status.get(c.name)!;
      const link = c.state;
      return {
        name: s.name,
        up: link === 'up',
        link,
        lastSeen: s.lastSeen,
        lastPut: s.lastPut,
        rttMs: s.rttMs,
        incarnation: s.incarnation,
        lastError: s.lastError,
        spoolFull: s.spoolFull,
        zone: this.zoneOf(c.name) ?? null,
        draining: s.draining,
      };
    });
  }

  /** Whether some peer could take a shadow copy now (this node's requests to it succeed). */
  anyPeerUp(): boolean {
    return [...this.clients.values()].some((c) => c.state === 'up');
  }

  /** Some peer can take a copy now under this node's placement (readiness). */
  canShadow(): boolean {
    const names = [...this.clients.keys()].filter((n) => this.clients.get(n)!.state === 'up' && !this.status.get(n)!.spoolFull && !this.status.get(n)!.draining);
    if (this.o.placement !== 'remoteOnly') return names.length > 0;
    return rankPeers('', this.o.zone, names.map((name) => ({ name, zone: this.zoneOf(name) })), 'remoteOnly').length > 0;
  }

  /** This node is draining: it takes no new copies (503) and says so in its heartbeats. */
  setDraining(on: boolean): void {
    if (this.draining === on) return;
    this.draining = on;
    void this.heartbeatAll();
  }

  get isDraining(): boolean {
    return this.draining;
  }

  /** Peers that can take a message over now (drain): healthy, and not draining themselves. */
  transferCandidates(id: string, exclude: string[] = []): string[] {
    const now = monotonicMs();
    const names = [...this.clients.keys()].filter((n) => !exclude.includes(n) && this.healthy(n, now));
    return rankPeers(id, undefined, names.map((name) => ({ name })), 'any');
  }

  /** Whether `peer` can take copies or messages now (drain). */
  isHealthy(peer: string): boolean {
    return this.healthy(peer);
  }

  // ---- drain: both sides ------------------------------------------------------------

  /**
   * Hands one of this node's primaries to `to` (drain). Resolves once `to` holds it as its
   * own primary with a shadow on a third node, both durable; the caller then drops its copy.
   */
  async transfer(m: MessageWithBody, to: string): Promise<{ result: 'accepted' | 'exists'; shadowPeer: string }> {
    const c = this.clients.get(to);
    if (!c) throw new PeerError(`peer ${to} is not configured`, 'unreachable');
    const pending = m.recipients.filter((r) => r.state === 'pending').map((r) => r.address);
    const meta: TransferMeta = {
      sender: m.sender,
      recipients: pending,
      receivedAt: m.receivedAt,
      incarnation: this.o.spool.incarnation,
      shadowPeer: m.shadowPeer,
      ...(m.state === 'held' ? { held: true } : {}),
    };
    // the taking node puts its own shadow copy (up to timeoutMs) before it answers
    return c.transfer(m.id, meta, m.body, 3 * this.o.timeoutMs);
  }

  /** Asks `origin` to shadow these copies of its messages elsewhere (drain). */
  async reshadow(origin: string, ids: string[]): Promise<{ moved: string[]; gone: string[] }> {
    const c = this.clients.get(origin);
    if (!c) throw new PeerError(`peer ${origin} is not configured`, 'unreachable');
    return c.reshadow(ids, 4 * this.o.timeoutMs);
  }

  /**
   * A draining peer hands us a message: shadow it on a third node (not the peer leaving;
   * not the copy's current holder either, unless that holder is us), then take it over.
   */
  private async takeTransfer(from: string, id: string, meta: TransferMeta, raw: Body): Promise<[number, unknown]> {
    if (this.draining || this.stopped) return [503, { error: 'draining: not taking messages' }];
    const have = this.o.spool.get(id);
    if (have?.role === 'primary' && have.origin === this.o.nodeName && have.shadowPeer) return [201, { result: 'exists', shadowPeer: have.shadowPeer }];
    if (meta.recipients.length === 0) return [400, { error: 'no recipient left to deliver' }];
    const exclude = [from, ...(meta.shadowPeer && meta.shadowPeer !== this.o.nodeName ? [meta.shadowPeer] : [])];
    let shadowPeer: string;
    try {
      shadowPeer = await this.replicate({ id, sender: meta.sender, recipients: meta.recipients, receivedAt: meta.receivedAt, body: raw }, { exclude });
    } catch (e) {
      const err = e as ReplicationError;
      // a copy that may have landed is an orphan: owe discards (and the orphan check drops it)
      for (const p of err.maybeStoredOn ?? []) void this.o.spool.oweDiscards(p, [id]).catch(() => undefined);
      this.o.log.warn({ id, from, err: err.message }, 'transfer refused: no third node took the shadow copy');
      return [503, { error: `no shadow copy on a third node: ${err.message}` }];
    }
    const r = await this.o.spool.takeTransfer({ id, sender: meta.sender, recipients: meta.recipients, receivedAt: meta.receivedAt, body: raw, held: meta.held }, shadowPeer);
    if (r === 'conflict') {
      await this.o.spool.oweDiscards(shadowPeer, [id]);
      return [409, { error: 'another message of this id is queued here' }];
    }
    this.o.log.info({ id, from, shadowPeer, nrcpt: meta.recipients.length, result: r }, 'transferred in: queued here, shadowed on a third node');
    this.o.onPromoted?.();
    return [201, { result: r, shadowPeer }];
  }

  /** A draining holder asks us to shadow these of our messages elsewhere. */
  private async answerReshadow(from: string, ids: string[]): Promise<{ moved: string[]; gone: string[] }> {
    const moved: string[] = [];
    const gone: string[] = [];
    const work = ids.slice();
    const one = async (id: string) => {
      const m = this.o.spool.getWithBody(id);
      if (!m || m.role !== 'primary' || m.origin !== this.o.nodeName || (m.shadowPeer !== from && m.state !== 'spooled')) {
        // delivered meanwhile, never accepted, or shadowed elsewhere already
        if (m?.role === 'primary' && m.shadowPeer && m.shadowPeer !== from) moved.push(id);
        else gone.push(id);
        return;
      }
      if (m.state === 'spooled') return; // its accept is still running: asked again later
      const done = m.recipients.filter((r) => r.state !== 'pending').map((r) => r.idx);
      try {
        const to = await this.replicate({ id, sender: m.sender, recipients: m.recipients.map((r) => r.address), receivedAt: m.receivedAt, body: m.body }, { exclude: [from], done });
        const r = await this.o.spool.reshadowed(id, from, to);
        (r === 'moved' ? moved : gone).push(id);
        this.o.log.info({ id, from, to, result: r }, 'reshadowed: copy moved off a draining peer');
      } catch (e) {
        this.o.log.debug({ id, from, err: (e as Error).message }, 'reshadow failed (the draining peer asks again)');
      }
    };
    const workers = Array.from({ length: Math.min(16, work.length) }, async () => {
      for (let id = work.shift(); id !== undefined; id = work.shift()) await one(id);
    });
    await Promise.all(workers);
    this.pumpDiscards();
    return { moved, gone };
  }

  /** The node is stopping: copies in doubt stay unknown (a stop must not wait promoteAfterMs). */
  endDoubts(): void {
    this.doubtsEnded = true;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.failover.stop();
    clearInterval(this.hbTimer);
    clearInterval(this.discardTimer);
    clearTimeout(this.discardSoon);
    clearInterval(this.tickTimer);
    for (const c of this.clients.values()) c.close();
    await this.server.close();
  }
}
