/**
 * Outbound TLS (and AUTH) options for the next hop (the option names are nodemailer's, which the client used to be).
 *
 * - `none`: never STARTTLS.
 * - `opportunistic` (Postfix's `may`): STARTTLS when offered, certificate not verified (an
 *   unverified channel still beats clear text); a refused STARTTLS continues in clear text.
 * - `required` (Postfix's `secure`): STARTTLS (TLS 1.2+) or nothing, with the certificate
 *   verified against `delivery.nextHop.ca` (else the system CAs) for the name
 *   `delivery.nextHop.tlsServerName` (else `host`). Without it nothing is sent: the attempt
 *   is a temporary failure, the message stays queued with a reason saying so.
 * - `auth`: next-hop credentials; the client sends them only where the server offers AUTH,
 *   and never after a failed STARTTLS.
 */
import { readFileSync } from 'node:fs';

export interface NextHop {
  host: string;
  port: number;
  tls: 'none' | 'opportunistic' | 'required';
  /** the CA to verify the next hop with (PEM, read by the caller), else the system CAs */
  ca?: Buffer;
  tlsServerName?: string;
  auth?: { user: string; pass?: string; passFile?: string };
}

export interface NextHopTransportOptions {
  host: string;
  port: number;
  secure: false;
  ignoreTLS: boolean;
  requireTLS: boolean;
  opportunisticTLS: boolean;
  tls: { rejectUnauthorized: boolean; minVersion?: 'TLSv1.2'; ca?: Buffer; servername?: string };
  auth?: { user: string; pass: string };
}

export function nextHopTransportOptions(hop: NextHop): NextHopTransportOptions {
  const required = hop.tls === 'required';
  const o: NextHopTransportOptions = {
    host: hop.host,
    port: hop.port,
    secure: false,
    ignoreTLS: hop.tls === 'none',
    requireTLS: required,
    opportunisticTLS: hop.tls === 'opportunistic',
    tls: required
      ? {
          rejectUnauthorized: true,
          minVersion: 'TLSv1.2',
          ...(hop.ca ? { ca: hop.ca } : {}),
          servername: hop.tlsServerName ?? hop.host,
        }
      : { rejectUnauthorized: false },
  };
  if (hop.auth) {
    const pass = hop.auth.pass ?? readFileSync(hop.auth.passFile!, 'utf8').replace(/\r?\n$/, '');
    o.auth = { user: hop.auth.user, pass };
  }
  return o;
}

/**
 * When a send failed because TLS could not be had, the reason to record (and the failure
 * is temporary, whatever code the next hop answered STARTTLS with); otherwise null.
 */
export function tlsFailureReason(err: { code?: string; message: string; response?: string }, hop: NextHop): string | null {
  if (hop.tls !== 'required') return null;
  // a failed handshake surfaces as a socket error (e.g. "unable to verify the first certificate")
  const handshake = err.code === 'ESOCKET' && /certificate|TLS|SSL|handshake|altname|self[- ]signed|verify/i.test(err.message);
  if (err.code !== 'ETLS' && !handshake) return null;
  const why = err.response ? `STARTTLS refused: ${err.response}` : err.message.replace(/^Error initiating TLS - /, '');
  return `TLS required (delivery.nextHop.tls=required) but not established with ${hop.host}:${hop.port}: ${why}; not sent`;
}
