/** Network addresses: `host:port` as the configuration writes it, and binding a server to one. */
import type net from 'node:net';

export interface HostPort {
  host: string;
  port: number;
}

/** "host:port" or "[v6]:port" → {host, port}; null when malformed. */
export function parseHostPort(s: string): HostPort | null {
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$/.exec(s) ?? /^([^:\s[\]]+):(\d{1,5})$/.exec(s);
  if (!m) return null;
  const port = Number(m[2]);
  if (port > 65535) return null;
  return { host: m[1]!, port };
}

/** {host, port} → "host:port" ("[v6]:port" for IPv6), as the configuration writes it. */
export function formatHostPort(hp: HostPort): string {
  return hp.host.includes(':') ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

/** Starts `server` listening; resolves with the bound address (the real port when 0 was asked). */
export function listenOn(server: net.Server, host: string, port: number): Promise<HostPort> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const a = server.address();
      resolve({ host, port: typeof a === 'object' && a ? a.port : port });
    });
  });
}
