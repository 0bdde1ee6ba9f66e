/** Address ranges (allowedNetworks) with IPv4-mapped IPv6 handled, via ipaddr.js. */
import ipaddr from 'ipaddr.js';

export class NetworkList {
  private readonly ranges: Array<[ipaddr.IPv4 | ipaddr.IPv6, number]>;

  constructor(cidrs: string[]) {
    this.ranges = cidrs.map((c) => {
      if (c.includes('/')) return ipaddr.parseCIDR(c);
      const a = ipaddr.parse(c);
      return [a, a.kind() === 'ipv4' ? 32 : 128] as [ipaddr.IPv4 | ipaddr.IPv6, number];
    });
  }

  contains(address: string | undefined): boolean {
    if (!address) return false;
    let a: ipaddr.IPv4 | ipaddr.IPv6;
    try {
      a = ipaddr.process(address); // ::ffff:1.2.3.4 → 1.2.3.4
    } catch {
      return false;
    }
    return this.ranges.some(([net, bits]) => a.kind() === net.kind() && a.match(net, bits));
  }
}
