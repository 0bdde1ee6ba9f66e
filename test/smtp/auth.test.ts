/** The AUTH throttle (smtp/auth.ts) on its own, on an injected clock. */
import { describe, it, expect } from 'vitest';
import { AuthThrottle } from '../../src/smtp/auth.js';

const settings = { maxFailures: 3, failureWindowMs: 60_000, lockoutMs: 300_000 };

function throttle() {
  const clock = { now: 5_000_000 };
  return { t: new AuthThrottle(settings, () => clock.now), clock };
}

describe('AuthThrottle', () => {
  it('locks an address out after maxFailures within the window, for lockoutMs', () => {
    const { t, clock } = throttle();
    expect(t.fail('192.0.2.1')).toBe(false);
    clock.now += 10_000;
    expect(t.fail('192.0.2.1')).toBe(false);
    expect(t.locked('192.0.2.1')).toBe(false);
    clock.now += 10_000;
    expect(t.fail('192.0.2.1')).toBe(true);
    expect(t.locked('192.0.2.1')).toBe(true);
    expect(t.locked('192.0.2.2')).toBe(false); // per address
    clock.now += settings.lockoutMs - 1;
    expect(t.locked('192.0.2.1')).toBe(true);
    clock.now += 1;
    expect(t.locked('192.0.2.1')).toBe(false);
  });

  it('counts failures in a sliding window of failureWindowMs', () => {
    const { t, clock } = throttle();
    const t0 = clock.now;
    t.fail('192.0.2.1');
    clock.now = t0 + settings.failureWindowMs - 1000;
    t.fail('192.0.2.1');
    // the first failure has left the window, the second has not: two in the window, not three
    clock.now = t0 + settings.failureWindowMs + 500;
    expect(t.fail('192.0.2.1')).toBe(false);
    expect(t.locked('192.0.2.1')).toBe(false);
    expect(t.fail('192.0.2.1')).toBe(true);
  });

  it('keeps failures and lockouts in force across new settings (reload)', () => {
    const { t } = throttle();
    t.fail('192.0.2.1');
    t.fail('192.0.2.1');
    t.fail('192.0.2.9');
    t.fail('192.0.2.9');
    t.fail('192.0.2.9');
    const same = t.withSettings({ ...settings, maxFailures: 5 });
    expect(same).toBe(t);
    expect(t.locked('192.0.2.9')).toBe(true);
    expect(t.fail('192.0.2.1')).toBe(false); // 3 failures now, 5 needed
    expect(t.fail('192.0.2.1')).toBe(false);
    expect(t.fail('192.0.2.1')).toBe(true);
  });
});
