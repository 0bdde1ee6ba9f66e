/**
 * Benchmark results: the JSON shape, the markdown table, and the verdict on the issue's
 * targets (shadowrelay against Postfix, measured in the same run).
 */

/** a change in percent with its sign: +2.5, -0.7 */
const signed = (pct: number): string => `${pct >= 0 ? '+' : ''}${pct.toFixed(1)}`;

export interface ThroughputFigures {
  sessions: number;
  messages: number;
  size: number;
  generator: 'smtp-source' | 'node';
  accepted: number;
  /** refused messages (the Node generator goes on after a refusal; smtp-source stops) */
  refused: number;
  firstRefusal: string | null;
  acceptedPerSec: number;
  /** null for the sink alone (accepting is the end) */
  endToEndPerSec: number | null;
  wallMs: number;
  endToEndMs: number | null;
  /** CPU (user+system) of the system's processes per message, until the last one reached the sink */
  cpuMsPerMessage: number | null;
  /** fsync + fdatasync calls per message on each machine (node) during the pass */
  fsyncPerMessage?: Record<string, number>;
}

export interface LatencyFigures {
  sessions: number;
  messages: number;
  size: number;
  accepted: number;
  failed: number;
  firstError: string | null;
  acceptedPerSec: number;
  p50Ms: number | null;
  p99Ms: number | null;
  maxMs: number | null;
}

/** The cost of logging, measured in one pair: rounds alternating info and warn (changed live). */
export interface LoggingFigures {
  rounds: Array<{ level: 'info' | 'warn'; acceptedPerSec: number; cpuMsPerMessage: number | null }>;
  /** means over the rounds at each level */
  info: { acceptedPerSec: number; cpuMsPerMessage: number | null };
  warn: { acceptedPerSec: number; cpuMsPerMessage: number | null };
}

export interface SerialFigures {
  messages: number;
  /** smtp-source -s 1 wall time per message (connect, EHLO, MAIL, RCPT, DATA, QUIT) */
  msPerMessage: number | null;
  latency: LatencyFigures;
  fsyncPerMessage?: Record<string, number>;
}

/** One slow-disk pass: every fsync delayed by delayMs (serialDevice: one at a time per machine). */
export interface SlowDiskFigures {
  delayMs: number;
  serialDevice: boolean;
  small: ThroughputFigures;
  serial: SerialFigures;
}

export interface MemoryFigures {
  /** peak memory in bytes per process (shadowrelay: VmHWM of each node; Postfix: sampled peak of the sum of its processes' PSS) */
  peakRss: Record<string, number | null>;
}

export interface SystemResult {
  system: 'ceiling' | 'postfix' | 'shadowrelay' | 'shadowrelay-warn';
  label: string;
  skipped?: string;
  error?: string;
  loadavgBefore?: [number, number, number];
  loadavgAfter?: [number, number, number];
  /** the first messages after a start, nothing warmed up */
  cold?: ThroughputFigures;
  /** the same load right after the cold pass */
  small?: ThroughputFigures;
  latency?: LatencyFigures;
  serial?: SerialFigures;
  large?: ThroughputFigures;
  manySessions?: ThroughputFigures & MemoryFigures;
  memory?: MemoryFigures;
  slowDisk?: SlowDiskFigures[];
  logging?: LoggingFigures;
  leftover?: Record<string, number>;
}

export interface LeakCheck {
  minutes: number;
  sessions: number;
  size: number;
  accepted: number;
  failed: number;
  acceptedPerSec: number;
  p99Ms: number | null;
  /** per node: RSS (bytes) sampled over time, and peak */
  nodes: Record<string, { peakRss: number | null; firstMinuteMeanRss: number; lastMinuteMeanRss: number; growthPct: number }>;
  /** null: too short to judge */
  grew: boolean | null;
  verdict: string;
}

export interface BenchReport {
  startedAt: string;
  machine: { cpus: number; model: string; node: string; loadavgStart: [number, number, number]; loadavgEnd?: [number, number, number] };
  tools: { generator: string; sink: string; postfix: string | null; fsyncShim?: string | null };
  params: Record<string, number | string | boolean>;
  systems: SystemResult[];
  leak?: LeakCheck;
  targets: Array<{ target: string; measured: string; met: boolean | null }>;
  notes: string[];
}

const f0 = (x: number | null | undefined) => (x === null || x === undefined ? '–' : Math.round(x).toLocaleString('en-US'));
const f2 = (x: number | null | undefined) => (x === null || x === undefined ? '–' : x < 10 ? x.toFixed(2) : x.toFixed(1));
const mb = (x: number | null | undefined) => (x === null || x === undefined ? '–' : `${Math.round(x / 1048576)}`);
const ratio = (a: number | null | undefined, b: number | null | undefined) =>
  a === null || a === undefined || b === null || b === undefined || b === 0 ? null : a / b;
const fr = (x: number | null) => (x === null ? '–' : `${x.toFixed(2)}×`);

function rssCell(m: MemoryFigures | undefined): string {
  if (!m) return '–';
  return Object.entries(m.peakRss)
    .map(([k, v]) => `${k} ${mb(v)}`)
    .join(', ');
}

/** One issue target judged on the figures: the ratio, and whether higher is better. */
export interface TargetRatio {
  /** short label (the chart) */
  label: string;
  target: string;
  /** shadowrelay's advantage, > 1 = better than Postfix (throughput: sr / pf; times: pf / sr) */
  advantage: number | null;
  /** the advantage the target asks for */
  needs: number;
  measured: string;
}

/** The issue's ratio targets, from the systems' figures (the chart draws these). */
export function ratioTargets(r: BenchReport): TargetRatio[] {
  const sr = r.systems.find((s) => s.system === 'shadowrelay' && !s.skipped && !s.error);
  const pf = r.systems.find((s) => s.system === 'postfix' && !s.skipped && !s.error);
  const out: TargetRatio[] = [];
  const more = (label: string, target: string, a: number | null | undefined, b: number | null | undefined, needs: number, unit: string) => {
    const q = ratio(a, b);
    out.push({ label, target, advantage: q, needs, measured: q === null ? 'not measured' : `shadowrelay ${f2(a)} ${unit} vs Postfix ${f2(b)} ${unit} (${fr(q)})` });
  };
  const less = (label: string, target: string, a: number | null | undefined, b: number | null | undefined, needs: number, unit: string) => {
    const q = ratio(a, b);
    out.push({ label, target, advantage: q === null || q === 0 ? null : 1 / q, needs, measured: q === null ? 'not measured' : `shadowrelay ${f2(a)} ${unit} vs Postfix ${f2(b)} ${unit} (${fr(q)})` });
  };
  more('accepted, cold', 'accepted msg/s at C=20, 10 KB, cold ≥ 1.2 × Postfix', sr?.cold?.acceptedPerSec, pf?.cold?.acceptedPerSec, 1.2, 'msg/s');
  more('end-to-end, cold', 'end-to-end msg/s at C=20, 10 KB, cold ≥ 1.2 × Postfix', sr?.cold?.endToEndPerSec, pf?.cold?.endToEndPerSec, 1.2, 'msg/s');
  more('accepted, warm', 'accepted msg/s at C=20, 10 KB, warm ≥ 1.2 × Postfix', sr?.small?.acceptedPerSec, pf?.small?.acceptedPerSec, 1.2, 'msg/s');
  more('end-to-end, warm', 'end-to-end msg/s at C=20, 10 KB, warm ≥ 1.2 × Postfix', sr?.small?.endToEndPerSec, pf?.small?.endToEndPerSec, 1.2, 'msg/s');
  less('serial connect→QUIT', 'serial time per message (C=1, connect to QUIT) ≤ 1.0 × Postfix', sr?.serial?.msPerMessage, pf?.serial?.msPerMessage, 1, 'ms');
  less('serial accept p50', 'serial accept latency p50 (C=1) ≤ 1.0 × Postfix', sr?.serial?.latency.p50Ms, pf?.serial?.latency.p50Ms, 1, 'ms');
  less('accept p99, C=20', 'accept latency p99 at C=20 ≤ 1.0 × Postfix', sr?.latency?.p99Ms, pf?.latency?.p99Ms, 1, 'ms');
  more('1 MB, C=20', '1 MB messages at C=20, accepted msg/s ≥ 1.0 × Postfix', sr?.large?.acceptedPerSec, pf?.large?.acceptedPerSec, 1, 'msg/s');
  more('1 MB, C=200', '1 MB messages at C=200, accepted msg/s ≥ 1.0 × Postfix', sr?.manySessions?.acceptedPerSec, pf?.manySessions?.acceptedPerSec, 1, 'msg/s');
  const slow = (s: SystemResult | undefined, ms: number) => s?.slowDisk?.find((d) => d.delayMs === ms && d.serialDevice);
  more('5 ms fsync, C=20', 'accepted msg/s at C=20 with 5 ms per fsync ≥ 1.5 × Postfix', slow(sr, 5)?.small.acceptedPerSec, slow(pf, 5)?.small.acceptedPerSec, 1.5, 'msg/s');
  less('5 ms fsync, serial', 'serial time per message with 5 ms per fsync ≤ 1.0 × Postfix', slow(sr, 5)?.serial.msPerMessage, slow(pf, 5)?.serial.msPerMessage, 1, 'ms');
  return out;
}

/** Fills report.targets from the systems' figures. */
export function judgeTargets(r: BenchReport): void {
  const sr = r.systems.find((s) => s.system === 'shadowrelay' && !s.skipped && !s.error);
  const t: BenchReport['targets'] = ratioTargets(r).map((x) => ({
    target: x.target,
    measured: x.measured,
    met: x.advantage === null ? null : x.advantage >= x.needs - 1e-9,
  }));
  // fsync-family calls per message per node at C=20 (warm), and serially against Postfix's
  const fs = sr?.small?.fsyncPerMessage;
  const worstFs = fs && Object.keys(fs).length ? Math.max(...Object.values(fs)) : null;
  t.push({
    target: '≤ 1.0 fsync per message per node at C=20 (warm)',
    measured: fs ? Object.entries(fs).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ') : 'not measured (no fsync shim)',
    met: worstFs === null ? null : worstFs <= 1.0,
  });
  const pfSerial = r.systems.find((s) => s.system === 'postfix')?.serial?.fsyncPerMessage;
  const srSerial = sr?.serial?.fsyncPerMessage;
  const pfS = pfSerial ? Object.values(pfSerial)[0] : undefined;
  t.push({
    target: 'serial fsyncs per message per node ≤ Postfix (+0.02: checkpoints, off the reply path, over a short pass)',
    measured: srSerial && pfS !== undefined ? `${Object.entries(srSerial).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')} vs Postfix ${pfS.toFixed(2)}` : 'not measured',
    met: srSerial && pfS !== undefined ? Math.max(...Object.values(srSerial)) <= pfS + 0.02 : null,
  });
  // logging: info (the default) against warn. Preferred: the same pair, levels alternating
  // live round by round (shadowrelay's logging pass); else a second pair at warn (noisier)
  const warn = r.systems.find((s) => s.system === 'shadowrelay-warn' && !s.error);
  const same = sr?.logging;
  const cpuInfo = same ? same.info.cpuMsPerMessage : sr?.small?.cpuMsPerMessage;
  const cpuWarn = same ? same.warn.cpuMsPerMessage : warn?.small?.cpuMsPerMessage;
  const thrInfo = same ? same.info.acceptedPerSec : sr?.small?.acceptedPerSec;
  const thrWarn = same ? same.warn.acceptedPerSec : warn?.small?.acceptedPerSec;
  const how = same ? `same pair, ${same.rounds.length} rounds alternating` : 'a second pair at warn; noisy on a shared machine';
  t.push({
    target: 'logging at info costs < 5 % of throughput (against warn, same run)',
    measured:
      cpuInfo && cpuWarn && thrInfo && thrWarn
        ? `accepted msg/s ${signed(((thrInfo - thrWarn) / thrWarn) * 100)} % (${f0(thrInfo)} vs ${f0(thrWarn)}), CPU per message ${signed(((cpuInfo - cpuWarn) / cpuWarn) * 100)} % (${f2(cpuInfo)} vs ${f2(cpuWarn)} ms); ${how}`
        : 'not measured',
    met: cpuInfo && cpuWarn && thrInfo && thrWarn ? (cpuInfo - cpuWarn) / cpuWarn < 0.05 && (thrWarn - thrInfo) / thrWarn < 0.05 : null,
  });
  // the standard C=200 pass, else the leak check (also C=200 with 1 MB messages)
  const peaks = sr?.manySessions ? Object.values(sr.manySessions.peakRss) : r.leak ? Object.values(r.leak.nodes).map((n) => n.peakRss) : [];
  const worst = peaks.length && peaks.every((p) => p !== null) ? Math.max(...(peaks as number[])) : null;
  t.push({
    target: 'each node peak RSS ≤ 200 MB at C=200, 1 MB',
    measured: worst === null ? 'not measured' : `worst node ${mb(worst)} MB`,
    met: worst === null ? null : worst <= 200 * 1048576,
  });
  if (r.leak) t.push({ target: 'no RSS growth over the long run', measured: r.leak.verdict, met: r.leak.grew === null ? null : !r.leak.grew });
  else t.push({ target: 'no RSS growth over a 10-minute run', measured: 'run `npm run bench -- --long`', met: null });
  r.targets = t;
}

export function markdown(r: BenchReport): string {
  const out: string[] = [];
  const la = (x?: [number, number, number]) => (x ? x.join(' / ') : '–');
  out.push(`## shadowrelay benchmark — ${r.startedAt}`);
  out.push('');
  out.push(
    `Machine: ${r.machine.cpus} × ${r.machine.model}, Node ${r.machine.node}; loadavg (1/5/15 min) at start ${la(r.machine.loadavgStart)}, at end ${la(r.machine.loadavgEnd)}.`,
  );
  out.push(`Load generator: ${r.tools.generator}; latency: Node pipelining generator; sink: ${r.tools.sink}; Postfix: ${r.tools.postfix ?? 'not run'}; fsync counts and slow disks: ${r.tools.fsyncShim ?? 'none'}.`);
  out.push('');
  const cols = r.systems;
  const head = ['', ...cols.map((c) => c.label)];
  const sr = cols.find((c) => c.system === 'shadowrelay');
  const pf = cols.find((c) => c.system === 'postfix');
  const ce = cols.find((c) => c.system === 'ceiling');
  const withRatios = !!sr;
  if (withRatios) head.push('shadowrelay / Postfix', 'shadowrelay / ceiling');
  const p = r.params;
  // the systems table (the long mode runs the leak check only)
  if (cols.length > 0) {
    out.push(`| ${head.join(' | ')} |`);
    out.push(`|${head.map(() => '---').join('|')}|`);
    const row = (name: string, get: (s: SystemResult) => number | null | undefined, fmt: (x: number | null | undefined) => string, ratios = true) => {
      const cells = cols.map((c) => (c.skipped ? 'skipped' : c.error ? 'error' : fmt(get(c))));
      if (withRatios) {
        cells.push(ratios && pf ? fr(ratio(get(sr!), get(pf))) : '', ratios && ce ? fr(ratio(get(sr!), get(ce))) : '');
      }
      out.push(`| ${name} | ${cells.join(' | ')} |`);
    };
    const fsRow = (name: string, get: (s: SystemResult) => Record<string, number> | undefined) =>
      out.push(`| ${name} | ${cols.map((c) => { const v = get(c); return c.skipped ? 'skipped' : v ? Object.entries(v).map(([k, x]) => `${cols.length > 1 && c.system === 'postfix' ? '' : `${k} `}${x.toFixed(2)}`).join(', ') : '–'; }).join(' | ')} |${withRatios ? ' | |' : ''}`);
    row(`**cold**: accepted msg/s (C=${p.sessions}, ${kb(Number(p.size))}, first ${p.coldMessages} msgs after start)`, (s) => s.cold?.acceptedPerSec, f0);
    row(`**cold**: end-to-end msg/s (last message at the sink)`, (s) => s.cold?.endToEndPerSec ?? (s.system === 'ceiling' ? s.cold?.acceptedPerSec : null), f0);
    row(`**warm**: accepted msg/s (C=${p.sessions}, ${kb(Number(p.size))}, next ${p.messages} msgs)`, (s) => s.small?.acceptedPerSec, f0);
    row(`**warm**: end-to-end msg/s`, (s) => s.small?.endToEndPerSec ?? (s.system === 'ceiling' ? s.small?.acceptedPerSec : null), f0);
    row(`CPU ms per message, warm (all the system's processes)`, (s) => s.small?.cpuMsPerMessage, f2);
    fsRow(`fsync calls per message per machine, cold (C=${p.sessions})`, (s) => s.cold?.fsyncPerMessage);
    fsRow(`fsync calls per message per machine, warm (C=${p.sessions})`, (s) => s.small?.fsyncPerMessage);
    row(`accept latency p50, ms (C=${p.sessions}, Node generator)`, (s) => s.latency?.p50Ms, f2);
    row(`accept latency p99, ms (C=${p.sessions})`, (s) => s.latency?.p99Ms, f2);
    row(`  (that pass's accepted msg/s)`, (s) => s.latency?.acceptedPerSec, f0);
    row(`serial ms per message (C=1, ${kb(Number(p.size))}, connect to QUIT)`, (s) => s.serial?.msPerMessage, f2);
    row(`serial accept latency p50, ms (C=1)`, (s) => s.serial?.latency.p50Ms, f2);
    row(`serial accept latency p99, ms (C=1)`, (s) => s.serial?.latency.p99Ms, f2);
    fsRow(`fsync calls per message per machine, serial`, (s) => s.serial?.fsyncPerMessage);
    row(`accepted msg/s (C=${p.sessions}, ${kb(Number(p.largeSize))}, ${p.largeMessages} msgs)`, (s) => s.large?.acceptedPerSec, f2);
    row(`end-to-end msg/s (${kb(Number(p.largeSize))})`, (s) => s.large?.endToEndPerSec ?? (s.system === 'ceiling' ? s.large?.acceptedPerSec : null), f2);
    fsRow(`fsync calls per message per machine (${kb(Number(p.largeSize))}, C=${p.sessions})`, (s) => s.large?.fsyncPerMessage);
    row(`accepted msg/s (C=${p.manySessions}, ${kb(Number(p.largeSize))}, ${p.manyMessages} msgs, Node generator)`, (s) => s.manySessions?.acceptedPerSec, f2);
    const specs = new Map<string, { delayMs: number; serialDevice: boolean }>();
    for (const c of cols) for (const d of c.slowDisk ?? []) specs.set(`${d.delayMs}${d.serialDevice ? '' : 'p'}`, d);
    for (const [key, d] of specs) {
      const get = (s: SystemResult) => s.slowDisk?.find((x) => `${x.delayMs}${x.serialDevice ? '' : 'p'}` === key);
      const tag = `**${d.delayMs} ms per fsync**${d.serialDevice ? '' : ' (overlapping)'}`;
      row(`${tag}: accepted msg/s (C=${p.sessions}, ${p.slowMessages} msgs)`, (s) => get(s)?.small.acceptedPerSec, f0);
      row(`${tag}: end-to-end msg/s`, (s) => get(s)?.small.endToEndPerSec, f0);
      fsRow(`${tag}: fsync calls per message per machine (C=${p.sessions})`, (s) => get(s)?.small.fsyncPerMessage);
      row(`${tag}: serial ms per message (connect to QUIT)`, (s) => get(s)?.serial.msPerMessage, f2);
      row(`${tag}: serial accept latency p50, ms`, (s) => get(s)?.serial.latency.p50Ms, f2);
      fsRow(`${tag}: fsync calls per message per machine, serial`, (s) => get(s)?.serial.fsyncPerMessage);
    }
    if (sr?.logging) {
      const l = sr.logging;
      const cell = (x: LoggingFigures['info']) => `${f0(x.acceptedPerSec)} msg/s, ${f2(x.cpuMsPerMessage)} CPU ms/msg`;
      out.push(
        `| logging, same pair, level changed live (${l.rounds.map((x) => x.level).join(', ')}): info / warn | ${cols.map((c) => (c === sr ? `${cell(l.info)} / ${cell(l.warn)}` : '')).join(' | ')} |${withRatios ? ' | |' : ''}`,
      );
    }
    const memRow = (name: string, get: (s: SystemResult) => MemoryFigures | undefined) =>
      out.push(`| ${name} | ${cols.map((c) => (c.skipped ? 'skipped' : rssCell(get(c)))).join(' | ')} |${withRatios ? ' | |' : ''}`);
    memRow('peak RSS, MB (all passes except C=200)', (s) => s.memory);
    memRow(`peak RSS, MB (C=${p.manySessions}, ${kb(Number(p.largeSize))})`, (s) => s.manySessions);
    out.push('');
  }
  for (const c of cols) {
    if (c.skipped) out.push(`- ${c.label}: skipped — ${c.skipped}`);
    if (c.error) out.push(`- ${c.label}: failed — ${c.error}`);
    if (c.loadavgBefore) out.push(`- ${c.label}: loadavg before ${la(c.loadavgBefore)}, after ${la(c.loadavgAfter)}`);
    if (c.leftover) out.push(`- ${c.label}: left in spools after the run: ${JSON.stringify(c.leftover)}`);
    if (c.latency?.failed) out.push(`- ${c.label}: ${c.latency.failed} refused in the latency pass, first: ${c.latency.firstError}`);
    if (c.manySessions?.refused) out.push(`- ${c.label}: ${c.manySessions.refused} refused in the C=${p.manySessions} pass, first: ${c.manySessions.firstRefusal}`);
  }
  if (r.leak) {
    const l = r.leak;
    out.push('');
    out.push(`### Leak check: ${l.minutes} min, C=${l.sessions}, ${kb(l.size)}`);
    out.push('');
    out.push(`${f0(l.accepted)} accepted (${f2(l.acceptedPerSec)} msg/s), ${l.failed} refused, accept p99 ${f2(l.p99Ms)} ms.`);
    out.push('');
    out.push('| node | peak RSS, MB | mean RSS 1st minute after warm-up, MB | mean RSS last minute, MB | growth |');
    out.push('|---|---|---|---|---|');
    for (const [n, v] of Object.entries(l.nodes)) {
      out.push(`| ${n} | ${mb(v.peakRss)} | ${mb(v.firstMinuteMeanRss)} | ${mb(v.lastMinuteMeanRss)} | ${v.growthPct.toFixed(1)} % |`);
    }
    out.push('');
    out.push(`Verdict: ${l.verdict}`);
  }
  out.push('');
  out.push('### Targets');
  out.push('');
  for (const t of r.targets) out.push(`- ${t.met === null ? '–' : t.met ? 'met' : 'NOT met'}: ${t.target} — ${t.measured}`);
  for (const n of r.notes) out.push(`- note: ${n}`);
  return out.join('\n') + '\n';
}

function kb(bytes: number): string {
  return bytes >= 1048576 ? `${bytes / 1048576} MB` : `${Math.round(bytes / 1024)} KB`;
}
