/**
 * The benchmark's picture: one horizontal bar per ratio target, shadowrelay's advantage over
 * Postfix measured in the same run (throughput: shadowrelay / Postfix; times: Postfix /
 * shadowrelay — so longer is better everywhere), a line at 1.0 (parity), a tick at what the
 * target asks, green when met and red when not. Plain SVG, no dependency.
 */
import { ratioTargets, type BenchReport } from './report.js';

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export function chartSvg(r: BenchReport): string {
  const rows = ratioTargets(r);
  const W = 900;
  const left = 180;
  const right = 90;
  const rowH = 30;
  const top = 70;
  const H = top + rows.length * rowH + 50;
  const max = Math.max(2, ...rows.map((x) => Math.min(4, x.advantage ?? 0), ...rows.map((x) => x.needs))) * 1.1;
  const x = (v: number) => left + (Math.min(v, max) / max) * (W - left - right);
  const la = r.machine.loadavgStart.join(' / ');
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="DejaVu Sans, Arial, sans-serif" font-size="13">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${W / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">shadowrelay against ${esc(r.tools.postfix ? `Postfix ${r.tools.postfix}` : 'Postfix')}, same run (× Postfix; longer is better)</text>`);
  out.push(`<text x="${W / 2}" y="44" text-anchor="middle" fill="#555">${esc(`${r.startedAt} · ${r.machine.cpus} CPUs · loadavg at start ${la} · tick = target`)}</text>`);
  for (const t of [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4].filter((t) => t <= max)) {
    out.push(`<line x1="${x(t)}" y1="${top - 8}" x2="${x(t)}" y2="${top + rows.length * rowH}" stroke="${t === 1 ? '#000' : '#ddd'}" stroke-width="${t === 1 ? 1.5 : 1}"/>`);
    out.push(`<text x="${x(t)}" y="${top + rows.length * rowH + 16}" text-anchor="middle" fill="#555">${t}×</text>`);
  }
  rows.forEach((row, i) => {
    const y = top + i * rowH;
    out.push(`<text x="${left - 8}" y="${y + 19}" text-anchor="end">${esc(row.label)}</text>`);
    if (row.advantage === null) {
      out.push(`<text x="${left + 6}" y="${y + 19}" fill="#888">not measured</text>`);
      return;
    }
    const met = row.advantage >= row.needs - 1e-9;
    out.push(`<rect x="${left}" y="${y + 6}" width="${Math.max(1, x(row.advantage) - left)}" height="${rowH - 12}" fill="${met ? '#2e8b57' : '#c0392b'}"/>`);
    out.push(`<line x1="${x(row.needs)}" y1="${y + 2}" x2="${x(row.needs)}" y2="${y + rowH - 2}" stroke="#1f4e9a" stroke-width="3"/>`);
    out.push(`<text x="${x(row.advantage) + 6}" y="${y + 19}">${row.advantage.toFixed(2)}×${row.advantage > max ? ' (off scale)' : ''}</text>`);
  });
  out.push(`<text x="${left}" y="${H - 10}" fill="#555">green: met · red: not met · blue tick: target · msg/s: shadowrelay / Postfix · times: Postfix / shadowrelay</text>`);
  out.push('</svg>');
  return out.join('\n') + '\n';
}
