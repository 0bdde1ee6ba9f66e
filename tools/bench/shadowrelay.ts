/**
 * The system under test: a shadowrelay pair as two real processes (`node dist/cli.js start`),
 * relay-a shadowing to relay-b and the reverse, each with its own SQLite spool
 * (synchronous=FULL) and the mutual-TLS replication link, delivering to the benchmark sink.
 * Ports are chosen up front (at log level warn the nodes log no "started" line); readiness is
 * the admin endpoint's /readyz (SMTP up and the peer reachable).
 */
import { mkdirSync, openSync, closeSync, readFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import YAML from 'yaml';
import os from 'node:os';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { deepMerge, writePairConfigs } from '../pair.js';
import { freePort } from '../net.js';
import { Spool } from '../../src/spool/index.js';
import { httpStatus, httpText, stopChild, type Registry } from './procs.js';
import { PRODUCT_CLI, ROOT } from '../paths.js';

/**
 * The environment the shipped systemd unit gives the daemon (its `Environment=` lines: the
 * allocator and V8 settings that bound memory), so the bench runs it as it is deployed; the
 * Docker image sets the same (test/system/deploy.test.ts keeps them equal).
 */
export function productEnvironment(): Record<string, string> {
  const unit = readFileSync(path.join(ROOT, 'config', 'shadowrelay.service'), 'utf8');
  const env: Record<string, string> = {};
  for (const m of unit.matchAll(/^Environment=(?:"([^"]*)"|(\S+))\s*$/gm)) {
    const kv = m[1] ?? m[2]!;
    const eq = kv.indexOf('=');
    env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return env;
}

export interface BenchPairOptions {
  sinkPort: number;
  logLevel: string;
  deliveryConcurrency: number;
  /** write V8 CPU profiles of both nodes into this folder */
  cpuProfDir?: string;
  /** merged into both nodes' config documents last */
  config?: Record<string, unknown>;
  /** extra environment per node (the fsync shim: each node is its own machine, its own disk) */
  env?: Record<string, Record<string, string>>;
  /** extra node flags, as the systemd unit and the Docker image run the daemon */
  nodeFlags?: string[];
}

export interface RelayNode {
  name: string;
  pid: number;
  smtpPort: number;
  adminPort: number;
  dataDir: string;
  logFile: string;
}

export interface RunningPair {
  a: RelayNode;
  b: RelayNode;
  dir: string;
  /** primaries on A + shadows on B still held (0 once everything is delivered and discarded) */
  leftover(): { aPrimary: number; bShadow: number; aOutbox: number };
  /** both nodes to this log level, live (config file + SIGHUP, as an operator does); resolves once applied */
  setLogLevel(level: string): Promise<void>;
  stop(): Promise<void>;
}

/** Reloads a node has applied so far (its /metrics). */
async function reloadsApplied(adminPort: number): Promise<number> {
  const text = await httpText(adminPort, '/metrics');
  const m = text ? /^shadowrelay_config_reloads_total\{[^}]*result="applied"[^}]*\} (\d+)/m.exec(text) : null;
  if (!m) throw new Error(`no reload counter on the admin port ${adminPort}`);
  return Number(m[1]);
}

export async function startPair(reg: Registry, o: BenchPairOptions): Promise<RunningPair> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sr-bench-pair-'));
  reg.defer('remove the pair folder', () => rmSync(dir, { recursive: true, force: true }));
  const names = ['relay-a', 'relay-b'] as const;
  const ports: Record<string, { smtp: number; admin: number }> = {};
  for (const n of names) ports[n] = { smtp: await freePort(), admin: await freePort() };
  const files = await writePairConfigs({
    dir,
    sinkPort: o.sinkPort,
    overrides: deepMerge(
      {
        log: { level: o.logLevel },
        delivery: { concurrency: o.deliveryConcurrency },
        // the largest benchmark message plus headroom
        smtp: { maxMessageSize: 64 * 1024 * 1024 },
      },
      o.config ?? {},
    ),
    nodeOverrides: Object.fromEntries(
      names.map((n) => [n, { smtp: { listen: `127.0.0.1:${ports[n]!.smtp}` }, admin: { listen: `127.0.0.1:${ports[n]!.admin}` } }]),
    ),
  });
  const procs: ChildProcess[] = [];
  const nodes: Record<string, RelayNode> = {};
  const stop = async () => {
    await Promise.all(procs.map((p) => stopChild(p, 15000)));
  };
  const productEnv = productEnvironment();
  try {
    for (const n of names) {
      const logFile = path.join(dir, `${n}.log`);
      const fd = openSync(logFile, 'a');
      const nodeArgs: string[] = [...(o.nodeFlags ?? [])];
      if (o.cpuProfDir) {
        mkdirSync(o.cpuProfDir, { recursive: true });
        nodeArgs.push('--cpu-prof', `--cpu-prof-dir=${o.cpuProfDir}`, `--cpu-prof-name=${n}-${Date.now()}.cpuprofile`);
      }
      const env = { ...process.env, ...productEnv, ...(o.env?.[n] ?? {}) };
      const p = reg.spawn(process.execPath, [...nodeArgs, PRODUCT_CLI, 'start', '--config', files.configs[n]!], { stdio: ['ignore', fd, fd], env });
      closeSync(fd);
      procs.push(p);
      nodes[n] = { name: n, pid: p.pid ?? 0, smtpPort: ports[n]!.smtp, adminPort: ports[n]!.admin, dataDir: path.join(dir, 'data', n), logFile };
    }
    const end = Date.now() + 30000;
    for (const n of names) {
      while ((await httpStatus(ports[n]!.admin, '/readyz')) !== 200) {
        const p = procs[names.indexOf(n)]!;
        if (p.exitCode !== null) throw new Error(`${n} exited with ${p.exitCode}: ${tail(nodes[n]!.logFile)}`);
        if (Date.now() > end) throw new Error(`${n} not ready after 30 s: ${tail(nodes[n]!.logFile)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } catch (e) {
    await stop();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const count = (n: RelayNode) => {
    const s = Spool.open(n.dataDir, { node: n.name, readonly: true });
    try {
      return s.counts();
    } finally {
      void s.close();
    }
  };
  return {
    a: nodes['relay-a']!,
    b: nodes['relay-b']!,
    dir,
    leftover: () => {
      const a = count(nodes['relay-a']!);
      const b = count(nodes['relay-b']!);
      return { aPrimary: a.primary, bShadow: b.shadow, aOutbox: a.outbox };
    },
    setLogLevel: async (level: string) => {
      for (const n of names) {
        const file = files.configs[n]!;
        const doc = YAML.parse(readFileSync(file, 'utf8')) as { log: { level: string } };
        doc.log.level = level;
        writeFileSync(file, YAML.stringify(doc));
        const before = await reloadsApplied(nodes[n]!.adminPort);
        process.kill(nodes[n]!.pid, 'SIGHUP');
        const end = Date.now() + 15000;
        while ((await reloadsApplied(nodes[n]!.adminPort)) <= before) {
          if (Date.now() > end) throw new Error(`${n} did not apply log level ${level} within 15 s: ${tail(nodes[n]!.logFile)}`);
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    },
    stop: async () => {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function tail(file: string): string {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').slice(-5).join('\n');
  } catch {
    return '(no log)';
  }
}
