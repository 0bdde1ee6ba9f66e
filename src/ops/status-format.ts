/**
 * `shadowrelay status`: one terminal screen from the running node's overview (the same
 * data as the dashboard's, from `GET /api/overview`): the node and its readiness, each peer
 * with its link state and round trip, the queue by state, the oldest message, disk use, the
 * last minutes' traffic, the replies recipients wait on, and when each certificate expires.
 */
import type { Overview } from './dashboard.js';
import { fmtTime } from './queue-format.js';

export function age(seconds: number | null): string {
  if (seconds === null) return '-';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const u = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${u[i]}`;
}

const ms = (v: number | null) => (v === null ? '-' : v < 10 ? v.toFixed(1) : String(Math.round(v)));

function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd());
}

/** Days left, flagged within 14 days (the alert rule's horizon) and once expired. */
function certLeft(seconds: number): string {
  const days = Math.floor(seconds / 86400);
  if (seconds < 0) return 'EXPIRED';
  return days < 14 ? `${days} days  EXPIRES SOON` : `${days} days`;
}

export function statusText(o: Overview, admin: string): string {
  const out: string[] = [];
  const ready = o.ready.ready ? 'ready' : `NOT READY: ${o.ready.reasons.join('; ')}`;
  out.push(`${o.node}  shadowrelay ${o.version}  up ${age((o.now - o.startedAt) / 1000)}  ${ready}`);
  out.push(`admin ${admin}  (dashboard: http://${admin}/)`);
  out.push('');
  out.push(
    ...table([
      ['PEER', 'LINK', 'RTT ms', 'HEARTBEAT', 'LAST COPY', `REPL p50/p99 ms (${o.peers[0]?.replication.windowMinutes ?? 5}m)`, 'FAILURES', 'PROMOTIONS', 'LAST ERROR'],
      ...o.peers.map((p) => [
        p.name,
        p.link.toUpperCase() === 'UP' ? 'up' : p.link.toUpperCase(),
        ms(p.rttMs),
        p.lastSeenAgeSeconds === null ? 'never' : `${age(p.lastSeenAgeSeconds)} ago`,
        p.lastPutAgeSeconds === null ? '-' : `${age(p.lastPutAgeSeconds)} ago`,
        `${ms(p.replication.p50Ms)}/${ms(p.replication.p99Ms)} (${p.replication.count})`,
        String(p.replicationFailures),
        String(p.promotions),
        p.lastError ?? '-',
      ]),
    ]),
  );
  out.push('');
  const q = o.queue;
  out.push(`queue      queued ${q.queued}  deferred ${q.deferred}  held ${q.held}  being accepted ${q.spooled}  shadow copies ${q.shadow}  discards owed ${q.discardsPending}`);
  out.push(`oldest     primary ${age(q.oldestPrimaryAgeSeconds)}  shadow ${age(q.oldestShadowAgeSeconds)}`);
  out.push(`spool      ${bytes(o.spool.bytes)}${o.spool.maxBytes ? ` of ${bytes(o.spool.maxBytes)} (${((100 * o.spool.bytes) / o.spool.maxBytes).toFixed(1)} %)` : ' (no cap)'}`);
  const r = o.recent;
  out.push(
    `last ${r.windowMinutes}m    accepted ${r.accepted}  refused ${r.refused}  451 ${r.refused451} (${(r.rate451 * 100).toFixed(1)} %)    promotions ${o.totals.promotions}  duplicate risks ${o.totals.duplicateRisks}  degraded ${o.totals.degraded}`,
  );
  out.push('');
  out.push('last errors (pending recipients)');
  if (o.errors.length === 0) out.push('  none');
  for (const e of o.errors.slice(0, 5)) out.push(`  ${String(e.recipients).padStart(6)} rcpt ${String(e.messages).padStart(6)} msg  ${e.error}`);
  out.push('');
  out.push('certificates');
  if (o.certificates.length === 0) out.push('  none');
  out.push(...table(o.certificates.map((c) => [`  ${c.certificate}`, c.subject.split(', ')[0] ?? c.subject, `expires ${fmtTime(c.notAfter)} UTC`, certLeft(c.secondsLeft)])));
  return out.join('\n') + '\n';
}
