/**
 * SMTP AUTH (PLAIN and LOGIN) against `smtp.auth.users`, with brute-force damping:
 * - every failure is answered only after `failureDelayMs` (Postfix's smtpd_error_sleep_time);
 * - failures are counted per client address; `maxFailures` within `failureWindowMs` lock the
 *   address out for `lockoutMs`: its AUTH commands, and its new connections unless it is in
 *   allowedNetworks, get `421 4.7.0` and are disconnected.
 * Passwords and AUTH blobs are never logged (smtp-server's own logger is off; we log the
 * user name and the client address only).
 */
import { hashPassword, verifyPassword } from '../passwords/index.js';
import { monotonicMs } from '../base/clock.js';

export interface AuthUser {
  username: string;
  passwordHash: string;
}

export interface AuthSettings {
  users: AuthUser[];
  failureDelayMs: number;
  maxFailures: number;
  failureWindowMs: number;
  lockoutMs: number;
}

export class Authenticator {
  private readonly users: Map<string, string>;
  private dummy: Promise<string> | undefined;

  constructor(users: AuthUser[]) {
    this.users = new Map(users.map((u) => [u.username, u.passwordHash]));
  }

  async verify(username: string, password: string): Promise<boolean> {
    const hash = this.users.get(username);
    if (hash === undefined) {
      // same work for an unknown user, so timing does not tell which names exist
      this.dummy ??= hashPassword('dummy password for unknown users');
      await verifyPassword(password, await this.dummy);
      return false;
    }
    return verifyPassword(password, hash);
  }
}

export class AuthThrottle {
  private readonly failures = new Map<string, number[]>();
  private readonly lockedUntil = new Map<string, number>();
  private sweepAt = 0;

  constructor(
    private o: Pick<AuthSettings, 'maxFailures' | 'failureWindowMs' | 'lockoutMs'>,
    // monotonic: a wall-clock step must not end a lockout early
    private readonly now: () => number = monotonicMs,
  ) {}

  /** New thresholds (config reload); failures counted and lockouts in force carry over. */
  withSettings(o: Pick<AuthSettings, 'maxFailures' | 'failureWindowMs' | 'lockoutMs'>): this {
    this.o = o;
    return this;
  }

  locked(address: string): boolean {
    const until = this.lockedUntil.get(address);
    if (until === undefined) return false;
    if (until > this.now()) return true;
    this.lockedUntil.delete(address);
    return false;
  }

  /** Records a failure; returns true when it locked the address out. */
  fail(address: string): boolean {
    const now = this.now();
    this.sweep(now);
    const recent = (this.failures.get(address) ?? []).filter((t) => t > now - this.o.failureWindowMs);
    recent.push(now);
    if (recent.length >= this.o.maxFailures) {
      this.failures.delete(address);
      this.lockedUntil.set(address, now + this.o.lockoutMs);
      return true;
    }
    this.failures.set(address, recent);
    return false;
  }

  /** Forgets expired entries, at most once a failure window (bounded memory under many addresses). */
  private sweep(now: number): void {
    if (now < this.sweepAt) return;
    this.sweepAt = now + this.o.failureWindowMs;
    for (const [a, until] of this.lockedUntil) if (until <= now) this.lockedUntil.delete(a);
    for (const [a, ts] of this.failures) if (!ts.some((t) => t > now - this.o.failureWindowMs)) this.failures.delete(a);
  }
}
