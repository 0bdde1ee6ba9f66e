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
 * - Heartbeats every `heartbeatMs` keep the peer's liveness and incarnation known.
 * - Promotion and reconcile build on these (see README "Failure handling").
 */
import type { Logger } from 'pino';
import type { Spool } from '../spool/index.js';
import { PeerClient, PeerError } from './client.js';
import { ShadowServer, type TlsFiles } from './server.js';
import { parseHostPort } from '../config/index.js';
import type { RelayMetrics } from '../ops/metrics.js';

export { PeerError } from './client.js';

export interface ShadowLinkOptions {
  nodeName: string;
  listen: { host: string; port: number };
  peers: Array<{ name: string; address: string }>;
  tls: TlsFiles;
  timeoutMs: number;
  heartbeatMs: number;
  maxMessageSize: number;
  spool: Spool;
  log: Logger;
  /** promotion and reconcile (issue 3) report promotions and duplicate-risk events here */
  metrics?: Pick<RelayMetrics, 'promoted' | 'duplicateRisk'>;
}

export interface PeerStatus {
  name: string;
  up: boolean;
  lastSeen: number | null;
  incarnation: string | null;
  lastError: string | null;
}

export interface ReplicateInput {
  id: string;
  sender: string;
  recipients: string[];
  receivedAt: number;
  body: Buffer;
}

const DISCARD_BATCH = 500;
const DISCARD_INTERVAL_MS = 1000;
/** how long a pump request waits for more discards to join it */
const DISCARD_DELAY_MS = 50;

export class ShadowLink {
  private readonly server: ShadowServer;
  private readonly clients: PeerClient[];
  private readonly status = new Map<string, PeerStatus>();
  private hbTimer: NodeJS.Timeout | undefined;
  private discardTimer: NodeJS.Timeout | undefined;
  private discardBusy = false;
  private discardSoon: NodeJS.Timeout | undefined;
  private discardAgain = false;
  private stopped = false;

  constructor(private readonly o: ShadowLinkOptions) {
    this.server = new ShadowServer({
      nodeName: o.nodeName,
      peerNames: o.peers.map((p) => p.name),
      tls: o.tls,
      // the envelope meta rides along with the message bytes
      maxBodyBytes: o.maxMessageSize + 1024 * 1024,
      spool: o.spool,
      log: o.log,
      onHeartbeat: (peer, incarnation) => this.seen(peer, incarnation),
    });
    this.clients = o.peers.map((p) => {
      const hp = parseHostPort(p.address)!;
      this.status.set(p.name, { name: p.name, up: false, lastSeen: null, incarnation: null, lastError: null });
      return new PeerClient({ name: p.name, host: hp.host, port: hp.port, tls: o.tls });
    });
  }

  async start(): Promise<{ host: string; port: number }> {
    const addr = await this.server.listen(this.o.listen.host, this.o.listen.port);
    this.hbTimer = setInterval(() => void this.heartbeatAll(), this.o.heartbeatMs);
    this.hbTimer.unref();
    this.discardTimer = setInterval(() => this.pumpDiscards(), DISCARD_INTERVAL_MS);
    this.discardTimer.unref();
    void this.heartbeatAll();
    return addr;
  }

  private seen(peer: string, incarnation: string | null): void {
    const s = this.status.get(peer);
    if (!s) return;
    const wasUp = s.up;
    s.up = true;
    s.lastSeen = Date.now();
    s.lastError = null;
    if (incarnation) s.incarnation = incarnation;
    if (!wasUp) {
      this.o.log.info({ peer }, 'shadow peer up');
      this.pumpDiscards();
    }
  }

  private failed(peer: string, err: Error): void {
    const s = this.status.get(peer);
    if (!s) return;
    if (s.up) this.o.log.warn({ peer, err: err.message }, 'shadow peer down');
    s.up = false;
    s.lastError = err.message;
  }

  /** Sends one heartbeat to every peer. Resolves when all have answered or failed. */
  async heartbeatAll(): Promise<void> {
    await Promise.all(
      this.clients.map(async (c) => {
        try {
          const r = await c.heartbeat({ name: this.o.nodeName, incarnation: this.o.spool.incarnation }, this.o.timeoutMs);
          this.seen(c.name, r.incarnation);
        } catch (e) {
          this.failed(c.name, e as Error);
        }
      }),
    );
  }

  /**
   * Puts the shadow copy on a peer's disk. Resolves with the peer's name; rejects with
   * PeerError when no peer confirmed in time.
   */
  async replicate(m: ReplicateInput): Promise<string> {
    let last: Error | undefined;
    for (const c of this.clients) {
      try {
        await c.put(
          m.id,
          { sender: m.sender, recipients: m.recipients, receivedAt: m.receivedAt, incarnation: this.o.spool.incarnation },
          m.body,
          this.o.timeoutMs,
        );
        this.seen(c.name, null);
        return c.name;
      } catch (e) {
        last = e as Error;
        if ((e as PeerError).kind !== 'refused') this.failed(c.name, last);
      }
    }
    throw last ?? new PeerError('no peer configured', 'unreachable');
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
        if (ids.length === 0) break;
        try {
          await c.discard(ids, this.o.timeoutMs);
          await this.o.spool.discardsConfirmed(c.name, ids);
          for (const id of ids) this.o.log.debug({ id, peer: c.name }, 'discard confirmed by peer');
        } catch (e) {
          this.failed(c.name, e as Error);
          break; // retried on the next tick
        }
        if (ids.length < DISCARD_BATCH) break;
      }
    }
  }

  /**
   * Live change (config reload): new certificates for both ends of the link. The server
   * presents them on new connections; client sessions close gracefully (requests in flight
   * finish) and the next request reconnects with the new ones.
   */
  reload(s: { tls: TlsFiles; timeoutMs: number }): void {
    this.server.setTls(s.tls);
    for (const c of this.clients) c.setTls(s.tls);
    this.o.tls = s.tls;
    this.o.timeoutMs = s.timeoutMs;
  }

  peers(): PeerStatus[] {
    return [...this.status.values()].map((s) => ({ ...s }));
  }

  anyPeerUp(): boolean {
    return [...this.status.values()].some((s) => s.up);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.hbTimer);
    clearInterval(this.discardTimer);
    clearTimeout(this.discardSoon);
    for (const c of this.clients) c.close();
    await this.server.close();
  }
}
