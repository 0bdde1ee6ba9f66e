/**
 * Relay access: who may send to which recipient (decided at RCPT, Postfix's
 * `permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination`).
 *
 * - A *permitted* client (address in `smtp.allowedNetworks`, or authenticated) may relay to
 *   any recipient. Source routes from it are stripped as RFC 5321 §3.6.1 / appendix C asks
 *   (smtp-server does that; Postfix does the same): `<@a,@b:user@c>` is delivered to `user@c`.
 * - Anyone else may only send to `smtp.relayDomains` (an entry `.example.com` also matches
 *   subdomains), and never with an address that a later hop could re-route: a source route,
 *   a `%` hack (`user%other@relay`), a bang path (`other!user@relay`) or a quoted local part
 *   carrying one of those or an `@` (`"user@other"@relay`). All get Postfix's
 *   `554 5.7.1 <rcpt>: Relay access denied`.
 */
import { domainToUnicode } from 'node:url';

export type RelayRefusal = 'not permitted' | 'source route' | 'percent hack' | 'bang path' | 'quoted local part';

export class RelayPolicy {
  private readonly exact = new Set<string>();
  private readonly suffixes: string[] = [];

  constructor(relayDomains: string[]) {
    for (const d of relayDomains) {
      const norm = normDomain(d.replace(/^\./, ''));
      if (d.startsWith('.')) this.suffixes.push('.' + norm);
      else this.exact.add(norm);
    }
  }

  private isRelayDomain(domain: string): boolean {
    const d = normDomain(domain);
    return this.exact.has(d) || this.suffixes.some((s) => d.endsWith(s));
  }

  /**
   * @param rawPath the path as the client wrote it between `<` and `>` (before smtp-server
   *   stripped a source route)
   * @param address the address smtp-server parsed from it
   * @param permitted the client may relay (allowed network or authenticated)
   * @returns null when the recipient is accepted, else why not
   */
  check(rawPath: string, address: string, permitted: boolean): RelayRefusal | null {
    if (permitted) return null;
    if (rawPath.trimStart().startsWith('@')) return 'source route';
    const at = address.lastIndexOf('@');
    if (at < 0) return 'not permitted'; // <postmaster> without a domain: not a relay domain of ours
    const local = address.slice(0, at);
    if (local.startsWith('"')) {
      if (/[@%!:]/.test(local)) return 'quoted local part';
    } else {
      if (local.includes('%')) return 'percent hack';
      if (local.includes('!')) return 'bang path';
    }
    return this.isRelayDomain(address.slice(at + 1)) ? null : 'not permitted';
  }
}

function normDomain(d: string): string {
  const lower = d.toLowerCase().replace(/\.$/, '');
  return domainToUnicode(lower) || lower;
}
