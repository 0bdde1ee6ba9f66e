/**
 * delivery — the worker that forwards accepted primaries to the next hop.
 *
 * Implementation summary:
 * - Picks due messages (role primary, state queued, next attempt reached), at most
 *   `delivery.concurrency` at once, over pooled SMTP sessions (pool.ts: nodemailer's SMTP
 *   engine without its mailer layer).
 * - Sends the original envelope (MAIL FROM and every still-pending RCPT) and the raw bytes.
 * - Failures are judged per recipient: 2xx → delivered; 5xx → failed (permanent);
 *   4xx, timeouts and connection errors → still pending, retried with exponential backoff
 *   between `retry.initialMs` and `retry.maxMs` with jitter. Only pending recipients are retried.
 * - Give-up: a recipient still pending after an attempt once the message is older than
 *   `retry.maxAgeMs` fails (expired), keeping its last error.
 * - Failed recipients get one RFC 3464 bounce (dsn.ts) to the envelope sender, accepted
 *   through the same path as inbound mail (spooled, shadowed, then queued) in the same
 *   transaction that marks them reported; if it cannot be accepted now (peer down), the
 *   message stays and the bounce is retried with backoff. A message from `<>` never bounces.
 * - A recipient finished while others are pending owes the peer a recipient-level discard
 *   (spool), so a promotion delivers only the rest. When nothing is left the spool purges
 *   the message and owes the peer a discard.
 * - If the spool cannot record an outcome (locked, full), the worker keeps the result and
 *   retries the write instead of sending again.
 * - Messages shadowed on a peer this node must first reconcile with wait (awaitingReconcile).
 * - Next-hop TLS and AUTH options come from tls.ts; under `tls: required` a send that could
 *   not get verified TLS is a temporary failure (nothing was sent; the reason is recorded).
 */
import { SmtpPool, type RawTransport } from './pool.js';
import type { Logger } from 'pino';
import type { DeliverySpool, RecipientOutcome, AttemptResult, RecipientDiscard, MessageWithBody, RecipientRow } from '../spool/index.js';
import { buildDsn, recipientFailure } from './dsn.js';
import { newQueueId } from '../base/ids.js';
import { enhancedCodeOf } from '../base/replies.js';
import type { Envelope } from '../base/message.js';
import { noMetrics, type RelayMetrics, type DeferralReason } from '../base/metrics.js';
import type { Marking, Signal } from '../base/signal.js';
import type { Body } from '../base/buffers.js';
import { nextHopTransportOptions, tlsFailureReason, type NextHop } from './tls.js';

/** A message to send: as the spool has it, with its bytes whole or in the pieces they arrived in. */
type Sendable = Omit<MessageWithBody, 'body'> & { body: Body };

export interface DeliveryOptions {
  nextHop: NextHop;
  concurrency: number;
  retry: { initialMs: number; maxMs: number; maxAgeMs: number };
  /** next-hop connect, greeting and socket-silence deadlines (defaults 30 s, 30 s, 300 s) */
  timeouts?: { connectMs: number; greetingMs: number; socketMs: number };
  hostname: string;
  spool: DeliverySpool;
  log: Logger;
  /** called after a message left the queue (all recipients final) */
  onPurged?: (id: string) => void;
  /** peers whose shadowed messages must not be delivered yet (reconcile first) */
  awaitingReconcile?: () => string[];
  /** rung when another part made work for this worker (accepted, promoted, released) */
  wakeUps?: Signal;
  /** accepts a bounce like an inbound message (spool + shadow); resolves once queued */
  submitBounce?: (b: Bounce) => Promise<void>;
  metrics?: DeliveryMetrics;
}

type DeliveryMetrics = Pick<
  RelayMetrics,
  'delivery' | 'deliveryDeferred' | 'deliveryExpired' | 'deliveryAttemptStarted' | 'deliveryAttempt' | 'deliveryCancelled' | 'deliveryRecordRetry' | 'bounce' | 'duplicateRisk'
>;

/** What a config reload may change while the worker runs. */
export interface DeliverySettings {
  nextHop: DeliveryOptions['nextHop'];
  concurrency: number;
  retry: DeliveryOptions['retry'];
  timeouts?: DeliveryOptions['timeouts'];
  hostname: string;
}

/** A bounce to be accepted (from the null sender); `bounceFor`: the failed recipients it reports (marked reported as it is accepted). */
export interface Bounce extends Envelope {
  sender: '';
  bounceFor: RecipientDiscard;
}

interface SmtpError extends Error {
  responseCode?: number;
  response?: string;
  code?: string;
  recipient?: string;
  rejectedErrors?: SmtpError[];
}

/** Enhanced status code from a reply like "250 2.0.0 Ok" → "2.0.0". */
export function dsnOf(response: string | undefined, fallback: string): string {
  return enhancedCodeOf(response ?? '') ?? fallback;
}

/** Why a recipient is still pending after an attempt, from the error recorded for it. */
export function deferralReason(error: string): DeferralReason {
  if (/^4\d\d[ -]/.test(error)) return 'reply_4xx';
  if (error.startsWith('TLS required')) return 'tls';
  if (/ETIMEDOUT|ETIMEOUT|timed? ?out/i.test(error)) return 'timeout';
  if (/ECONNREFUSED|ECONNRESET|ECONNECTION|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|EDNS|ESOCKET/.test(error)) return 'connection';
  return 'other';
}

export function backoffMs(attempts: number, initialMs: number, maxMs: number, rand: () => number = Math.random): number {
  const base = Math.min(maxMs, initialMs * 2 ** Math.max(0, attempts - 1));
  // ±20 % jitter spreads retries of a burst that failed together
  return Math.max(1, Math.round(base * (0.8 + 0.4 * rand())));
}

const POLL_MS = 1000;
/** while deliveries are in flight, wake-ups within this many ms share one scan */
const WAKE_BUSY_MS = 5;

export class DeliveryWorker {
  private transport: RawTransport;
  private readonly metrics: DeliveryMetrics;
  private readonly inflight = new Map<string, Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private scheduled = false;
  /** set when stop() gave up waiting: in-flight work stops retrying */
  private aborted = false;
  /**
   * The spool may hold due work this worker has not picked: set by a wake-up without an id,
   * an id that found no free slot, an attempt that left its message queued, a scan that
   * filled every slot. While clear, finished deliveries start no scan: a message accepted
   * while a slot is free goes straight to it (the due query per wake-up cost ~3 % of the
   * main thread under load).
   */
  private backlog = true;

  constructor(private readonly o: DeliveryOptions) {
    this.metrics = o.metrics ?? noMetrics;
    this.transport = DeliveryWorker.transportFor(o);
    o.wakeUps?.listen((id, body, marking) => (id ? this.offer(id, body, marking) : this.wake()));
  }

  private static transportFor(o: DeliverySettings): RawTransport {
    return new SmtpPool({
      ...nextHopTransportOptions(o.nextHop),
      name: o.hostname,
      maxConnections: o.concurrency,
      connectionTimeout: o.timeouts?.connectMs ?? 30000,
      greetingTimeout: o.timeouts?.greetingMs ?? 30000,
      socketTimeout: o.timeouts?.socketMs ?? 300000,
    });
  }

  /**
   * Live change (config reload): new attempts use the new next hop, limits and backoff;
   * attempts in flight finish on the old connections, which close afterwards.
   */
  reload(s: DeliverySettings): void {
    const old = this.transport;
    Object.assign(this.o, { nextHop: s.nextHop, concurrency: s.concurrency, retry: s.retry, timeouts: s.timeouts, hostname: s.hostname });
    this.transport = DeliveryWorker.transportFor(this.o);
    void Promise.allSettled([...this.inflight.values()]).then(() => old.close());
    this.wake();
  }

  /** The name this node uses towards the next hop (and in its bounces); follows reloads. */
  get hostname(): string {
    return this.o.hostname;
  }

  start(): void {
    this.running = true;
    this.wake();
  }

  /**
   * A message just queued (with its bytes when the caller has them): straight to a free slot,
   * else found by the next scan. `marking`: its accepted mark is not written yet (see Marking).
   */
  offer(id: string, body?: Body, marking?: Marking): void {
    if (!this.running) return;
    if (this.inflight.has(id)) return;
    // a message that waits for a reconcile is turned back by deliver() and found by a scan;
    // a scan finds only marked messages: one whose mark is on its way waits for it
    if (this.inflight.size >= this.o.concurrency) {
      if (marking) void marking.written.then(() => this.wake());
      else this.wake();
      return;
    }
    this.launch(id, body, marking);
  }

  /** Look for due work soon (coalesced into one scan per event-loop turn). */
  wake(): void {
    this.backlog = true;
    if (!this.running || this.scheduled) return;
    this.scheduled = true;
    const run = () => {
      this.scheduled = false;
      this.scan();
    };
    // idle: look at once; busy: let a few ms of accepts and completions share one scan (each
    // scan queries the spool; under load it ran once per event-loop turn)
    if (this.inflight.size === 0) setImmediate(run);
    else setTimeout(run, WAKE_BUSY_MS);
  }

  private scan(): void {
    if (!this.running) return;
    clearTimeout(this.timer);
    let next: number | null = null;
    try {
      const waiting = this.o.awaitingReconcile?.() ?? [];
      const free = this.o.concurrency - this.inflight.size;
      if (free > 0) {
        const now = Date.now();
        // ask for more than we can take: some of the due ids may already be in flight
        const limit = free + this.inflight.size;
        const ids = this.o.spool.due(now, limit, waiting);
        // a full page may hide more due messages behind the ones in flight
        this.backlog = ids.length === limit;
        for (const id of ids) {
          if (this.inflight.size >= this.o.concurrency) {
            this.backlog = true;
            break;
          }
          if (this.inflight.has(id)) continue;
          this.launch(id);
        }
      }
      next = this.o.spool.nextDueAt(waiting);
    } catch (err) {
      // a storage error must not stop the worker: look again on the next poll
      this.o.log.error({ err: (err as Error).message }, 'delivery scan failed');
    }
    // a due time already past belongs to a message in flight (or one the backlog finds when a
    // slot frees): only a future one needs the timer; polling every 10 ms for the ones in
    // flight was 100 spool queries a second while anything was being sent
    const wait = next === null ? POLL_MS : next - Date.now();
    const delay = wait > 0 ? Math.min(POLL_MS, Math.max(10, wait)) : this.backlog && this.inflight.size < this.o.concurrency ? 10 : POLL_MS;
    this.timer = setTimeout(() => this.scan(), delay);
    this.timer.unref();
  }

  private launch(id: string, body?: Body, marking?: Marking): void {
    const p = this.deliver(id, body, marking)
      .then(
        (finished) => {
          if (!finished) this.backlog = true;
        },
        (err: Error) => {
          this.backlog = true;
          this.o.log.error({ id, err: err.message }, 'delivery attempt failed internally');
        },
      )
      .finally(() => {
        this.inflight.delete(id);
        if (this.backlog) this.wake();
      });
    this.inflight.set(id, p);
  }

  /** One attempt (and its bounce); true when the message needs no further look now. */
  private async deliver(id: string, body?: Body, marking?: Marking): Promise<boolean> {
    // the bytes just accepted are the stored ones: no read of the blob (for 1 MB messages a
    // fresh 1 MB buffer per delivery that the heap only frees at its next collection)
    const s = body ? this.o.spool.get(id) : undefined;
    let m = s ? { ...s, body: body! } : this.o.spool.getWithBody(id);
    // answered 250, its mark on its way: the row is as the mark will leave it
    if (m && marking && m.state === 'spooled') m = { ...m, state: 'queued', shadowPeer: marking.peer };
    if (!m || m.role !== 'primary' || m.state !== 'queued') return true;
    // an offered id is not due yet (a retry time set meanwhile) or waits for a reconcile
    if (m.nextAttemptAt > Date.now()) return false;
    if (m.shadowPeer && (this.o.awaitingReconcile?.() ?? []).includes(m.shadowPeer)) return false;
    const pending = m.recipients.filter((r) => r.state === 'pending');
    if (pending.length > 0) {
      const result = await this.attempt(m, pending, marking);
      if (result.gone || result.purged) return true;
      if (result.unreported === 0) return false;
    }
    await this.bounce(id);
    return !this.o.spool.get(id);
  }

  /** One SMTP transaction for the pending recipients; records and logs their outcomes. */
  private async attempt(m: Sendable, pending: RecipientRow[], marking?: Marking): Promise<AttemptResult> {
    const id = m.id;
    this.metrics.deliveryAttemptStarted();
    const started = process.hrtime.bigint();
    const relay = `${this.o.nextHop.host}:${this.o.nextHop.port}`;
    const outcomes: RecipientOutcome[] = [];
    const byAddress = new Map(pending.map((r) => [r.address.toLowerCase(), r.idx]));
    const judge = (address: string, code: number | undefined, response: string) => {
      const idx = byAddress.get(address.toLowerCase());
      if (idx === undefined) return;
      byAddress.delete(address.toLowerCase());
      if (code !== undefined && code >= 200 && code < 300) outcomes.push({ idx, state: 'delivered' });
      else if (code !== undefined && code >= 500) outcomes.push({ idx, state: 'failed', error: response });
      else outcomes.push({ idx, state: 'pending', error: response });
    };
    let summary: string;
    try {
      const info = (await this.transport.sendMail({
        envelope: { from: m.sender, to: pending.map((r) => r.address) },
        raw: m.body,
      })) as { accepted: string[]; rejectedErrors?: SmtpError[]; response: string };
      summary = info.response;
      for (const e of info.rejectedErrors ?? []) judge(e.recipient ?? '', e.responseCode, e.response ?? e.message);
      for (const a of info.accepted) judge(a, 250, info.response);
    } catch (e) {
      const err = e as SmtpError;
      // no verified TLS under tls=required is temporary, whatever code STARTTLS got
      const tlsFailure = tlsFailureReason(err, this.o.nextHop);
      summary = tlsFailure ?? err.response ?? `${err.code ?? 'error'}: ${err.message}`;
      for (const r of err.rejectedErrors ?? []) judge(r.recipient ?? '', r.responseCode, r.response ?? r.message);
      // what is left shares the fate of the whole transaction
      for (const address of [...byAddress.keys()]) judge(address, tlsFailure ? undefined : err.responseCode, summary);
    }
    // a recipient nodemailer did not report on stays pending
    for (const idx of byAddress.values()) outcomes.push({ idx, state: 'pending', error: summary });

    // give up on what is still pending once the queue lifetime has passed
    const expired = new Set<number>();
    if (Date.now() - m.receivedAt >= this.o.retry.maxAgeMs) {
      for (const o of outcomes) {
        if (o.state !== 'pending') continue;
        o.state = 'failed';
        o.error = o.error ?? summary;
        expired.add(o.idx);
      }
    }

    this.metrics.deliveryAttempt(Number(process.hrtime.bigint() - started) / 1e9);
    const attempts = m.attempts + 1;
    const next = Date.now() + backoffMs(attempts, this.o.retry.initialMs, this.o.retry.maxMs);
    const anyPending = outcomes.some((o) => o.state === 'pending');
    // the outcome after the mark: a purge before it would leave the mark nothing to mark
    await marking?.written;
    const result = await this.record(id, outcomes, next, anyPending ? summary : null);
    const delay = (Date.now() - m.receivedAt) / 1000;
    for (const o of outcomes) {
      const to = m.recipients[o.idx]!.address;
      const status = o.state === 'delivered' ? 'sent' : expired.has(o.idx) ? 'expired' : o.state === 'failed' ? 'bounced' : 'deferred';
      const response = o.error ?? summary;
      const dsn = dsnOf(response, o.state === 'delivered' ? '2.0.0' : o.state === 'failed' && !expired.has(o.idx) ? '5.0.0' : '4.0.0');
      // an expired recipient is bounced like a refused one
      this.metrics.delivery(o.state === 'delivered' ? 'delivered' : o.state === 'failed' ? 'bounced' : 'deferred', delay);
      if (expired.has(o.idx)) this.metrics.deliveryExpired();
      if (o.state === 'pending') this.metrics.deliveryDeferred(deferralReason(response));
      const line = { id, to, relay, delay, dsn, status, response };
      if (o.state === 'delivered') this.o.log.info(line, 'delivered');
      else this.o.log.warn(line, status);
    }
    if (result.gone) {
      if (outcomes.some((o) => o.state === 'delivered')) {
        this.metrics.deliveryCancelled();
        this.metrics.duplicateRisk('promoted_after_delivery');
        this.o.log.warn({ id }, 'duplicate risk: the message was cancelled (its peer delivered it) while this node sent it');
      }
    } else if (result.purged) {
      this.o.log.info({ id }, 'removed');
      this.o.onPurged?.(id);
    }
    return result;
  }

  /** Records an attempt; on a storage error retries the write (sending again would duplicate). */
  private async record(id: string, outcomes: RecipientOutcome[], next: number, error: string | null): Promise<AttemptResult> {
    for (let wait = 100; ; wait = Math.min(wait * 2, 5000)) {
      try {
        return await this.o.spool.recordAttempt(id, outcomes, next, error);
      } catch (err) {
        if (this.aborted || this.o.spool.isClosed) throw err;
        this.metrics.deliveryRecordRetry();
        this.o.log.error({ id, err: (err as Error).message, retryInMs: wait }, 'could not record the delivery outcome; retrying the write');
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  /** One bounce for the failed, not yet reported recipients of a message. */
  private async bounce(id: string): Promise<void> {
    const m = this.o.spool.getWithBody(id);
    if (!m) return;
    const failed = m.recipients.filter((r) => r.state === 'failed' && !r.reported);
    if (failed.length === 0) return;
    const idx = failed.map((r) => r.idx);
    if (m.sender === '') {
      // RFC 5321 §4.5.5: never bounce a bounce
      const r = await this.o.spool.settleFailures(id, idx);
      this.metrics.bounce('suppressed');
      this.o.log.warn({ id, to: failed.map((f) => f.address) }, 'bounce suppressed: the message has the null sender <>');
      if (r.purged) {
        this.o.log.info({ id }, 'removed');
        this.o.onPurged?.(id);
      }
      return;
    }
    const bounceId = newQueueId();
    try {
      if (!this.o.submitBounce) throw new Error('no bounce path configured');
      const body = await buildDsn({
        reportingMta: this.o.hostname,
        queueId: id,
        sender: m.sender,
        arrivalDate: new Date(m.receivedAt),
        recipients: failed.map((r) => recipientFailure(r.address, r.lastError, this.o.nextHop.host)),
        original: m.body,
      });
      await this.o.submitBounce({ id: bounceId, sender: '', recipients: [m.sender], body, receivedAt: Date.now(), bounceFor: { id, idx } });
    } catch (err) {
      this.metrics.bounce('deferred');
      const wait = backoffMs(m.attempts + 1, this.o.retry.initialMs, this.o.retry.maxMs);
      this.o.log.warn({ id, reason: (err as Error).message, retryInMs: wait }, 'bounce not accepted yet; retrying later');
      await this.o.spool.deferUntil(id, Date.now() + wait).catch(() => undefined);
      return;
    }
    this.metrics.bounce('queued');
    this.o.log.info({ id, bounce: bounceId, to: m.sender, failed: failed.map((f) => f.address) }, 'bounce queued');
    if (!this.o.spool.get(id)) {
      this.o.log.info({ id }, 'removed');
      this.o.onPurged?.(id);
    }
  }

  /** Drain: stops picking new work and waits for sends in flight (the transport stays). */
  async pause(): Promise<void> {
    this.running = false;
    clearTimeout(this.timer);
    await Promise.allSettled([...this.inflight.values()]);
  }

  /** After a drain that left messages: deliver them again. */
  resume(): void {
    if (this.aborted) return;
    this.start();
  }

  /**
   * Stops picking new work and waits for sends in flight — at most `deadlineMs`, then the
   * transport is closed under them (their outcome is unknown: they are retried after restart).
   */
  async stop(deadlineMs = 30000): Promise<void> {
    this.running = false;
    clearTimeout(this.timer);
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), deadlineMs)));
    const r = await Promise.race([Promise.allSettled([...this.inflight.values()]), expired]);
    clearTimeout(timer);
    if (r === 'timeout') {
      this.aborted = true;
      this.o.log.warn({ inflight: this.inflight.size }, 'delivery stop deadline reached with sends in flight');
    }
    this.transport.close();
  }
}
