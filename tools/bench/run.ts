#!/usr/bin/env node
/**
 * `npm run bench` — what does the shadow copy cost compared with the Postfix you run today?
 *
 * In one run, with the same load generator and the same sink, it measures:
 *   1. the sink alone (the ceiling for any relay on this machine),
 *   2. Debian's Postfix as a throwaway loopback relay (skipped with a line when absent),
 *   3. a shadowrelay pair as real processes (A shadowing to B, synchronous=FULL on both),
 *      at log level warn, and a short pass at log level info.
 * Passes per system: C sessions × M messages of S bytes (smtp-source when installed, new
 * connection per message); accept latency with the Node pipelining generator; serial C=1;
 * 1 MB messages; C=200 with 1 MB messages (memory). Prints a markdown table on stdout,
 * progress on stderr, and writes the JSON next to it. `--long` runs the 10-minute leak check.
 * Every process it starts is stopped, also on error and on SIGINT.
 */
import { parseArgs } from 'node:util';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { BenchSink } from './sink.js';
import { runLoad, percentile, type LoadResult } from './loadgen.js';
import { runSmtpSource } from './smtp-source.js';
import { postfixUnavailable, startPostfix } from './postfix.js';
import { startPair, type RunningPair } from './shadowrelay.js';
import { CpuMeter, currentPss, findBinary, loadavg, peakRss, Registry, resetPeakRss, RssSampler, round2 } from './procs.js';
import {
  judgeTargets,
  markdown,
  type BenchReport,
  type LatencyFigures,
  type LeakCheck,
  type SystemResult,
  type ThroughputFigures,
} from './report.js';

const { values: argv } = parseArgs({
  options: {
    messages: { type: 'string', default: '5000' },
    warmup: { type: 'string', default: '1000' },
    sessions: { type: 'string', default: '20' },
    size: { type: 'string', default: '10240' },
    'latency-messages': { type: 'string', default: '2000' },
    'serial-messages': { type: 'string', default: '300' },
    'large-size': { type: 'string', default: String(1024 * 1024) },
    'large-messages': { type: 'string', default: '100' },
    'many-sessions': { type: 'string', default: '200' },
    'many-messages': { type: 'string', default: '400' },
    'delivery-concurrency': { type: 'string', default: '20' },
    systems: { type: 'string', default: 'ceiling,postfix,shadowrelay,shadowrelay-info' },
    passes: { type: 'string', default: 'small,latency,serial,large,many' },
    generator: { type: 'string', default: 'auto' },
    sink: { type: 'string', default: 'auto' },
    json: { type: 'string' },
    'cpu-prof': { type: 'string' },
    'relay-config': { type: 'string' },
    long: { type: 'boolean', default: false },
    'long-minutes': { type: 'string', default: '10' },
    help: { type: 'boolean', default: false },
  },
});

if (argv.help) {
  process.stdout.write(`usage: npm run bench -- [options]
  --messages N            messages in the main pass (5000)
  --warmup N              unmeasured messages sent to each system first (1000; 0 for none)
  --sessions C            concurrent sessions (20)
  --size BYTES            message payload (10240)
  --latency-messages N    messages in the C-session latency pass (2000)
  --serial-messages N     messages in the C=1 pass (300)
  --large-size BYTES      large message payload (1048576)
  --large-messages N      messages in the large pass (100)
  --many-sessions C       sessions in the memory pass with large messages (200)
  --many-messages N       messages in that pass (400)
  --delivery-concurrency N  shadowrelay delivery.concurrency (20, Postfix's default destination concurrency)
  --systems LIST          ceiling,postfix,shadowrelay,shadowrelay-info
  --passes LIST           small,latency,serial,large,many (for quick comparisons while optimising)
  --generator auto|node   smtp-source when installed, else the Node generator
  --sink auto|node        smtp-sink when installed, else a Node sink
  --json FILE             where to write the JSON (default: a file in the temp folder)
  --cpu-prof DIR          write V8 CPU profiles of the shadowrelay nodes (log level warn) into DIR
  --relay-config JSON     merged into both shadowrelay nodes' configs, e.g. '{"smtp":{"maxBytesInFlight":8388608}}'
  --long                  run only the leak check: C=200, 1 MB, 10 minutes
  --long-minutes N        length of the leak check (10)
`);
  process.exit(0);
}

const num = (k: keyof typeof argv): number => {
  const v = Number(argv[k]);
  if (!Number.isFinite(v) || v <= 0) {
    process.stderr.write(`bench: --${k} must be a positive number\n`);
    process.exit(1);
  }
  return v;
};

const P = {
  messages: num('messages'),
  warmup: Number(argv.warmup) >= 0 ? Number(argv.warmup) : 1000,
  sessions: num('sessions'),
  size: num('size'),
  latencyMessages: num('latency-messages'),
  serialMessages: num('serial-messages'),
  largeSize: num('large-size'),
  largeMessages: num('large-messages'),
  manySessions: num('many-sessions'),
  manyMessages: num('many-messages'),
  deliveryConcurrency: num('delivery-concurrency'),
};

const passes = new Set(String(argv.passes).split(','));
let relayConfig: Record<string, unknown> = {};
try {
  relayConfig = argv['relay-config'] ? (JSON.parse(argv['relay-config']) as Record<string, unknown>) : {};
} catch {
  process.stderr.write('bench: --relay-config must be a JSON object\n');
  process.exit(1);
}
const say = (s: string) => process.stderr.write(`[bench] ${s}\n`);
const reg = new Registry();
const smtpSource = argv.generator === 'node' ? null : findBinary('smtp-source');

/** Where to send, and how to know the relay is done with a message. */
interface Target {
  port: number;
  /** false for the sink alone: accepted there is the end */
  relays: boolean;
  /** the system's processes right now (CPU accounting) */
  pids: () => number[];
}

async function throughput(
  t: Target,
  sink: BenchSink,
  o: { sessions: number; messages: number; size: number },
  generator: 'auto' | 'node' = 'auto',
): Promise<ThroughputFigures> {
  const base = sink.count;
  const cpu = new CpuMeter(t.pids);
  const t0 = performance.now();
  let accepted: number;
  let wallMs: number;
  let refused = 0;
  let firstRefusal: string | null = null;
  const useSource = smtpSource && generator === 'auto';
  if (useSource) {
    ({ ok: accepted, wallMs } = await runSmtpSource(reg, smtpSource, { port: t.port, ...o }));
  } else {
    // the Node generator counts refusals (451 under overload) instead of stopping at the first
    const r = await runLoad({ port: t.port, ...o });
    ({ ok: accepted, wallMs, failed: refused, firstError: firstRefusal } = r);
    if (accepted === 0) throw new Error(`every message was refused, first: ${firstRefusal}`);
  }
  let endToEndMs: number | null = null;
  if (t.relays) endToEndMs = (await sink.waitCount(base + accepted, Math.max(120000, wallMs * 20))) - t0;
  else await sink.waitCount(base + accepted, 30000);
  const cpuMs = cpu.elapsedMs();
  return {
    ...o,
    generator: useSource ? 'smtp-source' : 'node',
    accepted,
    refused,
    firstRefusal,
    acceptedPerSec: round2((accepted / wallMs) * 1000),
    endToEndPerSec: endToEndMs === null ? null : round2((accepted / endToEndMs) * 1000),
    wallMs: Math.round(wallMs),
    endToEndMs: endToEndMs === null ? null : Math.round(endToEndMs),
    cpuMsPerMessage: accepted ? round2(cpuMs / accepted) : null,
  };
}

function latencyOf(r: LoadResult, o: { sessions: number; messages: number; size: number }): LatencyFigures {
  return {
    ...o,
    accepted: r.ok,
    failed: r.failed,
    firstError: r.firstError,
    acceptedPerSec: round2((r.ok / r.wallMs) * 1000),
    p50Ms: nul(percentile(r.latencies, 50)),
    p99Ms: nul(percentile(r.latencies, 99)),
    maxMs: nul(percentile(r.latencies, 100)),
  };
}
const nul = (x: number | null) => (x === null ? null : round2(x));

/** Node-generator pass; waits until the sink has every accepted message (phases never overlap). */
async function latency(t: Target, sink: BenchSink, o: { sessions: number; messages: number; size: number }): Promise<LatencyFigures> {
  const base = sink.count;
  const r = await runLoad({ port: t.port, ...o });
  await sink.waitCount(base + r.ok, 120000);
  return latencyOf(r, o);
}

async function serial(t: Target, sink: BenchSink): Promise<SystemResult['serial']> {
  const o = { sessions: 1, messages: P.serialMessages, size: P.size };
  let msPerMessage: number | null = null;
  if (smtpSource) {
    const base = sink.count;
    const r = await runSmtpSource(reg, smtpSource, { port: t.port, ...o });
    msPerMessage = round2(r.wallMs / o.messages);
    await sink.waitCount(base + o.messages, 120000);
  }
  return { messages: o.messages, msPerMessage, latency: await latency(t, sink, o) };
}

/** The standard passes against one system. `pids` are the processes whose peak RSS counts. */
/**
 * A short unmeasured run first, for every system alike: Node's JIT, Postfix's process pools
 * and every connection pool reach their working state before the clock starts.
 */
async function warmUp(res: SystemResult, t: Target, sink: BenchSink): Promise<void> {
  const messages = Math.min(P.warmup, P.messages);
  if (messages <= 0) return;
  say(`${res.label}: warm-up, ${messages} messages`);
  await throughput(t, sink, { sessions: P.sessions, messages, size: P.size });
}

async function standardPasses(res: SystemResult, t: Target, sink: BenchSink, mem: Memory): Promise<void> {
  await warmUp(res, t, sink);
  mem.reset();
  if (passes.has('small')) {
    const small = { sessions: P.sessions, messages: P.messages, size: P.size };
    say(`${res.label}: ${small.messages} × ${small.size} B, C=${small.sessions}`);
    res.small = await throughput(t, sink, small);
    say(`${res.label}:   ${res.small.acceptedPerSec} accepted msg/s, ${res.small.endToEndPerSec ?? '–'} end-to-end, ${res.small.cpuMsPerMessage} CPU ms/msg`);
  }
  if (passes.has('latency')) {
    say(`${res.label}: latency pass, ${P.latencyMessages} messages, C=${P.sessions}`);
    res.latency = await latency(t, sink, { sessions: P.sessions, messages: P.latencyMessages, size: P.size });
    say(`${res.label}:   p50 ${res.latency.p50Ms} ms, p99 ${res.latency.p99Ms} ms, ${res.latency.acceptedPerSec} msg/s`);
  }
  if (passes.has('serial')) {
    say(`${res.label}: serial pass, ${P.serialMessages} messages, C=1`);
    res.serial = await serial(t, sink);
    say(`${res.label}:   ${res.serial?.msPerMessage ?? '–'} ms per message, accept p50 ${res.serial?.latency.p50Ms} ms`);
  }
  if (passes.has('large')) {
    const large = { sessions: P.sessions, messages: P.largeMessages, size: P.largeSize };
    say(`${res.label}: ${large.messages} × ${large.size} B, C=${large.sessions}`);
    res.large = await throughput(t, sink, large);
    say(`${res.label}:   ${res.large.acceptedPerSec} accepted msg/s, ${res.large.cpuMsPerMessage} CPU ms/msg`);
  }
  res.memory = { peakRss: mem.read() };
  if (passes.has('many')) {
    const many = { sessions: P.manySessions, messages: P.manyMessages, size: P.largeSize };
    say(`${res.label}: ${many.messages} × ${many.size} B, C=${many.sessions}`);
    mem.reset();
    const m = await throughput(t, sink, many, 'node');
    res.manySessions = { ...m, peakRss: mem.read() };
    say(`${res.label}:   ${m.acceptedPerSec} accepted msg/s, ${m.refused} refused, peak RSS ${JSON.stringify(res.manySessions.peakRss)}`);
  }
}

/** Peak memory of the processes of one system, resettable between phases. */
interface Memory {
  reset(): void;
  read(): Record<string, number | null>;
}

function nodeMemory(nodes: Array<{ name: string; pid: number }>): Memory {
  const samplers = new Map<string, RssSampler>();
  let canReset = true;
  const reset = () => {
    for (const n of nodes) canReset = resetPeakRss(n.pid) && canReset;
    // without clear_refs, fall back to sampling VmRSS
    for (const s of samplers.values()) s.stop();
    samplers.clear();
    if (!canReset) for (const n of nodes) samplers.set(n.name, new RssSampler(() => [n.pid], 200).start());
  };
  reset();
  return {
    reset,
    read: () =>
      Object.fromEntries(nodes.map((n) => [n.name, canReset ? peakRss(n.pid) : (samplers.get(n.name)?.stop().maxSum ?? null)])),
  };
}

/** Sampled peak of the sum of PSS over a process tree (Postfix: many small processes). */
function treeMemory(label: string, pids: () => number[]): Memory {
  let s = new RssSampler(pids, 200, false, currentPss).start();
  return {
    reset: () => {
      s.stop();
      s = new RssSampler(pids, 200, false, currentPss).start();
    },
    read: () => ({ [label]: s.stop().maxSum || null }),
  };
}

async function runSystem(res: SystemResult, body: () => Promise<void>): Promise<SystemResult> {
  res.loadavgBefore = loadavg();
  try {
    await body();
  } catch (e) {
    res.error = (e as Error).message.split('\n')[0]!;
    say(`${res.label}: FAILED: ${(e as Error).message}`);
  }
  res.loadavgAfter = loadavg();
  return res;
}

async function waitDrained(pair: RunningPair, timeoutMs: number): Promise<Record<string, number>> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const l = pair.leftover();
    if ((l.aPrimary === 0 && l.bShadow === 0 && l.aOutbox === 0) || Date.now() > end) return l;
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function shadowrelaySystem(res: SystemResult, logLevel: string, full: boolean, cpuProfDir?: string): Promise<void> {
  const sink = await BenchSink.start(reg, argv.sink === 'node' ? 'node' : 'auto');
  const pair = await startPair(reg, { sinkPort: sink.port, logLevel, deliveryConcurrency: P.deliveryConcurrency, cpuProfDir, config: relayConfig });
  try {
    const t = { port: pair.a.smtpPort, relays: true, pids: () => [pair.a.pid, pair.b.pid] };
    if (full) {
      await standardPasses(res, t, sink, nodeMemory([pair.a, pair.b]));
    } else {
      await warmUp(res, t, sink);
      const mem = nodeMemory([pair.a, pair.b]);
      say(`${res.label}: ${P.messages} × ${P.size} B, C=${P.sessions}`);
      res.small = await throughput(t, sink, { sessions: P.sessions, messages: P.messages, size: P.size });
      res.memory = { peakRss: mem.read() };
      say(`${res.label}:   ${res.small.acceptedPerSec} accepted msg/s, ${res.small.endToEndPerSec} end-to-end, ${res.small.cpuMsPerMessage} CPU ms/msg`);
    }
    res.leftover = await waitDrained(pair, 15000);
  } finally {
    await pair.stop();
    await sink.stop();
  }
}

async function leakCheck(minutes: number): Promise<LeakCheck> {
  const sink = await BenchSink.start(reg, argv.sink === 'node' ? 'node' : 'auto');
  const pair = await startPair(reg, { sinkPort: sink.port, logLevel: 'warn', deliveryConcurrency: P.deliveryConcurrency, config: relayConfig });
  try {
    const nodes = [pair.a, pair.b];
    const sampler = new RssSampler(() => nodes.map((n) => n.pid), 5000, true).start();
    say(`leak check: ${minutes} min, C=${P.manySessions}, ${P.largeSize} B messages through ${pair.a.name}`);
    const progress = setInterval(() => {
      const last = sampler.series[sampler.series.length - 1];
      if (last) say(`  RSS ${nodes.map((n, i) => `${n.name} ${Math.round(last.rss[i]! / 1048576)} MB`).join(', ')}; sink ${sink.count}; loadavg ${loadavg().join(' ')}`);
    }, 60000);
    const r = await runLoad({ port: pair.a.smtpPort, sessions: P.manySessions, messages: 0, durationMs: minutes * 60000, size: P.largeSize });
    clearInterval(progress);
    sampler.stop();
    // the first minute is warm-up (pools, caches, JIT); compare the minute after it with the last one
    const t0 = sampler.series[0]!.t;
    const tEnd = sampler.series[sampler.series.length - 1]!.t;
    const window = (from: number, to: number, i: number) => {
      const xs = sampler.series.filter((s) => s.t >= from && s.t <= to).map((s) => s.rss[i]!);
      return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0;
    };
    const out: LeakCheck['nodes'] = {};
    let grew: string[] = [];
    nodes.forEach((n, i) => {
      const first = window(t0 + 60000, t0 + 120000, i);
      const last = window(tEnd - 60000, tEnd, i);
      const growthPct = first ? ((last - first) / first) * 100 : 0;
      out[n.name] = { peakRss: peakRss(n.pid), firstMinuteMeanRss: first, lastMinuteMeanRss: last, growthPct };
      // allocator noise moves RSS by a few MB; flag sustained growth only
      if (growthPct > 15 && last - first > 20 * 1048576) grew.push(`${n.name} +${growthPct.toFixed(0)} %`);
    });
    if (minutes < 3) grew = [];
    return {
      minutes,
      sessions: P.manySessions,
      size: P.largeSize,
      accepted: r.ok,
      failed: r.failed,
      acceptedPerSec: round2((r.ok / r.wallMs) * 1000),
      p99Ms: nul(percentile(r.latencies, 99)),
      nodes: out,
      grew: minutes < 3 ? null : grew.length > 0,
      verdict:
        minutes < 3
          ? 'run too short to judge growth (needs ≥ 3 minutes)'
          : grew.length
            ? `RSS growth: ${grew.join(', ')} between the 2nd and the last minute`
            : 'stable: no sustained RSS growth between the 2nd and the last minute',
    };
  } finally {
    await pair.stop();
    await sink.stop();
  }
}

async function main(): Promise<number> {
  const startedAt = new Date().toISOString();
  const report: BenchReport = {
    startedAt,
    machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model ?? 'unknown', node: process.version, loadavgStart: loadavg() },
    tools: {
      generator: smtpSource ? `smtp-source (${smtpSource})` : 'Node pipelining generator (smtp-source not installed)',
      sink: argv.sink !== 'node' && findBinary('smtp-sink') ? 'smtp-sink' : 'Node sink (smtp-sink not installed)',
      postfix: null,
    },
    params: { ...P, long: argv.long, relayConfig: JSON.stringify(relayConfig) },
    systems: [],
    targets: [],
    notes: [],
  };
  say(`loadavg ${report.machine.loadavgStart.join(' ')} on ${report.machine.cpus} CPUs; generator: ${report.tools.generator}; sink: ${report.tools.sink}`);
  if (!smtpSource) say('smtp-source not installed: the Node generator does every pass (install Debian postfix for smtp-source)');

  if (argv.long) {
    report.leak = await leakCheck(num('long-minutes'));
  } else {
    const want = new Set(String(argv.systems).split(','));
    if (want.has('ceiling')) {
      const res: SystemResult = { system: 'ceiling', label: 'sink alone (ceiling)' };
      report.systems.push(
        await runSystem(res, async () => {
          const sink = await BenchSink.start(reg, argv.sink === 'node' ? 'node' : 'auto');
          try {
            await standardPasses(res, { port: sink.port, relays: false, pids: () => [sink.pid] }, sink, treeMemory('sink', () => [sink.pid]));
          } finally {
            await sink.stop();
          }
        }),
      );
    }
    if (want.has('postfix')) {
      const why = postfixUnavailable();
      if (why) {
        say(`Postfix: skipped — ${why}`);
        report.systems.push({ system: 'postfix', label: 'Postfix', skipped: why });
      } else {
        const res: SystemResult = { system: 'postfix', label: 'Postfix' };
        report.systems.push(
          await runSystem(res, async () => {
            const sink = await BenchSink.start(reg, argv.sink === 'node' ? 'node' : 'auto');
            const pf = await startPostfix({ relayhost: `[127.0.0.1]:${sink.port}` });
            reg.defer('stop Postfix', () => pf.stop());
            res.label = `Postfix ${pf.version}`;
            report.tools.postfix = pf.version;
            try {
              await standardPasses(res, { port: pf.port, relays: true, pids: pf.pids }, sink, treeMemory('all processes (PSS)', pf.pids));
            } finally {
              await pf.stop();
              await sink.stop();
            }
          }),
        );
      }
    }
    if (want.has('shadowrelay')) {
      const res: SystemResult = { system: 'shadowrelay', label: 'shadowrelay (log warn)' };
      report.systems.push(await runSystem(res, () => shadowrelaySystem(res, 'warn', true, argv['cpu-prof'])));
    }
    if (want.has('shadowrelay-info')) {
      const res: SystemResult = { system: 'shadowrelay-info', label: 'shadowrelay (log info)' };
      report.systems.push(await runSystem(res, () => shadowrelaySystem(res, 'info', false)));
    }
  }
  report.machine.loadavgEnd = loadavg();
  if (report.machine.loadavgStart[0] > report.machine.cpus * 0.5) {
    report.notes.push(`the machine was busy at the start (loadavg ${report.machine.loadavgStart[0]} on ${report.machine.cpus} CPUs): absolute figures are noisy`);
  }
  judgeTargets(report);
  const jsonFile = argv.json ?? path.join(os.tmpdir(), `shadowrelay-bench-${startedAt.replace(/[:.]/g, '-')}.json`);
  writeFileSync(jsonFile, JSON.stringify(report, null, 2) + '\n');
  process.stdout.write(markdown(report));
  say(`JSON written to ${jsonFile}`);
  return report.systems.some((s) => s.error) ? 2 : 0;
}

let interrupted = false;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (interrupted) return;
    interrupted = true;
    say(`${sig}: stopping every process the benchmark started`);
    void reg.closeAll().finally(() => process.exit(130));
  });
}

main()
  .then(async (code) => {
    await reg.closeAll();
    process.exit(code);
  })
  .catch(async (e: unknown) => {
    say(`failed: ${(e as Error).stack ?? String(e)}`);
    await reg.closeAll();
    process.exit(2);
  });
