#!/usr/bin/env node
/**
 * `npm run bench` — what does the shadow copy cost compared with the Postfix you run today?
 *
 * In one run, with the same load generator and the same sink, it measures:
 *   1. the sink alone (the ceiling for any relay on this machine),
 *   2. Debian's Postfix as a throwaway loopback relay (skipped with a line when absent),
 *   3. a shadowrelay pair as real processes (A shadowing to B, synchronous=FULL on both) at
 *      the default configuration (log level info), and the same pair at log level warn for
 *      the cost of logging.
 * Passes per system, on a freshly started system: cold (no warm-up: what a restart or a
 * failover looks like), then warm — C sessions × M messages of S bytes (smtp-source when
 * installed, new connection per message); accept latency with the Node pipelining
 * generator; serial C=1; 1 MB messages at C=20 and C=200 (memory). Then the slow disks: each
 * system restarted with every fsync delayed (fsync-shim.c, LD_PRELOAD; 2 and 5 ms, one flush
 * in the device at a time, and 5 ms overlapping), C=20 and serial. fsync-family calls are
 * counted per node (per machine) in every pass. Prints a markdown table on stdout, progress
 * on stderr, writes the JSON and an SVG chart of the ratios next to it. `--long` runs the
 * 10-minute leak check. Every process it starts is stopped, also on error and on SIGINT.
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
import { FsyncShim, type Disk } from './fsync.js';
import { chartSvg } from './chart.js';
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
    'cold-messages': { type: 'string', default: '2000' },
    'slow-messages': { type: 'string', default: '1000' },
    'slow-serial-messages': { type: 'string', default: '100' },
    'fsync-delays': { type: 'string', default: '2,5,5p' },
    sessions: { type: 'string', default: '20' },
    size: { type: 'string', default: '10240' },
    'latency-messages': { type: 'string', default: '2000' },
    'serial-messages': { type: 'string', default: '300' },
    'large-size': { type: 'string', default: String(1024 * 1024) },
    'large-messages': { type: 'string', default: '100' },
    'many-sessions': { type: 'string', default: '200' },
    'many-messages': { type: 'string', default: '400' },
    'delivery-concurrency': { type: 'string', default: '20' },
    'logging-messages': { type: 'string', default: '1500' },
    systems: { type: 'string', default: 'ceiling,postfix,shadowrelay' },
    passes: { type: 'string', default: 'cold,small,latency,serial,large,many,logging,slow' },
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
  --messages N            messages in the warm pass (5000)
  --cold-messages N       messages in the cold pass, the first after a start (2000)
  --slow-messages N       messages in each slow-disk C-session pass (1000)
  --slow-serial-messages N  messages in each slow-disk serial pass (100)
  --fsync-delays LIST     slow disks, ms per fsync; 'p': delays overlap instead of one flush at a time (2,5,5p)
  --sessions C            concurrent sessions (20)
  --size BYTES            message payload (10240)
  --latency-messages N    messages in the C-session latency pass (2000)
  --serial-messages N     messages in the C=1 pass (300)
  --large-size BYTES      large message payload (1048576)
  --large-messages N      messages in the large pass (100)
  --many-sessions C       sessions in the memory pass with large messages (200)
  --many-messages N       messages in that pass (400)
  --delivery-concurrency N  shadowrelay delivery.concurrency (20, Postfix's default destination concurrency)
  --logging-messages N    messages per round of the logging pass (1500; 8 rounds, info and warn alternating in one pair)
  --systems LIST          ceiling,postfix,shadowrelay (and shadowrelay-warn: a second pair at log level warn)
  --passes LIST           cold,small,latency,serial,large,many,logging,slow (for quick comparisons while optimising)
  --generator auto|node   smtp-source when installed, else the Node generator
  --sink auto|node        smtp-sink when installed, else a Node sink
  --json FILE             where to write the JSON (default: a file in the temp folder)
  --cpu-prof DIR          write V8 CPU profiles of the shadowrelay nodes (log level info) into DIR
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
  coldMessages: num('cold-messages'),
  slowMessages: num('slow-messages'),
  slowSerialMessages: num('slow-serial-messages'),
  sessions: num('sessions'),
  size: num('size'),
  latencyMessages: num('latency-messages'),
  serialMessages: num('serial-messages'),
  largeSize: num('large-size'),
  largeMessages: num('large-messages'),
  manySessions: num('many-sessions'),
  manyMessages: num('many-messages'),
  deliveryConcurrency: num('delivery-concurrency'),
  loggingMessages: num('logging-messages'),
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
/** the fsync counter / slow disk (or why there is none) */
const shim = argv.long ? 'not used in the leak check' : FsyncShim.build(reg);
/** node flags the shipped systemd unit and Docker image run the daemon with */
const PRODUCT_NODE_FLAGS: string[] = [];

/** Where to send, and how to know the relay is done with a message. */
interface Target {
  port: number;
  /** false for the sink alone: accepted there is the end */
  relays: boolean;
  /** the system's processes right now (CPU accounting) */
  pids: () => number[];
  /** fsync counters per machine (node), when the shim is loaded */
  disks?: Record<string, Disk>;
  /** waits until the system has finished its bookkeeping (fsync counts are read after) */
  settle?: () => Promise<void>;
}

/** fsync-family calls per message on each machine while `fn` ran (after the system settled). */
async function countFsyncs<T extends { accepted: number }>(t: Target, fn: () => Promise<T>): Promise<{ r: T; fsync: Record<string, number> | undefined }> {
  if (!t.disks) return { r: await fn(), fsync: undefined };
  await t.settle?.();
  const before = Object.fromEntries(Object.entries(t.disks).map(([k, d]) => [k, d.count()]));
  const r = await fn();
  await t.settle?.();
  const fsync = Object.fromEntries(Object.entries(t.disks).map(([k, d]) => [k, r.accepted ? round2((d.count() - before[k]!) / r.accepted) : 0]));
  return { r, fsync };
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

async function serial(t: Target, sink: BenchSink, messages = P.serialMessages): Promise<NonNullable<SystemResult['serial']>> {
  const o = { sessions: 1, messages, size: P.size };
  let msPerMessage: number | null = null;
  let fsync: Record<string, number> | undefined;
  if (smtpSource) {
    const c = await countFsyncs(t, async () => {
      const base = sink.count;
      const r = await runSmtpSource(reg, smtpSource, { port: t.port, ...o });
      await sink.waitCount(base + o.messages, 120000);
      return { ...r, accepted: r.ok };
    });
    msPerMessage = round2(c.r.wallMs / o.messages);
    fsync = c.fsync;
  }
  const lat = await countFsyncs(t, async () => {
    const l = await latency(t, sink, o);
    return l;
  });
  return { messages: o.messages, msPerMessage, latency: lat.r, fsyncPerMessage: fsync ?? lat.fsync };
}

/**
 * The standard passes against one freshly started system: cold first (nothing warmed up:
 * JIT, process pools and connection pools start as after a restart or a failover), then the
 * warm passes on the same processes.
 */
async function standardPasses(res: SystemResult, t: Target, sink: BenchSink, mem: Memory): Promise<void> {
  mem.reset();
  if (passes.has('cold')) {
    const cold = { sessions: P.sessions, messages: P.coldMessages, size: P.size };
    say(`${res.label}: cold, ${cold.messages} × ${cold.size} B, C=${cold.sessions}`);
    const c = await countFsyncs(t, () => throughput(t, sink, cold));
    res.cold = { ...c.r, fsyncPerMessage: c.fsync };
    say(`${res.label}:   ${res.cold.acceptedPerSec} accepted msg/s, ${res.cold.endToEndPerSec ?? '–'} end-to-end, ${res.cold.cpuMsPerMessage} CPU ms/msg, fsync/msg ${JSON.stringify(c.fsync ?? {})}`);
  }
  if (passes.has('small')) {
    const small = { sessions: P.sessions, messages: P.messages, size: P.size };
    say(`${res.label}: warm, ${small.messages} × ${small.size} B, C=${small.sessions}`);
    const c = await countFsyncs(t, () => throughput(t, sink, small));
    res.small = { ...c.r, fsyncPerMessage: c.fsync };
    say(`${res.label}:   ${res.small.acceptedPerSec} accepted msg/s, ${res.small.endToEndPerSec ?? '–'} end-to-end, ${res.small.cpuMsPerMessage} CPU ms/msg, fsync/msg ${JSON.stringify(c.fsync ?? {})}`);
  }
  if (passes.has('latency')) {
    say(`${res.label}: latency pass, ${P.latencyMessages} messages, C=${P.sessions}`);
    res.latency = await latency(t, sink, { sessions: P.sessions, messages: P.latencyMessages, size: P.size });
    say(`${res.label}:   p50 ${res.latency.p50Ms} ms, p99 ${res.latency.p99Ms} ms, ${res.latency.acceptedPerSec} msg/s`);
  }
  if (passes.has('serial')) {
    say(`${res.label}: serial pass, ${P.serialMessages} messages, C=1`);
    res.serial = await serial(t, sink);
    say(`${res.label}:   ${res.serial.msPerMessage ?? '–'} ms per message, accept p50 ${res.serial.latency.p50Ms} ms, fsync/msg ${JSON.stringify(res.serial.fsyncPerMessage ?? {})}`);
  }
  if (passes.has('large')) {
    const large = { sessions: P.sessions, messages: P.largeMessages, size: P.largeSize };
    say(`${res.label}: ${large.messages} × ${large.size} B, C=${large.sessions}`);
    const c = await countFsyncs(t, () => throughput(t, sink, large));
    res.large = { ...c.r, fsyncPerMessage: c.fsync };
    say(`${res.label}:   ${res.large.acceptedPerSec} accepted msg/s, ${res.large.endToEndPerSec} end-to-end, ${res.large.cpuMsPerMessage} CPU ms/msg`);
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

/** The slow disks asked for: "5" = 5 ms, one flush at a time; "5p" = 5 ms, overlapping. */
function slowDisks(): Array<{ delayMs: number; serialDevice: boolean }> {
  return String(argv['fsync-delays'])
    .split(',')
    .filter((x) => x.trim() !== '' && x.trim() !== '0')
    .map((x) => ({ delayMs: Number(x.replace(/p$/, '')), serialDevice: !x.endsWith('p') }))
    .filter((d) => Number.isFinite(d.delayMs) && d.delayMs > 0);
}

/** A started system: where to send, and how to stop it. */
interface Started {
  target: Target;
  sink: BenchSink;
  mem: () => Memory;
  stop: () => Promise<void>;
  leftover?: () => Promise<Record<string, number>>;
  setLogLevel?: (level: string) => Promise<void>;
}

/**
 * The cost of logging in one pair: C=20 rounds at info and warn, the level changed live
 * between them (config + SIGHUP), in the order i w w i i w w i so a drift of the machine
 * during the pass weighs on both levels alike. Two separately started pairs differed by more
 * than the cost itself on this shared machine.
 */
async function loggingPass(res: SystemResult, s: Started): Promise<void> {
  const order = ['info', 'warn', 'warn', 'info', 'info', 'warn', 'warn', 'info'] as const;
  const rounds: NonNullable<SystemResult['logging']>['rounds'] = [];
  let level = 'info';
  say(`${res.label}: logging pass, ${order.length} rounds of ${P.loggingMessages} × ${P.size} B, C=${P.sessions}, info and warn alternating`);
  try {
    for (const l of order) {
      if (l !== level) await s.setLogLevel!(l);
      level = l;
      const r = await throughput(s.target, s.sink, { sessions: P.sessions, messages: P.loggingMessages, size: P.size });
      rounds.push({ level: l, acceptedPerSec: r.acceptedPerSec, cpuMsPerMessage: r.cpuMsPerMessage });
      say(`${res.label}:   ${l}: ${r.acceptedPerSec} accepted msg/s, ${r.cpuMsPerMessage} CPU ms/msg`);
    }
  } finally {
    if (level !== 'info') await s.setLogLevel!('info');
  }
  const mean = (l: 'info' | 'warn') => {
    const xs = rounds.filter((r) => r.level === l);
    const cpu = xs.map((r) => r.cpuMsPerMessage).filter((x): x is number => x !== null);
    return {
      acceptedPerSec: round2(xs.reduce((a, r) => a + r.acceptedPerSec, 0) / xs.length),
      cpuMsPerMessage: cpu.length ? round2(cpu.reduce((a, b) => a + b, 0) / cpu.length) : null,
    };
  };
  res.logging = { rounds, info: mean('info'), warn: mean('warn') };
}

/** One slow-disk pass on a freshly started system: a short warm-up, C sessions, serial. */
async function slowPass(res: SystemResult, start: (disk: { delayMs: number; serialDevice: boolean }) => Promise<Started>): Promise<void> {
  for (const d of slowDisks()) {
    const tag = `${d.delayMs} ms${d.serialDevice ? '' : ' overlapping'}`;
    say(`${res.label}: slow disk ${tag} per fsync`);
    const s = await start(d);
    try {
      await throughput(s.target, s.sink, { sessions: P.sessions, messages: Math.min(300, P.slowMessages), size: P.size });
      const c = await countFsyncs(s.target, () => throughput(s.target, s.sink, { sessions: P.sessions, messages: P.slowMessages, size: P.size }));
      const ser = await serial(s.target, s.sink, P.slowSerialMessages);
      (res.slowDisk ??= []).push({ ...d, small: { ...c.r, fsyncPerMessage: c.fsync }, serial: ser });
      say(`${res.label}:   ${c.r.acceptedPerSec} accepted msg/s at C=${P.sessions}, serial ${ser.msPerMessage ?? '–'} ms/msg, accept p50 ${ser.latency.p50Ms} ms, fsync/msg ${JSON.stringify(c.fsync ?? {})}`);
    } finally {
      await s.stop();
    }
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

/** Starts a pair (each node on its own simulated disk when the shim is there) and its sink. */
async function startShadowrelay(logLevel: string, disk: { delayMs: number; serialDevice: boolean } | null, cpuProfDir?: string): Promise<Started> {
  const sink = await BenchSink.start(reg, argv.sink === 'node' ? 'node' : 'auto');
  const disks = shim && typeof shim !== 'string' ? { 'relay-a': shim.disk('relay-a', (disk?.delayMs ?? 0) * 1000, disk?.serialDevice), 'relay-b': shim.disk('relay-b', (disk?.delayMs ?? 0) * 1000, disk?.serialDevice) } : undefined;
  let pair: RunningPair;
  try {
    pair = await startPair(reg, {
      sinkPort: sink.port,
      logLevel,
      deliveryConcurrency: P.deliveryConcurrency,
      cpuProfDir,
      config: relayConfig,
      env: disks ? { 'relay-a': disks['relay-a'].env, 'relay-b': disks['relay-b'].env } : undefined,
      nodeFlags: PRODUCT_NODE_FLAGS,
    });
  } catch (e) {
    await sink.stop();
    throw e;
  }
  return {
    target: {
      port: pair.a.smtpPort,
      relays: true,
      pids: () => [pair.a.pid, pair.b.pid],
      disks,
      // discards and batched bookkeeping still in flight after the sink has everything
      settle: async () => {
        await waitDrained(pair, 15000);
        await new Promise((r) => setTimeout(r, 100));
      },
    },
    sink,
    mem: () => nodeMemory([pair.a, pair.b]),
    leftover: () => waitDrained(pair, 15000),
    setLogLevel: (level) => pair.setLogLevel(level),
    stop: async () => {
      await pair.stop();
      await sink.stop();
    },
  };
}

async function shadowrelaySystem(res: SystemResult, logLevel: string, full: boolean, cpuProfDir?: string): Promise<void> {
  const s = await startShadowrelay(logLevel, null, cpuProfDir);
  try {
    if (full) {
      await standardPasses(res, s.target, s.sink, s.mem());
      if (passes.has('logging') && logLevel === 'info') await loggingPass(res, s);
    } else {
      // the logging comparison: the same cold and warm passes only
      const mem = s.mem();
      for (const [key, messages] of [['cold', P.coldMessages], ['small', P.messages]] as const) {
        if (!passes.has(key)) continue;
        say(`${res.label}: ${key === 'cold' ? 'cold' : 'warm'}, ${messages} × ${P.size} B, C=${P.sessions}`);
        const c = await countFsyncs(s.target, () => throughput(s.target, s.sink, { sessions: P.sessions, messages, size: P.size }));
        res[key] = { ...c.r, fsyncPerMessage: c.fsync };
        say(`${res.label}:   ${c.r.acceptedPerSec} accepted msg/s, ${c.r.endToEndPerSec} end-to-end, ${c.r.cpuMsPerMessage} CPU ms/msg`);
      }
      res.memory = { peakRss: mem.read() };
    }
    res.leftover = await s.leftover!();
  } finally {
    await s.stop();
  }
  if (full && passes.has('slow') && shim && typeof shim !== 'string') await slowPass(res, (d) => startShadowrelay(logLevel, d));
}

async function startPostfixSystem(res: SystemResult, report: BenchReport, disk: { delayMs: number; serialDevice: boolean } | null): Promise<Started> {
  const sink = await BenchSink.start(reg, argv.sink === 'node' ? 'node' : 'auto');
  const d = shim && typeof shim !== 'string' ? shim.disk('postfix', (disk?.delayMs ?? 0) * 1000, disk?.serialDevice) : undefined;
  let pf: Awaited<ReturnType<typeof startPostfix>>;
  try {
    pf = await startPostfix({ relayhost: `[127.0.0.1]:${sink.port}`, env: d?.env });
  } catch (e) {
    await sink.stop();
    throw e;
  }
  reg.defer('stop Postfix', () => pf.stop());
  res.label = `Postfix ${pf.version}`;
  report.tools.postfix = pf.version;
  const target: Target = {
    port: pf.port,
    relays: true,
    pids: pf.pids,
    disks: d ? { postfix: d } : undefined,
    // qmgr and smtp finish their bookkeeping (queue file removal) just after the sink's 250
    settle: () => new Promise((r) => setTimeout(r, 300)),
  };
  return {
    target,
    sink,
    mem: () => treeMemory('all processes (PSS)', pf.pids),
    stop: async () => {
      await pf.stop();
      await sink.stop();
    },
  };
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
  if (typeof shim === 'string') {
    say(`fsync counts and slow-disk passes skipped: ${shim}`);
    report.notes.push(`fsync counts and slow-disk passes skipped: ${shim}`);
  }
  report.tools.fsyncShim = typeof shim === 'string' ? null : 'fsync-shim.c (LD_PRELOAD, built with gcc)';
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
            const s = await startPostfixSystem(res, report, null);
            try {
              await standardPasses(res, s.target, s.sink, s.mem());
            } finally {
              await s.stop();
            }
            if (passes.has('slow') && shim && typeof shim !== 'string') await slowPass(res, (d) => startPostfixSystem(res, report, d));
          }),
        );
      }
    }
    if (want.has('shadowrelay')) {
      const res: SystemResult = { system: 'shadowrelay', label: 'shadowrelay (default: log info)' };
      report.systems.push(await runSystem(res, () => shadowrelaySystem(res, 'info', true, argv['cpu-prof'])));
    }
    if (want.has('shadowrelay-warn')) {
      const res: SystemResult = { system: 'shadowrelay-warn', label: 'shadowrelay (log warn)' };
      report.systems.push(await runSystem(res, () => shadowrelaySystem(res, 'warn', false)));
    }
  }
  report.machine.loadavgEnd = loadavg();
  if (report.machine.loadavgStart[0] > report.machine.cpus * 0.5) {
    report.notes.push(`the machine was busy at the start (loadavg ${report.machine.loadavgStart[0]} on ${report.machine.cpus} CPUs): absolute figures are noisy`);
  }
  judgeTargets(report);
  const jsonFile = argv.json ?? path.join(os.tmpdir(), `shadowrelay-bench-${startedAt.replace(/[:.]/g, '-')}.json`);
  writeFileSync(jsonFile, JSON.stringify(report, null, 2) + '\n');
  const svgFile = jsonFile.replace(/\.json$/, '') + '.svg';
  writeFileSync(svgFile, chartSvg(report));
  process.stdout.write(markdown(report));
  say(`JSON written to ${jsonFile}; chart of the ratios: ${svgFile}`);
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
