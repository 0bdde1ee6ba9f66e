/**
 * metrics — the Prometheus registry of one node (prom-client), served on `/metrics`.
 *
 * Implementation summary:
 * - One `Metrics` object per node, built by the composition root and handed to the parts as
 *   the narrow `RelayMetrics` event interface (no global registry: `new Registry()`), so two
 *   nodes in one process (tests, demo) never mix their numbers.
 * - Events are counted where they happen (accept, refuse, deliver, promote, duplicate risk);
 *   states (queue sizes, oldest age, peers, discards pending, spool bytes) are read from their
 *   owners at scrape time through `MetricsSources`, so they are never stale.
 * - Parts that take a `RelayMetrics` default to `noMetrics`, so they work without one.
 */
import { Registry, Counter, Gauge, Histogram, collectDefaultMetrics } from 'prom-client';
import type { QueueStat } from '../spool/index.js';

/** Why a message (or recipient) was refused; the `reason` label of `shadowrelay_messages_refused_total`. */
export type RefusalReason =
  | 'shadow_unconfirmed' // 451 4.4.1: the peer did not confirm the shadow copy in time
  | 'storage' // 452 4.3.1: our own spool could not write
  | 'relay_denied' // 554 5.7.1 at RCPT
  | 'too_big' // 552 5.3.4
  | 'internal' // 451 4.3.0
  | (string & {}); // further reasons (auth, limits) added by the smtp part

export type DeliveryOutcome = 'delivered' | 'deferred' | 'bounced';

/** Kinds of the unavoidable duplicate windows (DESIGN invariant 5). */
export type DuplicateRiskKind =
  | 'reply_lost' // 250 committed but the client may not have seen it
  | 'promoted_after_delivery' // the peer promoted a copy the primary may have delivered
  | (string & {});

/** The events parts report. Every method is cheap and never throws. */
export interface RelayMetrics {
  /** a message was accepted; `shadowSeconds` is null when degraded (no shadow copy) */
  accepted(shadowSeconds: number | null): void;
  refused(reason: RefusalReason): void;
  /** one recipient's delivery outcome; `delaySeconds` since arrival (Postfix's delay=) */
  delivery(outcome: DeliveryOutcome, delaySeconds: number): void;
  /** one delivery attempt (one SMTP transaction to the next hop) took this long */
  deliveryAttempt(seconds: number): void;
  /** shadow copies of `peer` became ours to deliver (issue 3's promotion) */
  promoted(peer: string, messages: number): void;
  /** a duplicate may have been delivered (counted, per DESIGN invariant 5) */
  duplicateRisk(kind: DuplicateRiskKind, n?: number): void;
  /** a configuration reload was applied or refused */
  reload(ok: boolean): void;
  /** `peer` confirmed a shadow copy after `seconds` (the replication round trip) */
  replicated(peer: string, seconds: number): void;
  /** the link to `peer` made a new session after losing one */
  linkReconnect(peer: string): void;
}

export const noMetrics: RelayMetrics = {
  accepted: () => {},
  refused: () => {},
  delivery: () => {},
  deliveryAttempt: () => {},
  promoted: () => {},
  duplicateRisk: () => {},
  reload: () => {},
  replicated: () => {},
  linkReconnect: () => {},
};

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
}

const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const DELAY_BUCKETS = [0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400, 86400, 432000];

export class Metrics implements RelayMetrics {
  readonly registry = new Registry();
  private readonly acceptedTotal: Counter;
  private readonly degradedTotal: Counter;
  private readonly refusedTotal: Counter<'reason'>;
  private readonly shadowSeconds: Histogram;
  private readonly deliveriesTotal: Counter<'outcome'>;
  private readonly deliveryDelay: Histogram<'outcome'>;
  private readonly attemptSeconds: Histogram;
  private readonly promotionsTotal: Counter<'peer'>;
  private readonly promotedMessagesTotal: Counter<'peer'>;
  private readonly duplicateRiskTotal: Counter<'kind'>;
  private readonly reloadsTotal: Counter<'result'>;
  private readonly replicationSeconds: Histogram<'peer'>;
  private readonly reconnectsTotal: Counter<'peer'>;

  constructor(node: string, sources: MetricsSources) {
    const registers = [this.registry];
    this.registry.setDefaultLabels({ node });
    collectDefaultMetrics({ register: this.registry });
    this.acceptedTotal = new Counter({
      name: 'shadowrelay_messages_accepted_total',
      help: 'Messages answered 250 (shadowed or degraded)',
      registers,
    });
    this.degradedTotal = new Counter({
      name: 'shadowrelay_messages_degraded_total',
      help: 'Messages accepted WITHOUT a shadow copy (shadow.onFailure=accept)',
      registers,
    });
    this.refusedTotal = new Counter({
      name: 'shadowrelay_messages_refused_total',
      help: 'Messages or recipients refused, by reason',
      labelNames: ['reason'],
      registers,
    });
    this.shadowSeconds = new Histogram({
      name: 'shadowrelay_shadow_seconds',
      help: 'End of DATA to 250: local spool, shadow copy confirmed by the peer, mark accepted; _count = messages shadowed',
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.deliveriesTotal = new Counter({
      name: 'shadowrelay_deliveries_total',
      help: 'Recipient delivery outcomes at the next hop',
      labelNames: ['outcome'],
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
    this.promotionsTotal = new Counter({
      name: 'shadowrelay_promotions_total',
      help: 'Times the shadow copies of an unreachable peer were promoted',
      labelNames: ['peer'],
      registers,
    });
    this.promotedMessagesTotal = new Counter({
      name: 'shadowrelay_promoted_messages_total',
      help: 'Shadow copies promoted to deliverable messages',
      labelNames: ['peer'],
      registers,
    });
    this.duplicateRiskTotal = new Counter({
      name: 'shadowrelay_duplicate_risk_total',
      help: 'Events where a message may have been delivered twice (unavoidable windows)',
      labelNames: ['kind'],
      registers,
    });
    this.reloadsTotal = new Counter({
      name: 'shadowrelay_config_reloads_total',
      help: 'Configuration reloads (SIGHUP), applied or refused',
      labelNames: ['result'],
      registers,
    });
    this.replicationSeconds = new Histogram({
      name: 'shadowrelay_replication_seconds',
      help: 'Round trip of one shadow copy: sent to the peer until the peer confirmed it on disk',
      labelNames: ['peer'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.reconnectsTotal = new Counter({
      name: 'shadowrelay_peer_reconnects_total',
      help: 'New replication sessions to the peer after one was lost or stopped answering',
      labelNames: ['peer'],
      registers,
    });
    // start every labelled series at 0 so rate() works from the first scrape
    for (const r of ['shadow_unconfirmed', 'storage', 'relay_denied', 'too_big']) this.refusedTotal.inc({ reason: r }, 0);
    for (const o of ['delivered', 'deferred', 'bounced']) this.deliveriesTotal.inc({ outcome: o }, 0);
    for (const r of ['applied', 'refused']) this.reloadsTotal.inc({ result: r }, 0);

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
      name: 'shadowrelay_spool_bytes',
      help: 'Size of the spool database and its write-ahead log on disk',
      registers,
      collect() {
        this.set(sources.spoolBytes());
      },
    });
  }

  accepted(shadowSeconds: number | null): void {
    this.acceptedTotal.inc();
    if (shadowSeconds === null) this.degradedTotal.inc();
    else this.shadowSeconds.observe(shadowSeconds);
  }

  refused(reason: RefusalReason): void {
    this.refusedTotal.inc({ reason });
  }

  delivery(outcome: DeliveryOutcome, delaySeconds: number): void {
    this.deliveriesTotal.inc({ outcome });
    this.deliveryDelay.observe({ outcome }, delaySeconds);
  }

  deliveryAttempt(seconds: number): void {
    this.attemptSeconds.observe(seconds);
  }

  promoted(peer: string, messages: number): void {
    this.promotionsTotal.inc({ peer });
    this.promotedMessagesTotal.inc({ peer }, messages);
  }

  duplicateRisk(kind: DuplicateRiskKind, n = 1): void {
    this.duplicateRiskTotal.inc({ kind }, n);
  }

  reload(ok: boolean): void {
    this.reloadsTotal.inc({ result: ok ? 'applied' : 'refused' });
  }

  replicated(peer: string, seconds: number): void {
    this.replicationSeconds.observe({ peer }, seconds);
  }

  linkReconnect(peer: string): void {
    this.reconnectsTotal.inc({ peer });
  }

  /** The exposition text and its content type. */
  async render(): Promise<{ contentType: string; text: string }> {
    return { contentType: this.registry.contentType, text: await this.registry.metrics() };
  }
}
