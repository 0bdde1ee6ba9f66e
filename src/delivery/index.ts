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
 * - When no recipient is pending the spool purges the message and owes the peer a discard.
 * - Next-hop TLS and AUTH options come from tls.ts; under `tls: required` a send that could
 *   not get verified TLS is a temporary failure (nothing was sent; the reason is recorded).
 */
import { SmtpPool, type RawTransport } from './pool.js';
import type { Logger } from 'pino';
import type { Spool, RecipientOutcome } from '../spool/index.js';
import { nextHopTransportOptions, tlsFailureReason, type NextHop } from './tls.js';
import { noMetrics, type RelayMetrics } from '../ops/metrics.js';

export interface DeliveryOptions {
  nextHop: NextHop;
  concurrency: number;
  retry: { initialMs: number; maxMs: number; maxAgeMs: number };
  hostname: string;
  spool: Spool;
  log: Logger;
  /** called after a message left the queue (all recipients final) */
  onPurged?: (id: string) => void;
  metrics?: Pick<RelayMetrics, 'delivery' | 'deliveryAttempt'>;
}

/** What a config reload may change while the worker runs. */
export interface DeliverySettings {
  nextHop: DeliveryOptions['nextHop'];
  concurrency: number;
  retry: DeliveryOptions['retry'];
  hostname: string;
}

export interface DeliveryCounters {
  attempts: number;
  delivered: number;
  deferred: number;
  failed: number;
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
  const m = /^\d{3}[ -](\d\.\d{1,3}\.\d{1,3})\b/.exec(response ?? '');
  return m ? m[1]! : fallback;
}

export function backoffMs(attempts: number, initialMs: number, maxMs: number, rand: () => number = Math.random): number {
  const base = Math.min(maxMs, initialMs * 2 ** Math.max(0, attempts - 1));
  // ±20 % jitter spreads retries of a burst that failed together
  return Math.max(1, Math.round(base * (0.8 + 0.4 * rand())));
}

const POLL_MS = 1000;

export class DeliveryWorker {
  readonly counters: DeliveryCounters = { attempts: 0, delivered: 0, deferred: 0, failed: 0 };
  private transport: RawTransport;
  private readonly metrics: Pick<RelayMetrics, 'delivery' | 'deliveryAttempt'>;
  private readonly inflight = new Map<string, Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private scheduled = false;

  constructor(private readonly o: DeliveryOptions) {
    this.metrics = o.metrics ?? noMetrics;
    this.transport = DeliveryWorker.transportFor(o);
  }

  private static transportFor(o: DeliverySettings): RawTransport {
    return new SmtpPool({
      ...nextHopTransportOptions(o.nextHop),
      name: o.hostname,
      maxConnections: o.concurrency,
      connectionTimeout: 30000,
      greetingTimeout: 30000,
      socketTimeout: 300000,
    });
  }

  /**
   * Live change (config reload): new attempts use the new next hop, limits and backoff;
   * attempts in flight finish on the old connections, which close afterwards.
   */
  reload(s: DeliverySettings): void {
    const old = this.transport;
    Object.assign(this.o, { nextHop: s.nextHop, concurrency: s.concurrency, retry: s.retry, hostname: s.hostname });
    this.transport = DeliveryWorker.transportFor(this.o);
    void Promise.allSettled([...this.inflight.values()]).then(() => old.close());
    this.wake();
  }

  start(): void {
    this.running = true;
    this.wake();
  }

  /** Look for due work soon (coalesced into one scan per event-loop turn). */
  wake(): void {
    if (!this.running || this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.scan();
    });
  }

  private scan(): void {
    if (!this.running) return;
    clearTimeout(this.timer);
    const free = this.o.concurrency - this.inflight.size;
    if (free > 0) {
      const now = Date.now();
      // ask for more than we can take: some of the due ids may already be in flight
      for (const id of this.o.spool.due(now, free + this.inflight.size)) {
        if (this.inflight.size >= this.o.concurrency) break;
        if (this.inflight.has(id)) continue;
        const p = this.deliver(id)
          .catch((err: Error) => this.o.log.error({ id, err: err.message }, 'delivery attempt failed internally'))
          .finally(() => {
            this.inflight.delete(id);
            this.wake();
          });
        this.inflight.set(id, p);
      }
    }
    const next = this.o.spool.nextDueAt();
    const delay = next === null ? POLL_MS : Math.min(POLL_MS, Math.max(10, next - Date.now()));
    this.timer = setTimeout(() => this.scan(), delay);
    this.timer.unref();
  }

  private async deliver(id: string): Promise<void> {
    const m = this.o.spool.getWithBody(id);
    if (!m || m.role !== 'primary' || m.state !== 'queued') return;
    const pending = m.recipients.filter((r) => r.state === 'pending');
    if (pending.length === 0) return;
    this.counters.attempts++;
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

    this.metrics.deliveryAttempt(Number(process.hrtime.bigint() - started) / 1e9);
    const attempts = m.attempts + 1;
    const next = Date.now() + backoffMs(attempts, this.o.retry.initialMs, this.o.retry.maxMs);
    const anyPending = outcomes.some((o) => o.state === 'pending');
    const result = await this.o.spool.recordAttempt(id, outcomes, next, anyPending ? summary : null);
    const delay = (Date.now() - m.receivedAt) / 1000;
    for (const o of outcomes) {
      const to = m.recipients[o.idx]!.address;
      const status = o.state === 'delivered' ? 'sent' : o.state === 'failed' ? 'bounced' : 'deferred';
      const response = o.error ?? summary;
      const dsn = dsnOf(response, o.state === 'delivered' ? '2.0.0' : o.state === 'failed' ? '5.0.0' : '4.0.0');
      this.metrics.delivery(o.state === 'delivered' ? 'delivered' : o.state === 'failed' ? 'bounced' : 'deferred', delay);
      if (o.state === 'delivered') this.counters.delivered++;
      else if (o.state === 'failed') this.counters.failed++;
      else this.counters.deferred++;
      const line = { id, to, relay, delay, dsn, status, response };
      if (o.state === 'delivered') this.o.log.info(line, 'delivered');
      else this.o.log.warn(line, status);
    }
    if (result.purged) {
      this.o.log.info({ id }, 'removed');
      this.o.onPurged?.(id);
    }
  }

  /** Stops picking new work, waits for sends in flight, closes the transport. */
  async stop(): Promise<void> {
    this.running = false;
    clearTimeout(this.timer);
    await Promise.allSettled([...this.inflight.values()]);
    this.transport.close();
  }
}
