/**
 * Connection limits of the SMTP listener (Postfix's anvil, in-process):
 * - `maxConnections` open sessions in all;
 * - `maxConnectionsPerAddress` open sessions from one client address;
 * - `connectionRatePerMinute` connection attempts from one address in any 60 s (0 = off).
 * Clients in `allowedNetworks` are exempt from the per-address limits, as Postfix exempts
 * `$mynetworks` (`smtpd_client_event_limit_exceptions`): the MTAs that relay through us
 * open many connections by design. Refusals are `421 4.7.0` (see SmtpListener).
 */
import { monotonicMs } from '../base/clock.js';
export interface ConnectionLimits {
  maxConnections: number;
  maxConnectionsPerAddress: number;
  connectionRatePerMinute: number;
}

export type LimitRefusal = 'too many connections' | 'too many connections from this address' | 'connection rate limit exceeded';

const WINDOW_MS = 60_000;

export class ConnectionLimiter {
  private total = 0;
  private readonly open = new Map<string, number>();
  private readonly attempts = new Map<string, number[]>();
  private readonly admitted = new Set<string>();
  private sweepAt = 0;

  constructor(
    private o: ConnectionLimits,
    private readonly now: () => number = monotonicMs,
  ) {}

  /** New limits (config reload); sessions already admitted stay counted. */
  setLimits(o: ConnectionLimits): void {
    this.o = o;
  }

  /** Called for every new session; when it returns null the session counts until release(). */
  admit(sessionId: string, address: string, exempt: boolean): LimitRefusal | null {
    const now = this.now();
    this.sweep(now);
    if (!exempt && this.o.connectionRatePerMinute > 0) {
      const recent = (this.attempts.get(address) ?? []).filter((t) => t > now - WINDOW_MS);
      recent.push(now);
      // only whether the count is over the limit matters: keep at most limit + 1 stamps
      if (recent.length > this.o.connectionRatePerMinute + 1) recent.splice(0, recent.length - this.o.connectionRatePerMinute - 1);
      this.attempts.set(address, recent);
      if (recent.length > this.o.connectionRatePerMinute) return 'connection rate limit exceeded';
    }
    if (this.total >= this.o.maxConnections) return 'too many connections';
    const mine = this.open.get(address) ?? 0;
    if (!exempt && mine >= this.o.maxConnectionsPerAddress) return 'too many connections from this address';
    this.total++;
    this.open.set(address, mine + 1);
    this.admitted.add(sessionId + '\0' + address);
    return null;
  }

  /** Called when a session ends; a no-op for sessions that admit() refused or never saw. */
  release(sessionId: string, address: string): void {
    if (!this.admitted.delete(sessionId + '\0' + address)) return;
    this.total--;
    const n = (this.open.get(address) ?? 1) - 1;
    if (n <= 0) this.open.delete(address);
    else this.open.set(address, n);
  }

  get connections(): number {
    return this.total;
  }

  /** Forget rate windows that have expired, at most once a window (bounded memory). */
  private sweep(now: number): void {
    if (now < this.sweepAt) return;
    this.sweepAt = now + WINDOW_MS;
    for (const [a, ts] of this.attempts) if (!ts.some((t) => t > now - WINDOW_MS)) this.attempts.delete(a);
  }
}
