/** Human output of the queue tools, shaped like Postfix's `mailq` and `postcat`. */
import type { MessageSummary } from '../spool/index.js';
import type { MessageView } from './queue.js';

export function fmtTime(ms: number): string {
  return new Date(ms).toISOString().replace('T', ' ').slice(0, 19);
}

/** `queue list`: one block per message, recipients with their last error, like mailq. */
export function queueTable(rows: MessageSummary[]): string {
  if (rows.length === 0) return 'Mail queue is empty\n';
  const out: string[] = [];
  out.push('-Queue ID-           -Role/State-      -Size- ----Arrival Time---- -Attempts- -Next Attempt------- -Sender/Recipient-');
  for (const m of rows) {
    out.push(
      `${m.id.padEnd(20)} ${`${m.role}/${m.state}`.padEnd(17)} ${String(m.size).padStart(6)} ${fmtTime(m.receivedAt)} ${String(m.attempts).padStart(10)} ${fmtTime(m.nextAttemptAt)} ${m.sender || '<>'}`,
    );
    if (m.lastError) out.push(`${' '.repeat(21)}(${m.lastError})`);
    for (const r of m.recipients) out.push(`${' '.repeat(21)}${r.address} [${r.state}]${r.lastError ? ` (${r.lastError})` : ''}`);
    out.push('');
  }
  const bytes = rows.reduce((n, m) => n + m.size, 0);
  out.push(`-- ${Math.ceil(bytes / 1024)} Kbytes in ${rows.length} Request${rows.length === 1 ? '' : 's'}.`);
  return out.join('\n') + '\n';
}

/** `queue show`: envelope, recipients, history, headers (and body), like postcat. */
export function showText(v: MessageView): string {
  const out: string[] = [];
  out.push('*** ENVELOPE RECORDS ***');
  out.push(`queue_id: ${v.id}`);
  out.push(`role: ${v.role}   state: ${v.state}   origin: ${v.origin}`);
  out.push(`message_size: ${v.size}`);
  out.push(`message_arrival_time: ${fmtTime(v.receivedAt)} UTC`);
  out.push(`client: ${v.client ?? 'unknown'}`);
  out.push(`shadow_peer: ${v.shadowPeer ?? (v.role === 'shadow' ? '(this node holds the shadow copy)' : 'none')}`);
  out.push(`sender: ${v.sender || '<>'}`);
  for (const r of v.recipients) out.push(`recipient: ${r.address} [${r.state}]${r.lastError ? ` (${r.lastError})` : ''}`);
  out.push('*** HISTORY ***');
  for (const h of v.history) out.push(`${h.at === null ? ' '.repeat(19) : fmtTime(h.at)}  ${h.event}`);
  out.push('*** MESSAGE CONTENTS ***');
  if (v.body !== undefined) out.push(v.body.replace(/\r\n/g, '\n').replace(/\n$/, ''));
  else out.push(v.headers.replace(/\r\n/g, '\n'), '', '(body not shown: --body)');
  out.push('*** END OF MESSAGE ***');
  return out.join('\n') + '\n';
}
