/**
 * shadow — the replication link between a primary and its shadow peer(s).
 *
 * Implementation summary:
 * - Transport: HTTP/2 over mutual TLS (Node core). One warm session per peer, requests
 *   multiplexed, TCP_NODELAY on every socket. Both ends verify against `shadow.tls.ca` and
 *   check that the other's certificate names a configured peer.
 * - replicate(): sends the shadow copy to the first peer that confirms it is on its disk
 *   within `timeoutMs`. The caller answers 250 only after that.
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
 *   "Failure handling").
 */
import type { Logger } from 'pino';
import type { LinkSpool } from '../spool/index.js';
import { PeerClient, PeerError } from './client.js';
import { ShadowServer, type TlsFiles } from './server.js';
import { Failover, type FailoverMetrics } from './failover.js';
import { noMetrics, type RelayMetrics } from '../base/metrics.js';
import type { HostPort } from '../base/net.js';
import type { Envelope } from '../base/message.js';
import { monotonicMs } from '../base/clock.js';

export { PeerError } from './client.js';
export type { TlsFiles } from './server.js';

/** What a config reload may change on a running link. */
export interface ShadowLinkSettings {
  tls: TlsFiles;
  timeoutMs: number;
}

export interface ShadowLinkOptions extends ShadowLinkSettings {
  nodeName: string;
  listen: HostPort;
  peers: Array<{ name: string; address: HostPort }>;
  heartbeatMs: number;
  promoteAfterMs: number;
  maxShadowAgeMs: number;
  /** delivery.retry.maxAgeMs: shadow copies should outlive their primary's retries (warned otherwise) */
  retryMaxAgeMs: number;
  reconcileIntervalMs: number;
  maxMessageSize: number;
  spool: LinkSpool;
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
  private readonly clients: PeerClient[];
  private readonly status = new Map<string, PeerState>();
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
      peerNames: o.peers.map((p) => p.name),
      tls: o.tls,
      // the envelope meta rides along with the message bytes
      maxBodyBytes: o.maxMessageSize + 1024 * 1024,
      spool: o.spool,
      log: o.log,
      hooks: {
        contact: (peer, incarnation) => this.contact(peer, incarnation),
        discard: (peer, body) => this.failover.applyDiscard(peer, body),
        reconcile: (peer, incarnation) => this.failover.answerReconcile(peer, incarnation),
        reconcileDone: (peer, ids) => this.failover.reconcileDone(peer, ids),
        known: (_peer, ids) => this.failover.known(ids),
      },
    });
    this.clients = o.peers.map((p) => {
      this.status.set(p.name, { name: p.name, lastSeen: null, lastContact: null, lastPut: null, rttMs: null, incarnation: null, lastError: null, spoolFull: false });
      return new PeerClient({
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
            this.status.get(p.name)!.rttMs = ms;
          },
        },
      });
    });
    this.failover = new Failover({
      nodeName: o.nodeName,
      spool: o.spool,
      log: o.log,
      clients: this.clients,
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
  private contact(peer: string, incarnation: string | null): void {
    const s = this.status.get(peer);
    if (!s) return;
    s.lastSeen = Date.now();
    s.lastContact = monotonicMs();
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
    return this.clients.find((c) => c.name === peer)?.state === 'up';
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
    await Promise.all(
      this.clients.map(async (c) => {
        try {
          const t0 = monotonicMs();
          const r = await c.heartbeat({ name: this.o.nodeName, incarnation: this.o.spool.incarnation }, this.o.timeoutMs);
          const st = this.status.get(c.name)!;
          st.rttMs = monotonicMs() - t0;
          st.spoolFull = r.spoolFull === true;
          this.contact(c.name, r.incarnation);
        } catch (e) {
          this.failed(c.name, e as Error);
        }
      }),
    );
    this.failover.retryReconciles();
  }

  /**
   * Puts the shadow copy on a peer's disk. Resolves with the peer's name; rejects with
   * PeerError when no peer confirmed in time.
   */
  async replicate(m: Envelope): Promise<string> {
    let last: Error | undefined;
    // peers that got the copy's bytes but gave no answer: they may hold it
    const maybe: string[] = [];
    for (const c of this.clients) {
      try {
        const t0 = monotonicMs();
        await c.put(
          m.id,
          { sender: m.sender, recipients: m.recipients, receivedAt: m.receivedAt, incarnation: this.o.spool.incarnation },
          m.body,
          this.o.timeoutMs,
        );
        this.metrics.replicated(c.name, (monotonicMs() - t0) / 1000);
        this.contact(c.name, null);
        const st = this.status.get(c.name);
        if (st) {
          st.lastPut = Date.now();
          st.spoolFull = false;
        }
        return c.name;
      } catch (e) {
        this.metrics.replicationFailed(c.name);
        last = e as Error;
        if (e instanceof PeerError && e.maybeDone) maybe.push(c.name);
        if (e instanceof PeerError && e.status === 507) this.status.get(c.name)!.spoolFull = true;
        this.failed(c.name, last);
      }
    }
    const err = (last ?? new PeerError('no peer configured', 'unreachable')) as Error & { maybeStoredOn?: string[] };
    if (maybe.length) err.maybeStoredOn = maybe;
    throw err;
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
        const c = this.clients.find((x) => x.name === name);
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
      this.clients.map(async (c) => {
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
    for (const c of this.clients) {
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
  reload(s: ShadowLinkSettings): void {
    this.server.setTls(s.tls);
    for (const c of this.clients) c.setTls(s.tls);
    this.o.tls = s.tls;
    this.o.timeoutMs = s.timeoutMs;
  }

  peers(): PeerStatus[] {
    return this.clients.map((c) => {
      const s = this.status.get(c.name)!;
      const link = c.state;
      return { name: s.name, up: link === 'up', link, lastSeen: s.lastSeen, lastPut: s.lastPut, rttMs: s.rttMs, incarnation: s.incarnation, lastError: s.lastError, spoolFull: s.spoolFull };
    });
  }

  /** Whether some peer could take a shadow copy now (this node's requests to it succeed). */
  anyPeerUp(): boolean {
    return this.clients.some((c) => c.state === 'up');
  }

  /** Some peer is up and its spool has room (readiness). */
  canShadow(): boolean {
    return this.clients.some((c) => c.state === 'up' && !this.status.get(c.name)!.spoolFull);
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
    for (const c of this.clients) c.close();
    await this.server.close();
  }
}
