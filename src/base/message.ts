/**
 * A message as the parts hand it to each other: its envelope and its raw bytes (one type,
 * from the SMTP listener through the spool and the shadow link to delivery and bounces),
 * plus the few things parts read from or write into the bytes.
 */
import type { Body } from './buffers.js';

export interface Envelope {
  /** queue id: the same on the primary and its shadow copy */
  id: string;
  /** MAIL FROM ('' for the null sender <>) */
  sender: string;
  recipients: string[];
  /** the message as received, with our Received header prepended (in the pieces it arrived in, or one buffer) */
  body: Body;
  /** wall time of arrival (ms) */
  receivedAt: number;
}

const CR = 0x0d;
const LF = 0x0a;

/**
 * The header section of a raw message: everything before the first empty line. `lines` ends
 * with the line break of the last header line; `text` is without it. A message without an
 * empty line is all header.
 */
export function headerSection(raw: Buffer): { lines: Buffer; text: string } {
  for (let lf = raw.indexOf(LF); lf >= 0; lf = raw.indexOf(LF, lf + 1)) {
    const next = raw[lf + 1] === CR ? lf + 2 : lf + 1;
    if (raw[next] !== LF) continue;
    const end = lf > 0 && raw[lf - 1] === CR ? lf - 1 : lf;
    return { lines: raw.subarray(0, lf + 1), text: raw.toString('utf8', 0, end) };
  }
  return { lines: raw, text: raw.toString('utf8') };
}

/** An RFC 5322 date in UTC, e.g. "Thu, 26 Nov 2026 08:30:52 +0000". */
export function rfc5322Date(d: Date): string {
  return d.toUTCString().replace('GMT', '+0000');
}

/** A message received over SMTP: its envelope and the client it came from. */
export interface InboundMessage extends Envelope {
  client: { address: string; helo: string };
}
