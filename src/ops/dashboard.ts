/**
 * dashboard — what the operator's views show, assembled from the parts that own it: the
 * overview (this node, its peers as the link sees them, replication latency, 451s,
 * promotions, duplicate risks, the queue by state, the oldest message, spool disk use,
 * certificate expiry, the last hour per minute, the replies recipients wait on). The same
 * object answers `GET /api/overview`, feeds the live stream (`/api/events`) and `shadowrelay
 * status`.
 *
 * Implementation summary:
 * - Read on demand from the owners (spool reads, the link's `peers()`, the metrics registry
 *   and its in-process history): never a copy that can go stale.
 * - The live stream: one timer for every subscriber (started with the first, stopped with
 *   the last), an `overview` event every `intervalMs`, a `queue` event when the queue's
 *   fingerprint (counts, traffic, operator actions) moved — the queue page re-reads only its
 *   page then, so many open browsers cost one overview read per tick, not a poll each.
 */
import type { QueueCounts, ErrorGroup } from '../spool/index.js';
import type { Readiness } from './admin.js';
import type { Metrics } from './metrics.js';
import type { CertificateExpiry } from './certificates.js';
import type { Series } from './history.js';

export interface DashboardPeer {
  name: string;
  link: 'up' | 'connecting' | 'down';
  up: boolean;
  lastError: string | null;
  rttMs: number | null;
  lastSeen: number | null;
  lastPut: number | null;
}

export interface DashboardSources {
  node: string;
  version: string;
  /** the admin endpoint's address, as configured */
  adminListen: string;
  startedAt: number;
  readiness(): Readiness;
  peers(): DashboardPeer[];
  queueCounts(): QueueCounts;
  topErrors(limit: number): ErrorGroup[];
  spoolBytes(): number;
  /** spool.maxSizeBytes (0: no cap) */
  spoolMaxBytes(): number;
  discardsPending(): number;
  certificates(): CertificateExpiry[];
  metrics: Metrics;
}

export interface PeerOverview extends DashboardPeer {
  lastSeenAgeSeconds: number | null;
  lastPutAgeSeconds: number | null;
  replication: { windowMinutes: number; count: number; p50Ms: number | null; p99Ms: number | null };
  replicationFailures: number;
  promotions: number;
  promotedMessages: number;
}

export interface Overview {
  node: string;
  version: string;
  now: number;
  startedAt: number;
  ready: Readiness;
  peers: PeerOverview[];
  queue: QueueCounts & { oldestPrimaryAgeSeconds: number | null; oldestShadowAgeSeconds: number | null; discardsPending: number };
  spool: { bytes: number; maxBytes: number };
  /** the last `windowMinutes` minutes */
  recent: { windowMinutes: number; accepted: number; refused451: number; refused: number; rate451: number };
  totals: { accepted: number; degraded: number; refused451: number; promotions: number; promotedMessages: number; duplicateRisks: number };
  certificates: CertificateExpiry[];
  series: Series;
  errors: ErrorGroup[];
}

const WINDOW_MINUTES = 5;

export class Dashboard {
  private readonly subscribers = new Set<(event: string, data: unknown) => void>();
  private timer: NodeJS.Timeout | undefined;
  private lastFingerprint = '';
  /** operator actions so far: each moves the queue fingerprint */
  private actions = 0;

  constructor(
    private readonly s: DashboardSources,
    private readonly intervalMs = 2000,
  ) {}

  async overview(): Promise<Overview> {
    const s = this.s;
    const now = Date.now();
    const snap = await s.metrics.snapshot();
    const h = s.metrics.history;
    const q = s.queueCounts();
    const age = (t: number | null) => (t === null ? null : Math.max(0, Math.round((now - t) / 1000)));
    const accepted = h.total('accepted', WINDOW_MINUTES);
    const refused451 = h.total('refused451', WINDOW_MINUTES);
    return {
      node: s.node,
      version: s.version,
      now,
      startedAt: s.startedAt,
      ready: s.readiness(),
      peers: s.peers().map((p) => ({
        ...p,
        lastSeenAgeSeconds: age(p.lastSeen),
        lastPutAgeSeconds: age(p.lastPut),
        replication: { windowMinutes: WINDOW_MINUTES, ...h.quantiles(p.name, WINDOW_MINUTES) },
        replicationFailures: snap.value('shadowrelay_replication_failures_total', { peer: p.name }),
        promotions: snap.value('shadowrelay_promotions_total', { peer: p.name }),
        promotedMessages: snap.value('shadowrelay_promoted_messages_total', { peer: p.name }),
      })),
      queue: { ...q, oldestPrimaryAgeSeconds: age(q.oldestPrimaryAt), oldestShadowAgeSeconds: age(q.oldestShadowAt), discardsPending: s.discardsPending() },
      spool: { bytes: s.spoolBytes(), maxBytes: s.spoolMaxBytes() },
      recent: {
        windowMinutes: WINDOW_MINUTES,
        accepted,
        refused451,
        refused: h.total('refused', WINDOW_MINUTES),
        rate451: accepted + refused451 === 0 ? 0 : refused451 / (accepted + refused451),
      },
      totals: {
        accepted: snap.value('shadowrelay_messages_accepted_total'),
        degraded: snap.value('shadowrelay_messages_degraded_total'),
        refused451: snap.value('shadowrelay_messages_refused_total', { reason: 'shadow_unconfirmed' }),
        promotions: snap.value('shadowrelay_promotions_total'),
        promotedMessages: snap.value('shadowrelay_promoted_messages_total'),
        duplicateRisks: snap.value('shadowrelay_duplicate_risk_total'),
      },
      certificates: s.certificates(),
      series: h.series(),
      errors: s.topErrors(10),
    };
  }

  /** An operator action changed the queue: subscribers re-read their page on the next tick. */
  queueChanged(): void {
    this.actions++;
    if (this.subscribers.size) setImmediate(() => void this.tick());
  }

  get subscriberCount(): number {
    return this.subscribers.size;
  }

  /** Live events for one subscriber; returns the unsubscribe function. */
  subscribe(send: (event: string, data: unknown) => void): () => void {
    this.subscribers.add(send);
    if (!this.timer) {
      this.timer = setInterval(() => void this.tick(), this.intervalMs);
      this.timer.unref();
    }
    void this.overview().then(
      (o) => this.subscribers.has(send) && send('overview', o),
      () => undefined,
    );
    return () => {
      this.subscribers.delete(send);
      if (this.subscribers.size === 0) this.stop();
    };
  }

  private async tick(): Promise<void> {
    if (this.subscribers.size === 0) return;
    let o: Overview;
    try {
      o = await this.overview();
    } catch {
      return; // a spool read failed (closing): the next tick tries again
    }
    const c = o.queue;
    const t = o.series.counts;
    const last = (xs: number[]) => xs[xs.length - 1] ?? 0;
    const fingerprint = JSON.stringify([c.queued, c.deferred, c.held, c.spooled, c.shadow, last(t.accepted), last(t.delivered), last(t.deferred), last(t.bounced), this.actions]);
    const changed = fingerprint !== this.lastFingerprint;
    this.lastFingerprint = fingerprint;
    for (const send of [...this.subscribers]) {
      send('overview', o);
      if (changed) send('queue', { at: o.now });
    }
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }
}
