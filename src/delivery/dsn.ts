/**
 * Delivery status notifications (RFC 3464): the bounce sent to the envelope sender of a
 * message some of whose recipients failed permanently (5xx) or expired (queue lifetime).
 *
 * One `multipart/report; report-type=delivery-status` message (RFC 6522): a human-readable
 * part in Postfix's words, a `message/delivery-status` part (Reporting-MTA, Arrival-Date;
 * per recipient Final-Recipient, Action: failed, Status, Remote-MTA, Diagnostic-Code), and
 * the original headers as `text/rfc822-headers`. Sent from the null sender `<>` with
 * `Auto-Submitted: auto-replied` (RFC 3834) so it never bounces back. The MIME structure
 * (boundaries, transfer encodings, Date, Message-ID) is nodemailer's MimeNode.
 */
import MimeNode from 'nodemailer/lib/mime-node';
import { foldLines } from 'nodemailer/lib/mime-funcs';
import { enhancedCodeOf } from '../base/replies.js';
import { headerSection, rfc5322Date } from '../base/message.js';

/** The error text ops/queue.ts gives recipients an operator deleted with a bounce. */
export const OPERATOR_DELETED = 'deleted by the operator';

export interface DsnRecipient {
  address: string;
  /** enhanced status code, e.g. 5.1.1 */
  status: string;
  /** `smtp; <reply>` or `X-Shadowrelay; <text>` */
  diagnostic: string;
  /** `dns; <host>` of the MTA that answered, when one did */
  remoteMta?: string;
  /** failed because the queue lifetime passed (not a permanent refusal) */
  expired: boolean;
}

export interface DsnInput {
  reportingMta: string;
  queueId: string;
  /** the original envelope sender: the bounce goes to it */
  sender: string;
  arrivalDate: Date;
  recipients: DsnRecipient[];
  /** the original message (its headers are returned) */
  original: Buffer;
  now?: Date;
}

const SMTP_REPLY = /^(\d)\d\d[ -]/;

/**
 * The DSN fields of one failed recipient from its last error (an SMTP reply or a local
 * error). Only a 5xx fails a recipient at once; a failure with any other last error is one
 * whose queue lifetime ran out (expired).
 */
export function recipientFailure(address: string, lastError: string | null, nextHop: string): DsnRecipient {
  const err = oneLine(lastError ?? 'delivery time expired');
  // deleted with a bounce by an operator (ops/queue.ts): not refused by anyone, not expired
  if (err === OPERATOR_DELETED) return { address, status: '5.0.0', diagnostic: `X-Shadowrelay; message ${err}`, expired: false };
  const m = SMTP_REPLY.exec(err);
  const expired = !m || m[1] !== '5';
  if (m) {
    const enhanced = enhancedCodeOf(err);
    const status = enhanced ?? (m[1] === '5' ? '5.0.0' : expired ? '4.4.7' : '4.0.0');
    return { address, status, diagnostic: `smtp; ${err}`, remoteMta: `dns; ${nextHop}`, expired };
  }
  // no SMTP reply: the next hop could not be reached (RFC 3463 X.4.1 "no answer from host")
  return { address, status: '4.4.1', diagnostic: `X-Shadowrelay; ${err}`, expired };
}

function oneLine(s: string): string {
  // replies may span lines; control characters have no place in a header field
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\r\n\t]+/g, ' ').replace(/[\x00-\x1f\x7f]/g, '').slice(0, 900).trim();
}

/** RFC 6533: a non-ASCII address is typed utf-8, an ASCII one rfc822. */
function addrType(a: string): string {
  // eslint-disable-next-line no-control-regex
  return /^[\x00-\x7f]*$/.test(a) ? `rfc822; ${a}` : `utf-8; ${a}`;
}

function field(name: string, value: string): string {
  return foldLines(`${name}: ${value}`, 76, false).replace(/\r?\n/g, '\r\n');
}

export async function buildDsn(i: DsnInput): Promise<Buffer> {
  const now = i.now ?? new Date();
  const root = new MimeNode('multipart/report; report-type=delivery-status', { hostname: i.reportingMta });
  root.setHeader('From', `Mail Delivery System <MAILER-DAEMON@${i.reportingMta}>`);
  root.setHeader('To', i.sender);
  root.setHeader('Subject', 'Undelivered Mail Returned to Sender');
  root.setHeader('Date', rfc5322Date(now));
  root.setHeader('Auto-Submitted', 'auto-replied');

  const anyExpired = i.recipients.some((r) => r.expired);
  const lines = [
    `This is the mail system at host ${i.reportingMta}.`,
    '',
    "I'm sorry to have to inform you that your message could not",
    'be delivered to one or more recipients. Its headers are attached below.',
    '',
    'For further assistance, please send mail to postmaster.',
    '',
    'If you do so, please include this problem report.',
    '',
    '                   The mail system',
    '',
  ];
  for (const r of i.recipients) {
    const why = r.diagnostic.replace(/^[^;]*;\s*/, '');
    if (r.expired) lines.push(`<${r.address}>: delivery time expired; last error: ${why}`);
    else lines.push(`<${r.address}>: ${r.remoteMta ? `host ${r.remoteMta.replace(/^dns;\s*/, '')} said: ` : ''}${why}`);
  }
  if (anyExpired) lines.push('', 'The message stayed in the queue for its whole lifetime without being delivered.');
  root.createChild('text/plain; charset=us-ascii').setHeader('Content-Description', 'Notification').setContent(lines.join('\r\n') + '\r\n');

  const report: string[] = [
    field('Reporting-MTA', `dns; ${i.reportingMta}`),
    field('X-Shadowrelay-Queue-ID', i.queueId),
    field('Arrival-Date', rfc5322Date(i.arrivalDate)),
    '',
  ];
  for (const r of i.recipients) {
    report.push(field('Final-Recipient', addrType(r.address)));
    report.push('Action: failed');
    report.push(`Status: ${r.status}`);
    if (r.remoteMta) report.push(field('Remote-MTA', r.remoteMta));
    report.push(field('Diagnostic-Code', r.diagnostic));
    report.push('');
  }
  root.createChild('message/delivery-status').setHeader('Content-Description', 'Delivery report').setContent(report.join('\r\n'));

  root
    .createChild('text/rfc822-headers')
    .setHeader('Content-Description', 'Undelivered Message Headers')
    .setContent(headerSection(i.original).lines);
  return new Promise<Buffer>((resolve, reject) => root.build((err, buf) => (err ? reject(err) : resolve(buf))));
}
