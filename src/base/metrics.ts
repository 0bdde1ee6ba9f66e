/**
 * The metrics port: the events parts report, as one narrow interface. The Prometheus
 * registry that implements it (ops/metrics.ts) is built by the composition root, one per
 * node; parts see only this interface, and default to `noMetrics` when given none.
 * Every method is cheap and never throws.
 */

/** Why a message (or recipient, or session) was refused; the `reason` label of `shadowrelay_messages_refused_total`. */
export type RefusalReason =
  | 'shadow_unconfirmed' // 451 4.4.1: the peer did not confirm the shadow copy in time
  | 'shadow_unknown' // no reply: the copy went out, no answer came, and the peer could not be asked
  | 'storage' // 452 4.3.1: our own spool could not write
  | 'relay_denied' // 554 5.7.1 at RCPT
  | 'too_big' // 552 5.3.4
  | 'internal' // 451 4.3.0
  | 'connection_limit' // 421 4.7.0 at connect
  | 'auth_failed' // 535 5.7.8
  | 'auth_lockout' // 421 4.7.0 after maxFailures
  | 'timeout' // 421 4.4.2: the DATA deadline
  | 'bare_newline' // 521 5.5.2
  | 'nul' // 554 5.6.0
  | 'mail_loop'; // 554 5.4.6

export type DeliveryOutcome = 'delivered' | 'deferred' | 'bounced';

/** Why a recipient was deferred; the `reason` label of `shadowrelay_delivery_deferrals_total`. */
export type DeferralReason =
  | 'reply_4xx' // the next hop answered 4xx
  | 'connection' // refused, unreachable, reset, name not found
  | 'timeout' // connect, greeting or a reply did not come in time
  | 'tls' // delivery.nextHop.tls=required and no verified TLS: nothing sent
  | 'other';

/** Kinds of the unavoidable duplicate windows (DESIGN invariant 5). */
export type DuplicateRiskKind =
  | 'promoted_after_delivery' // the peer promoted a copy the primary may have delivered
  | 'delivered_without_reconcile' // a restarted node gave up waiting for its peer's reconcile
  | 'delivered_in_doubt'; // a restarted node could not ask its peers about a copy left without its accepted mark

/** What became of a bounce this node tried to send. */
export type BounceResult = 'queued' | 'deferred' | 'suppressed';

/** Why shadow copies were dropped without being delivered. */
export type ShadowDropReason = 'orphan' | 'expired';

export interface RelayMetrics {
  /** a message was accepted; `shadowSeconds` is null when degraded (no shadow copy) */
  accepted(shadowSeconds: number | null): void;
  refused(reason: RefusalReason): void;
  /** one recipient's delivery outcome; `delaySeconds` since arrival (Postfix's delay=) */
  delivery(outcome: DeliveryOutcome, delaySeconds: number): void;
  /** a recipient was deferred (also counted as `deferred`), and why */
  deliveryDeferred(reason: DeferralReason): void;
  /** a recipient failed because the queue lifetime passed (also counted as `bounced`) */
  deliveryExpired(): void;
  /** a delivery attempt (one SMTP transaction to the next hop) starts */
  deliveryAttemptStarted(): void;
  /** one delivery attempt took this long */
  deliveryAttempt(seconds: number): void;
  /** a message was cancelled (its peer delivered it) while this node was sending it */
  deliveryCancelled(): void;
  /** a delivery outcome could not be written and the write is retried */
  deliveryRecordRetry(): void;
  bounce(result: BounceResult): void;
  /** shadow copies of `peer` became ours to deliver */
  promoted(peer: string, messages: number): void;
  /** promoted copies cancelled because their origin delivered them */
  promotedCancelled(messages: number): void;
  /** a duplicate may have been delivered (counted, per DESIGN invariant 5) */
  duplicateRisk(kind: DuplicateRiskKind, n?: number): void;
  shadowsDropped(reason: ShadowDropReason, messages: number): void;
  /** this node reconciled with `peer` as primary and dropped what the peer had promoted */
  reconciled(peer: string, dropped: number): void;
  /** a configuration reload was applied or refused */
  reload(ok: boolean): void;
  /** `peer` confirmed a shadow copy after `seconds` (the replication round trip) */
  replicated(peer: string, seconds: number): void;
  /** `peer` did not confirm a shadow copy */
  replicationFailed(peer: string): void;
  /** a peer confirmed discards: whole messages, or recipients of messages partly delivered */
  discardsConfirmed(scope: 'message' | 'recipient', n: number): void;
  /** the link to `peer` made a new session after losing one */
  linkReconnect(peer: string): void;
}

const ignore = () => {};

export const noMetrics: RelayMetrics = {
  accepted: ignore,
  refused: ignore,
  delivery: ignore,
  deliveryDeferred: ignore,
  deliveryExpired: ignore,
  deliveryAttemptStarted: ignore,
  deliveryAttempt: ignore,
  deliveryCancelled: ignore,
  deliveryRecordRetry: ignore,
  bounce: ignore,
  promoted: ignore,
  promotedCancelled: ignore,
  duplicateRisk: ignore,
  shadowsDropped: ignore,
  reconciled: ignore,
  reload: ignore,
  replicated: ignore,
  replicationFailed: ignore,
  discardsConfirmed: ignore,
  linkReconnect: ignore,
};
