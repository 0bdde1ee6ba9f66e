/** The relay policy (smtp/access.ts) on its own: who may send to which recipient. */
import { describe, it, expect } from 'vitest';
import { RelayPolicy } from '../../src/smtp/access.js';

const policy = new RelayPolicy(['relay.test', '.sub.test', 'bücher.example.']);
const check = (rcpt: string, permitted = false, rawPath = rcpt) => policy.check(rawPath, rcpt, permitted);

describe('RelayPolicy', () => {
  it('lets permitted clients (allowedNetworks, authenticated) relay to any recipient, as written', () => {
    for (const r of ['user@elsewhere.test', 'a%b@relay.test', 'b!a@relay.test', '"a@b"@relay.test']) expect(check(r, true)).toBeNull();
    expect(check('user@elsewhere.test', true, '@hop.test:user@elsewhere.test')).toBeNull();
  });

  it('lets anyone else send only to relayDomains (exact, .suffix for subdomains, IDN, any case, trailing dot)', () => {
    expect(check('user@relay.test')).toBeNull();
    expect(check('user@RELAY.Test.')).toBeNull();
    expect(check('user@a.sub.test')).toBeNull();
    expect(check('user@sub.test')).toBe('not permitted'); // `.sub.test` is subdomains only
    expect(check('user@bücher.example')).toBeNull();
    expect(check('user@xn--bcher-kva.example')).toBeNull();
    expect(check('user@other.test')).toBe('not permitted');
    expect(check('postmaster')).toBe('not permitted');
  });

  it('refuses addresses a later hop could re-route, even to a relay domain', () => {
    expect(check('user@relay.test', false, '@relay.test:user@relay.test')).toBe('source route');
    expect(check('user%evil.test@relay.test')).toBe('percent hack');
    expect(check('evil.test!user@relay.test')).toBe('bang path');
    expect(check('"user@evil.test"@relay.test')).toBe('quoted local part');
    expect(check('"user%evil"@relay.test')).toBe('quoted local part');
    expect(check('"plain user"@relay.test')).toBeNull();
  });
});
