/** The connection limiter (smtp/limits.ts) on its own, on an injected clock. */
import { describe, it, expect } from 'vitest';
import { ConnectionLimiter } from '../../src/smtp/limits.js';

const limits = { maxConnections: 3, maxConnectionsPerAddress: 2, connectionRatePerMinute: 4 };

function limiter(o = limits) {
  const clock = { now: 1_000_000 };
  return { l: new ConnectionLimiter(o, () => clock.now), clock };
}

describe('ConnectionLimiter', () => {
  it('refuses past maxConnections in all and past maxConnectionsPerAddress from one address', () => {
    const { l } = limiter({ ...limits, connectionRatePerMinute: 0 });
    expect(l.admit('s1', '192.0.2.1', false)).toBeNull();
    expect(l.admit('s2', '192.0.2.1', false)).toBeNull();
    expect(l.admit('s3', '192.0.2.1', false)).toBe('too many connections from this address');
    expect(l.admit('s4', '192.0.2.2', false)).toBeNull();
    expect(l.connections).toBe(3);
    expect(l.admit('s5', '192.0.2.3', false)).toBe('too many connections');
    // a session that ends frees its slots; one that was refused never held any
    l.release('s3', '192.0.2.1');
    expect(l.connections).toBe(3);
    l.release('s1', '192.0.2.1');
    expect(l.connections).toBe(2);
    expect(l.admit('s6', '192.0.2.1', false)).toBeNull();
  });

  it('limits connection attempts per address in any 60 s window', () => {
    const { l, clock } = limiter();
    for (let i = 0; i < 4; i++) {
      expect(l.admit(`a${i}`, '192.0.2.1', false)).toBeNull();
      l.release(`a${i}`, '192.0.2.1');
      clock.now += 1000;
    }
    expect(l.admit('a4', '192.0.2.1', false)).toBe('connection rate limit exceeded');
    expect(l.admit('b0', '192.0.2.9', false)).toBeNull(); // another address has its own window
    l.release('b0', '192.0.2.9');
    // attempts leave the window 60 s after they were made (the refused one counts too): at
    // +61 s the two first are gone, three remain, and the new one is the fourth
    clock.now = 1_000_000 + 61_001;
    expect(l.admit('a5', '192.0.2.1', false)).toBeNull();
    expect(l.admit('a6', '192.0.2.1', false)).toBe('connection rate limit exceeded');
  });

  it('exempts allowedNetworks from the per-address limits, not from maxConnections', () => {
    const { l } = limiter();
    for (let i = 0; i < 3; i++) expect(l.admit(`m${i}`, '127.0.0.1', true)).toBeNull();
    expect(l.admit('m3', '127.0.0.1', true)).toBe('too many connections');
  });

  it('takes new limits on reload; the sessions admitted stay counted', () => {
    const { l } = limiter({ ...limits, connectionRatePerMinute: 0 });
    expect(l.admit('s1', '192.0.2.1', false)).toBeNull();
    expect(l.admit('s2', '192.0.2.2', false)).toBeNull();
    l.setLimits({ ...limits, maxConnections: 2, connectionRatePerMinute: 0 });
    expect(l.admit('s3', '192.0.2.3', false)).toBe('too many connections');
  });
});
