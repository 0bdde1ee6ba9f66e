/**
 * metrics — the Prometheus registry of one node (prom-client), served on `/metrics`.
 *
 * Implementation summary:
 * - One `Metrics` object per node, built by the composition root and handed to the parts as
 *   the narrow `RelayMetrics` event port (base/metrics.ts; no global registry: `new
 *   Registry()`), so two nodes in one process (tests, demo) never mix their numbers.
 * - Events are counted where they happen (accept, refuse, deliver, promote, duplicate risk);
 *   states (queue sizes, oldest age, peers, discards pending, spool bytes) are read from their
 *   owners at scrape time through `MetricsSources` (`observe()`), so they are never stale.
 * - This registry is the node's only count of events: tests read it through `snapshot()`.
 */
import { Registry, Counter, Gauge, Histogram, collectDefaultMetrics } from 'prom-client';
import type { QueueStat } from '../spool/index.js';
import { History } from './history.js';
import type { CertificateExpiry } from './certificates.js';
import type {
  RelayMetrics,
  RefusalReason,
  DeferralReason,
  DeliveryOutcome,
  DuplicateRiskKind,
  BounceResult,
  ShadowDropReason,
} from '../base/metrics.js';

export interface PeerGaugeSource {
  name: string;
  /** this node's requests to the peer succeed */
  up: boolean;
  link: 'up' | 'connecting' | 'down';
  /** wall time of the last exchange in either direction */
  lastSeen: number | null;
  /** wall time of the last shadow copy the peer confirmed */
  lastPut: number | null;
}

/** State read at scrape time. */
export interface MetricsSources {
  queueStats(): QueueStat[];
  peers(): PeerGaugeSource[];
  discardsPending(): number;
  spoolBytes(): number;
  /** spool.maxSizeBytes (0: no cap) */
  spoolMaxBytes(): number;
  /** the certificates in force and when they expire */
  certificates(): CertificateExpiry[];
}

const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const DELAY_BUCKETS = [0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400, 86400, 432000];

/** Every counter of a node: name → help and labels (the README's metrics table lists them). */
const COUNTERS = {
  shadowrelay_messages_accepted_total: { help: 'Messages answered 250 (shadowed or degraded)', labels: [] },
  shadowrelay_messages_degraded_total: { help: 'Messages accepted WITHOUT a shadow copy (shadow.onFailure=accept)', labels: [] },
  shadowrelay_messages_refused_total: { help: 'Messages or recipients refused, by reason', labels: ['reason'] },
  shadowrelay_deliveries_total: { help: 'Recipient delivery outcomes at the next hop', labels: ['outcome'] },
  shadowrelay_delivery_expired_total: { help: 'Recipients failed because the queue lifetime passed (also counted as bounced)', labels: [] },
  shadowrelay_delivery_attempts_total: { help: 'Delivery attempts started (one SMTP transaction to the next hop each)', labels: [] },
  shadowrelay_delivery_cancelled_in_flight_total: { help: 'Messages cancelled (their peer delivered them) while this node was sending them', labels: [] },
  shadowrelay_delivery_record_retries_total: { help: 'Delivery outcome writes retried after a storage error', labels: [] },
  shadowrelay_bounces_total: { help: 'Bounces: queued (accepted and shadowed), deferred (retried later), suppressed (null sender)', labels: ['result'] },
  shadowrelay_promotions_total: { help: 'Times the shadow copies of an unreachable peer were promoted', labels: ['peer'] },
  shadowrelay_promoted_messages_total: { help: 'Shadow copies promoted to deliverable messages', labels: ['peer'] },
  shadowrelay_promoted_cancelled_total: { help: 'Promoted copies cancelled because their origin delivered them', labels: [] },
  shadowrelay_duplicate_risk_total: { help: 'Events where a message may have been delivered twice (unavoidable windows)', labels: ['kind'] },
  shadowrelay_shadows_dropped_total: { help: 'Shadow copies dropped undelivered: orphan (its primary does not hold it), expired (maxShadowAgeMs)', labels: ['reason'] },
  shadowrelay_reconciles_total: { help: 'Reconciles with a peer as primary (after a start or the peer coming back)', labels: ['peer'] },
  shadowrelay_reconcile_dropped_total: { help: 'Own queued messages dropped because the peer had promoted them', labels: ['peer'] },
  shadowrelay_config_reloads_total: { help: 'Configuration reloads (SIGHUP), applied or refused', labels: ['result'] },
  shadowrelay_replication_failures_total: { help: 'Shadow copies a peer did not confirm (refused, timed out, unreachable)', labels: ['peer'] },
  shadowrelay_discards_confirmed_total: { help: 'Discards confirmed by peers: whole messages, or recipients of messages partly delivered', labels: ['scope'] },
  shadowrelay_peer_reconnects_total: { help: 'New replication sessions to the peer after one was lost or stopped answering', labels: ['peer'] },
  shadowrelay_delivery_deferrals_total: {
    help: 'Recipients deferred (retried later), by why: reply_4xx (the next hop answered 4xx), connection, timeout, tls (tls=required not met), other',
    labels: ['reason'],
  },
} as const;

type CounterName = keyof typeof COUNTERS;
const HISTOGRAMS = ['shadowrelay_shadow_seconds', 'shadowrelay_delivery_delay_seconds', 'shadowrelay_delivery_attempt_seconds', 'shadowrelay_replication_seconds'] as const;
const GAUGES = [
  'shadowrelay_queue_messages',
  'shadowrelay_queue_oldest_age_seconds',
  'shadowrelay_peer_up',
  'shadowrelay_peer_link_state',
  'shadowrelay_peer_last_put_age_seconds',
  'shadowrelay_peer_heartbeat_age_seconds',
  'shadowrelay_discards_pending',
  'shadowrelay_spool_bytes',
  'shadowrelay_spool_max_bytes',
  'shadowrelay_certificate_expiry_seconds',
] as const;

/** A sample name of this registry: a counter, a gauge, or a histogram's `_count` / `_sum`. */
export type MetricName = CounterName | (typeof GAUGES)[number] | `${(typeof HISTOGRAMS)[number]}_${'count' | 'sum'}`;

/** The node's metrics at one moment. */
export interface MetricsSnapshot {
  /** the sum of the samples of `name` whose labels include `labels` (0 when there is none) */
  value(name: MetricName, labels?: Record<string, string>): number;
}

export class Metrics implements RelayMetrics {
  readonly registry = new Registry();
  /** the last hour per minute, for the dashboard (fed by the same events) */
  readonly history = new History();
  private readonly counters: { [K in CounterName]: Counter<string> };
  private readonly shadowSeconds: Histogram;
  private readonly deliveryDelay: Histogram<'outcome'>;
  private readonly attemptSeconds: Histogram;
  private readonly replicationSeconds: Histogram<'peer'>;

  constructor(node: string) {
    const registers = [this.registry];
    this.registry.setDefaultLabels({ node });
    collectDefaultMetrics({ register: this.registry });
    const counter = (name: CounterName) => new Counter({ name, help: COUNTERS[name].help, labelNames: [...COUNTERS[name].labels], registers });
    this.counters = Object.fromEntries(Object.keys(COUNTERS).map((n) => [n, counter(n as CounterName)])) as Metrics['counters'];
    this.shadowSeconds = new Histogram({
      name: 'shadowrelay_shadow_seconds',
      help: 'End of DATA to 250: local spool, shadow copy confirmed by the peer, mark accepted; _count = messages shadowed',
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.deliveryDelay = new Histogram({
      name: 'shadowrelay_delivery_delay_seconds',
      help: 'Arrival to outcome, per recipient (Postfix delay=)',
      labelNames: ['outcome'],
      buckets: DELAY_BUCKETS,
      registers,
    });
    this.attemptSeconds = new Histogram({
      name: 'shadowrelay_delivery_attempt_seconds',
      help: 'Duration of one delivery attempt (one SMTP transaction to the next hop)',
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.replicationSeconds = new Histogram({
      name: 'shadowrelay_replication_seconds',
      help: 'Round trip of one shadow copy: sent to the peer until the peer confirmed it on disk',
      labelNames: ['peer'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    // start every labelled series at 0 so rate() works from the first scrape
    const zero = (name: CounterName, label: string, values: string[]) => {
      for (const v of values) this.counters[name].inc({ [label]: v }, 0);
    };
    zero('shadowrelay_messages_refused_total', 'reason', ['shadow_unconfirmed', 'storage', 'relay_denied', 'too_big']);
    zero('shadowrelay_deliveries_total', 'outcome', ['delivered', 'deferred', 'bounced']);
    zero('shadowrelay_config_reloads_total', 'result', ['applied', 'refused']);
    zero('shadowrelay_bounces_total', 'result', ['queued', 'deferred', 'suppressed']);
    zero('shadowrelay_shadows_dropped_total', 'reason', ['orphan', 'expired']);
    zero('shadowrelay_discards_confirmed_total', 'scope', ['message', 'recipient']);
    zero('shadowrelay_delivery_deferrals_total', 'reason', ['reply_4xx', 'connection', 'timeout', 'tls', 'other']);
    zero('shadowrelay_duplicate_risk_total', 'kind', ['promoted_after_delivery', 'delivered_without_reconcile']);
  }

  /**
   * The state gauges, read from their owners at scrape time. Called once by the composition
   * root when the parts that own the state are built.
   */
  observe(sources: MetricsSources): void {
    const registers = [this.registry];
    new Gauge({
      name: 'shadowrelay_queue_messages',
      help: 'Messages in the spool by role (primary: ours to deliver; shadow: copies held for a peer) and state',
      labelNames: ['role', 'state'],
      registers,
      collect() {
        this.reset();
        for (const role of ['primary', 'shadow']) this.set({ role, state: role === 'primary' ? 'queued' : 'shadow' }, 0);
        for (const s of sources.queueStats()) this.set({ role: s.role, state: s.state }, s.count);
      },
    });
    new Gauge({
      name: 'shadowrelay_queue_oldest_age_seconds',
      help: 'Age of the oldest message by role (0 when none)',
      labelNames: ['role'],
      registers,
      collect() {
        const oldest: Record<string, number> = {};
        for (const s of sources.queueStats()) {
          if (s.state === 'spooled') continue; // not accepted yet: no one waits on it
          oldest[s.role] = Math.min(oldest[s.role] ?? Infinity, s.oldestReceivedAt);
        }
        const now = Date.now();
        for (const role of ['primary', 'shadow']) {
          const t = oldest[role];
          this.set({ role }, t === undefined ? 0 : Math.max(0, (now - t) / 1000));
        }
      },
    });
    new Gauge({
      name: 'shadowrelay_peer_up',
      help: "1 while this node's own requests to the shadow peer succeed (it could take a shadow copy now)",
      labelNames: ['peer'],
      registers,
      collect() {
        this.reset();
        for (const p of sources.peers()) this.set({ peer: p.name }, p.up ? 1 : 0);
      },
    });
    new Gauge({
      name: 'shadowrelay_peer_link_state',
      help: 'State of the replication link to the peer, seen from this node: 1 for the current state',
      labelNames: ['peer', 'state'],
      registers,
      collect() {
        this.reset();
        for (const p of sources.peers()) for (const state of ['up', 'connecting', 'down']) this.set({ peer: p.name, state }, p.link === state ? 1 : 0);
      },
    });
    new Gauge({
      name: 'shadowrelay_peer_last_put_age_seconds',
      help: 'Seconds since the peer last confirmed a shadow copy (absent until it has confirmed one)',
      labelNames: ['peer'],
      registers,
      collect() {
        this.reset();
        const now = Date.now();
        for (const p of sources.peers()) if (p.lastPut !== null) this.set({ peer: p.name }, Math.max(0, (now - p.lastPut) / 1000));
      },
    });
    new Gauge({
      name: 'shadowrelay_peer_heartbeat_age_seconds',
      help: 'Seconds since the peer was last heard from (absent until it has been heard once)',
      labelNames: ['peer'],
      registers,
      collect() {
        this.reset();
        const now = Date.now();
        for (const p of sources.peers()) if (p.lastSeen !== null) this.set({ peer: p.name }, Math.max(0, (now - p.lastSeen) / 1000));
      },
    });
    new Gauge({
      name: 'shadowrelay_discards_pending',
      help: 'Discards owed to peers, not yet confirmed by them',
      registers,
      collect() {
        this.set(sources.discardsPending());
      },
    });
    new Gauge({
      name: 'shadowrelay_certificate_expiry_seconds',
      help: 'Seconds until a certificate in force expires (negative: expired): shadow_cert and shadow_ca (the replication link; expired means 451 for every message), smtp_cert (STARTTLS)',
      labelNames: ['certificate'],
      registers,
      collect() {
        this.reset();
        for (const c of sources.certificates()) this.set({ certificate: c.certificate }, c.secondsLeft);
      },
    });
    new Gauge({
      name: 'shadowrelay_spool_bytes',
      help: 'Size of the spool database and its write-ahead log on disk',
      registers,
      collect() {
        this.set(sources.spoolBytes());
      },
    });
    new Gauge({
      name: 'shadowrelay_spool_max_bytes',
      help: 'The spool cap (spool.maxSizeBytes; 0 when there is none): a message that does not fit is refused 452',
      registers,
      collect() {
        this.set(sources.spoolMaxBytes());
      },
    });
  }

  accepted(shadowSeconds: number | null): void {
    this.counters.shadowrelay_messages_accepted_total.inc();
    this.history.add('accepted');
    if (shadowSeconds === null) this.counters.shadowrelay_messages_degraded_total.inc();
    else this.shadowSeconds.observe(shadowSeconds);
  }

  refused(reason: RefusalReason): void {
    this.counters.shadowrelay_messages_refused_total.inc({ reason });
    this.history.add('refused');
    if (reason === 'shadow_unconfirmed') this.history.add('refused451');
  }

  delivery(outcome: DeliveryOutcome, delaySeconds: number): void {
    this.counters.shadowrelay_deliveries_total.inc({ outcome });
    this.history.add(outcome);
    this.deliveryDelay.observe({ outcome }, delaySeconds);
  }

  deliveryDeferred(reason: DeferralReason): void {
    this.counters.shadowrelay_delivery_deferrals_total.inc({ reason });
  }

  deliveryExpired(): void {
    this.counters.shadowrelay_delivery_expired_total.inc();
  }

  deliveryAttemptStarted(): void {
    this.counters.shadowrelay_delivery_attempts_total.inc();
  }

  deliveryAttempt(seconds: number): void {
    this.attemptSeconds.observe(seconds);
  }

  deliveryCancelled(): void {
    this.counters.shadowrelay_delivery_cancelled_in_flight_total.inc();
  }

  deliveryRecordRetry(): void {
    this.counters.shadowrelay_delivery_record_retries_total.inc();
  }

  bounce(result: BounceResult): void {
    this.counters.shadowrelay_bounces_total.inc({ result });
  }

  promoted(peer: string, messages: number): void {
    this.counters.shadowrelay_promotions_total.inc({ peer });
    this.counters.shadowrelay_promoted_messages_total.inc({ peer }, messages);
  }

  promotedCancelled(messages: number): void {
    this.counters.shadowrelay_promoted_cancelled_total.inc(messages);
  }

  duplicateRisk(kind: DuplicateRiskKind, n = 1): void {
    this.counters.shadowrelay_duplicate_risk_total.inc({ kind }, n);
  }

  shadowsDropped(reason: ShadowDropReason, messages: number): void {
    this.counters.shadowrelay_shadows_dropped_total.inc({ reason }, messages);
  }

  reconciled(peer: string, dropped: number): void {
    this.counters.shadowrelay_reconciles_total.inc({ peer });
    this.counters.shadowrelay_reconcile_dropped_total.inc({ peer }, dropped);
  }

  reload(ok: boolean): void {
    this.counters.shadowrelay_config_reloads_total.inc({ result: ok ? 'applied' : 'refused' });
  }

  replicated(peer: string, seconds: number): void {
    this.replicationSeconds.observe({ peer }, seconds);
    this.history.replicated(peer, seconds);
  }

  replicationFailed(peer: string): void {
    this.counters.shadowrelay_replication_failures_total.inc({ peer });
  }

  discardsConfirmed(scope: 'message' | 'recipient', n: number): void {
    this.counters.shadowrelay_discards_confirmed_total.inc({ scope }, n);
  }

  linkReconnect(peer: string): void {
    this.counters.shadowrelay_peer_reconnects_total.inc({ peer });
  }

  /** The exposition text and its content type. */
  async render(): Promise<{ contentType: string; text: string }> {
    return { contentType: this.registry.contentType, text: await this.registry.metrics() };
  }

  /** Every sample of the registry now (gauges collected as for a scrape). */
  async snapshot(): Promise<MetricsSnapshot> {
    const samples = (await this.registry.getMetricsAsJSON()).flatMap((m) =>
      m.values.map((v) => ({ name: (v as { metricName?: string }).metricName ?? m.name, labels: v.labels, value: v.value })),
    );
    return {
      value: (name, labels = {}) =>
        samples
          .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => String(s.labels[k]) === v))
          .reduce((sum, s) => sum + s.value, 0),
    };
  }
}
