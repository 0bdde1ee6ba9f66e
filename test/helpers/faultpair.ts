/**
 * A pair of relays for fault tests, each a child process (`node dist/cli.js start`) in its
 * own network namespace (test/helpers/netns.ts), with the next hop (the tools' `sink`, dist-tools) in a third
 * one. Where namespaces cannot be made, the same pair runs on loopback (`mode` says which)
 * and only the nft faults are unavailable.
 *
 * The next hop is always reached through a TCP proxy in the test process (test/helpers/proxy.ts),
 * so it can black-hole, trickle or reset. Clients (`Traffic`) send tagged messages from the
 * test process and keep a timed ledger; `ShadowAudit` checks while they run that the peer's
 * spool, opened read-only, holds a copy of every message answered 250 (or the peer logged
 * storing it before the discard removed it); `report()` compares the ledger with what the
 * next hop received and measures recovery: from the end of a fault until each node's first
 * 250 again.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import nodemailer from 'nodemailer';
import { writePairConfigs, deepMerge, type PairFiles } from '../../tools/pair.js';
import { freePort } from '../../tools/net.js';
import type { SinkMessage } from '../../tools/sink.js';
import { CLI, TOOLS_CLI, tmpDir, peekSpool, adminHttp, waitFor } from './index.js';
import { TcpProxy } from './proxy.js';
import { NetLab, netnsSupport } from './netns.js';
import { compare, formatFigures, type Outcome, type Figures } from './load.js';

export type NodeName = 'relay-a' | 'relay-b';
export const NODES: NodeName[] = ['relay-a', 'relay-b'];
export const other = (n: NodeName): NodeName => (n === 'relay-a' ? 'relay-b' : 'relay-a');
const SINK = 'sink';

/** Fixed ports inside the namespaces (each has its own port space: nothing to race for). */
const NS_PORTS = { smtp: 2525, shadow: 7000, admin: 9025, sink: 2600 };

/** Timings every fault test starts from: recovery target = heartbeatMs + timeoutMs. */
export const FAST = {
  shadow: { heartbeatMs: 500, timeoutMs: 1500, promoteAfterMs: 6000, reconcileIntervalMs: 1000 },
  delivery: {
    retry: { initialMs: 200, maxMs: 1000, maxAgeMs: 432000000 },
    timeouts: { connectMs: 2000, greetingMs: 2000, socketMs: 3000 },
  },
  node: { shutdownTimeoutMs: 3000 },
};

const now = () => performance.now();
/** the loopback fallback is announced once per test file */
let saidLoopback = false;

/** Polls an async condition until it holds or the deadline passes. */
export async function waitUntil(cond: () => Promise<boolean> | boolean, timeoutMs: number, what: string, everyMs = 50): Promise<void> {
  const end = now() + timeoutMs;
  while (!(await cond())) {
    if (now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A child process with its stdout JSON lines and the tail of its stderr. */
export class Child {
  readonly lines: Array<Record<string, unknown>> = [];
  stderr = '';
  readonly exited: Promise<number | null>;
  private readonly listeners: Array<(l: Record<string, unknown>) => void> = [];

  constructor(
    readonly label: string,
    readonly proc: ChildProcess,
  ) {
    proc.stderr!.on('data', (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-20000)));
    this.exited = new Promise((r) => proc.on('exit', (code, sig) => r(code ?? (sig ? -1 : null))));
    createInterface({ input: proc.stdout! }).on('line', (l) => {
      let j: Record<string, unknown>;
      try {
        j = JSON.parse(l) as Record<string, unknown>;
      } catch {
        return;
      }
      this.lines.push(j);
      for (const f of this.listeners) f(j);
    });
  }

  static spawn(label: string, argv: string[]): Child {
    return new Child(label, spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] }));
  }

  onLine(f: (l: Record<string, unknown>) => void): void {
    this.listeners.push(f);
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Resolves with the first line matching `pred` (also one already seen); rejects if the process exits first. */
  line(pred: (l: Record<string, unknown>) => boolean, timeoutMs: number, what: string): Promise<Record<string, unknown>> {
    const seen = this.lines.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${this.label}: no "${what}" within ${timeoutMs} ms; stderr: ${this.stderr.slice(-2000)}`)), timeoutMs);
      this.listeners.push((l) => {
        if (pred(l)) {
          clearTimeout(t);
          resolve(l);
        }
      });
      void this.exited.then((code) => {
        clearTimeout(t);
        reject(new Error(`${this.label} exited (${code}) before "${what}"; stderr: ${this.stderr.slice(-2000)}`));
      });
    });
  }

  signal(sig: NodeJS.Signals): void {
    if (this.running) this.proc.kill(sig);
  }

  async kill(sig: NodeJS.Signals = 'SIGKILL'): Promise<number | null> {
    if (this.running) {
      // a stopped process gets SIGTERM only once it runs again
      if (sig !== 'SIGKILL') this.proc.kill('SIGCONT');
      this.proc.kill(sig);
    }
    return this.exited;
  }
}

export interface Delivered {
  token: string;
  at: number;
}

export interface FaultPairOptions {
  overrides?: Record<string, unknown>;
  nodeOverrides?: Partial<Record<NodeName, Record<string, unknown>>>;
  /** 'netns' fails if namespaces cannot be made; 'auto' falls back to loopback */
  mode?: 'netns' | 'auto';
}

export class FaultPair {
  readonly lines: Record<NodeName, Array<Record<string, unknown>>> = { 'relay-a': [], 'relay-b': [] };
  /** stderr of every relay incarnation and of nft (for failure messages) */
  readonly stderrs: string[] = [];
  readonly nodes: Partial<Record<NodeName, Child>> = {};
  readonly received: Delivered[] = [];
  readonly addr = {} as Record<NodeName, { host: string; smtp: number; admin: number }>;
  sink: Child | undefined;
  readonly t0 = now();

  private constructor(
    readonly mode: 'netns' | 'loopback',
    readonly lab: NetLab | undefined,
    readonly dir: string,
    private readonly cleanupDir: () => void,
    readonly files: PairFiles,
    readonly nextHop: TcpProxy,
    private readonly sinkAt: { host: string; port: number },
  ) {}

  static async create(o: FaultPairOptions = {}): Promise<FaultPair> {
    const why = netnsSupport();
    if (why && o.mode === 'netns') throw new Error(`network namespaces unavailable: ${why}`);
    const lab = why ? undefined : NetLab.create([...NODES, SINK]);
    const { dir, cleanup } = tmpDir('sr-faults-');
    let proxy: TcpProxy | undefined;
    try {
      const hostIp = lab ? lab.hostIp : '127.0.0.1';
      const sinkAt = lab ? { host: lab.node(SINK).ip, port: NS_PORTS.sink } : { host: '127.0.0.1', port: await freePort() };
      proxy = new TcpProxy(sinkAt.port, sinkAt.host);
      await proxy.listen(0, hostIp);
      const perNode: Record<string, Record<string, unknown>> = {};
      for (const n of NODES) {
        let own: Record<string, unknown> = {};
        if (lab) {
          const ip = lab.node(n).ip;
          own = {
            smtp: { listen: `${ip}:${NS_PORTS.smtp}`, allowedNetworks: [`${lab.subnet}.0/24`] },
            shadow: { listen: `${ip}:${NS_PORTS.shadow}`, peers: [{ name: other(n), address: `${lab.node(other(n)).ip}:${NS_PORTS.shadow}` }] },
            admin: { listen: `${ip}:${NS_PORTS.admin}` },
          };
        } else {
          own = { smtp: { listen: `127.0.0.1:${await freePort()}` } };
        }
        perNode[n] = deepMerge(own, o.nodeOverrides?.[n] ?? {});
      }
      const overrides = deepMerge(deepMerge(FAST, { delivery: { nextHop: { host: hostIp, port: proxy.port, tls: 'none' } } }), o.overrides ?? {});
      const files = await writePairConfigs({ dir, sinkPort: proxy.port, overrides, nodeOverrides: perNode });
      const fp = new FaultPair(lab ? 'netns' : 'loopback', lab, dir, cleanup, files, proxy, sinkAt);
      if (why && !saidLoopback) process.stdout.write(`[faults] network namespaces unavailable (${why}): relays run on loopback\n`);
      saidLoopback = true;
      return fp;
    } catch (e) {
      await proxy?.close();
      lab?.destroy();
      cleanup();
      throw e;
    }
  }

  private prefix(name: string): string[] {
    return this.lab ? this.lab.exec(name) : [];
  }

  up(name: NodeName): boolean {
    return this.nodes[name]?.running ?? false;
  }

  /** Starts a relay; resolves once it logged `shadowrelay started`. */
  async start(name: NodeName): Promise<Child> {
    const c = Child.spawn(name, [...this.prefix(name), process.execPath, CLI, 'start', '--config', this.files.configs[name]!]);
    this.nodes[name] = c;
    c.onLine((l) => this.lines[name].push(l));
    void c.exited.then(() => c.stderr && this.stderrs.push(`${name}: ${c.stderr}`));
    const started = (await c.line((l) => l.msg === 'shadowrelay started', 30000, 'shadowrelay started')) as unknown as {
      smtp: { host: string; port: number };
      admin: { host: string; port: number };
    };
    this.addr[name] = { host: started.smtp.host, smtp: started.smtp.port, admin: started.admin.port };
    return c;
  }

  async startBoth(): Promise<void> {
    await Promise.all(NODES.map((n) => this.start(n)));
    await this.waitLinked();
  }

  /** Waits until each node's own requests reach the other (both /readyz 200). */
  async waitLinked(timeoutMs = 20000): Promise<void> {
    await waitUntil(async () => (await Promise.all(NODES.filter((n) => this.up(n)).map((n) => this.ready(n)))).every(Boolean), timeoutMs, 'both relays ready');
  }

  async ready(name: NodeName): Promise<boolean> {
    return (await this.readyz(name)).status === 200;
  }

  async readyz(name: NodeName): Promise<{ status: number; text: string }> {
    const a = this.addr[name];
    try {
      return await adminHttpAt(a.host, a.admin, '/readyz');
    } catch (e) {
      return { status: 0, text: (e as Error).message };
    }
  }

  async metrics(name: NodeName): Promise<string> {
    const a = this.addr[name];
    return (await adminHttpAt(a.host, a.admin, '/metrics')).text;
  }

  async kill(name: NodeName, sig: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const c = this.nodes[name];
    if (!c) return;
    await c.kill(sig);
    delete this.nodes[name];
  }

  pause(name: NodeName): void {
    this.nodes[name]?.signal('SIGSTOP');
  }

  resume(name: NodeName): void {
    this.nodes[name]?.signal('SIGCONT');
  }

  /** The next hop (a `shadowrelay sink` child) starts listening. */
  async sinkUp(): Promise<void> {
    if (this.sink?.running) return;
    this.sink = await startSink(this.prefix(SINK), this.sinkAt, this.received);
  }

  /** The next hop crashes (SIGKILL: its connections are reset by the kernel). */
  async sinkDown(): Promise<void> {
    const c = this.sink;
    this.sink = undefined;
    await c?.kill('SIGKILL');
  }

  dataDir(name: NodeName): string {
    return path.join(this.dir, 'data', name);
  }

  /** Ids in a node's spool (any role), read-only; undefined when it cannot be read now. */
  spoolIds(name: NodeName): Set<string> | undefined {
    try {
      const p = peekSpool(this.dataDir(name));
      try {
        return new Set(p.ids());
      } finally {
        p.close();
      }
    } catch {
      return undefined;
    }
  }

  spoolTotal(name: NodeName): number {
    const p = peekSpool(this.dataDir(name));
    try {
      return p.total();
    } finally {
      p.close();
    }
  }

  logged(name: NodeName, msg: string): Array<Record<string, unknown>> {
    return this.lines[name].filter((l) => l.msg === msg);
  }

  /** received, in the shape compare() reads */
  sinkMessages(): SinkMessage[] {
    return this.received.map((r) => ({ from: '', to: [], raw: Buffer.from(`Subject: load ${r.token}\r\n`), secure: false }));
  }

  /** What went wrong, for a failure message: the relays' and nft's stderr. */
  diagnostics(): string {
    const live = NODES.filter((n) => this.nodes[n]?.stderr).map((n) => `${n}: ${this.nodes[n]!.stderr}`);
    return [...this.stderrs, ...live].map((s) => s.slice(-3000)).join('\n---\n');
  }

  async stop(): Promise<void> {
    await Promise.all(NODES.map((n) => this.kill(n)));
    await this.sinkDown();
    await this.nextHop.close();
    this.lab?.destroy();
    this.cleanupDir();
  }
}

/**
 * The next hop as a `shadowrelay sink` child (`prefix`: how to run it inside its namespace);
 * records the token of every load message it receives. Resolves once it listens.
 */
export async function startSink(prefix: string[], at: { host: string; port: number }, received: Delivered[]): Promise<Child> {
  const c = Child.spawn(SINK, [...prefix, process.execPath, TOOLS_CLI, 'sink', '--listen', `${at.host}:${at.port}`]);
  c.onLine((l) => {
    const token = /^load (\S+)$/.exec(String(l.subject ?? ''))?.[1];
    if (token) received.push({ token, at: now() });
  });
  await c.line((l) => l.msg === 'sink listening', 20000, 'sink listening');
  return c;
}

/** An admin request to a node at any address (a namespace's, or loopback). */
export function adminHttpAt(host: string, port: number, p: string): Promise<{ status: number; text: string }> {
  if (host === '127.0.0.1') return adminHttp(port, p);
  return import('node:http').then(
    (http) =>
      new Promise((resolve, reject) => {
        const req = http.request({ host, port, path: p, timeout: 5000 }, (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (d: string) => (text += d));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
        });
        req.on('timeout', () => req.destroy(new Error('admin request timed out')));
        req.on('error', reject);
        req.end();
      }),
  );
}

export interface Sent {
  token: string;
  node: NodeName;
  port: number;
  outcome: Outcome;
  response: string;
  /** queue id of a 250 */
  id?: string;
  /** performance.now() when the client started / got its answer */
  t0: number;
  t1: number;
}

export interface TrafficOptions {
  clients: number;
  /** nodes a client may use right now (empty: wait) */
  targets: () => NodeName[];
  rand: () => number;
  prefix: string;
  /** bytes of padding per message body */
  pad?: number;
  /** client timeouts (a real MTA gives up on a silent server too) */
  timeoutMs?: number;
  /**
   * each client keeps to one relay while it may (client i → NODES[i % 2]): a client held by
   * one relay (an answer in doubt waits up to 2 × timeoutMs) does not starve the other's load
   */
  pinned?: boolean;
}

/** Clients that each send one tagged message after another, with a timed ledger. */
export class Traffic {
  readonly ledger: Sent[] = [];
  private running = false;
  private loops: Promise<void>[] = [];
  private seq = 0;

  constructor(
    private readonly fp: FaultPair,
    private readonly o: TrafficOptions,
  ) {}

  start(): this {
    this.running = true;
    for (let i = 0; i < this.o.clients; i++) this.loops.push(this.loop(i));
    return this;
  }

  private async loop(i: number): Promise<void> {
    while (this.running) {
      const targets = this.o.targets().filter((n) => this.fp.addr[n]);
      if (targets.length === 0) {
        await new Promise((r) => setTimeout(r, 20));
        continue;
      }
      const own = NODES[i % NODES.length]!;
      const node = this.o.pinned && targets.includes(own) ? own : targets[Math.floor(this.o.rand() * targets.length)]!;
      const e = await this.sendOne(node, `${this.o.prefix}${++this.seq}`);
      this.ledger.push(e);
      // a refused client backs off a little, as an MTA would
      if (e.outcome !== '250') await new Promise((r) => setTimeout(r, 50));
    }
  }

  async sendOne(node: NodeName, token: string): Promise<Sent> {
    const { host, smtp: port } = this.fp.addr[node];
    const timeout = this.o.timeoutMs ?? 10000;
    const t = nodemailer.createTransport({ host, port, secure: false, ignoreTLS: true, connectionTimeout: timeout, greetingTimeout: timeout, socketTimeout: timeout });
    const pad = this.o.pad ? `${'x'.repeat(76)}\r\n`.repeat(Math.ceil(this.o.pad / 78)) : '';
    const t0 = now();
    const base = { token, node, port, t0 };
    try {
      const info = (await t.sendMail({
        envelope: { from: 'load@example.test', to: ['sink@example.test'] },
        raw: `From: load@example.test\r\nTo: sink@example.test\r\nSubject: load ${token}\r\nMessage-ID: <${token}@load.test>\r\n\r\ntoken ${token}\r\n${pad}`,
      })) as { response: string };
      const ok = info.response.startsWith('250');
      return { ...base, outcome: ok ? '250' : 'noreply', response: info.response, id: /queued as ([A-Z0-9]+)/.exec(info.response)?.[1], t1: now() };
    } catch (e) {
      const err = e as { responseCode?: number; response?: string; message: string };
      const text = err.response ?? err.message;
      const outcome: Outcome = err.responseCode && err.responseCode >= 500 ? '5xx' : err.responseCode && err.responseCode >= 400 ? '4xx' : /ECONNREFUSED/.test(err.message) ? 'noconnect' : 'noreply';
      return { ...base, outcome, response: text, t1: now() };
    } finally {
      t.close();
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
    this.loops = [];
  }

  /**
   * From `since` (performance.now()), the time until every node in `nodes` answered 250
   * again; waits for it (deadline). The fault's end is `since`.
   */
  async recovery(since: number, nodes: NodeName[], timeoutMs = 30000): Promise<number> {
    const first = (n: NodeName) => this.ledger.find((e) => e.node === n && e.outcome === '250' && e.t1 >= since);
    await waitFor(() => nodes.every((n) => first(n)), timeoutMs, `a 250 from ${nodes.join(' and ')} after the fault`, 20);
    return Math.max(...nodes.map((n) => first(n)!.t1 - since));
  }

  /** Waits until at least `n` more 250s than now. */
  async more250(n: number, timeoutMs = 30000): Promise<void> {
    const target = this.count250() + n;
    await waitFor(() => this.count250() >= target, timeoutMs, `${n} more 250s`, 20);
  }

  count250(): number {
    return this.ledger.filter((e) => e.outcome === '250').length;
  }
}

/**
 * "No 250 without a shadow copy, at any moment": every 100 ms, each message answered 250
 * since the last look is looked up in the other node's spool (read-only). A copy the peer
 * no longer holds must have been there: the peer logged storing it (the discard after
 * delivery removes it within milliseconds). Anything else is a violation.
 */
export class ShadowAudit {
  onDisk = 0;
  storedThenDiscarded = 0;
  readonly missing: string[] = [];
  private next = 0;
  private pending: Array<{ e: Sent; since: number }> = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly fp: FaultPair,
    private readonly traffic: Traffic,
  ) {}

  start(): this {
    this.timer = setInterval(() => this.look(), 100);
    return this;
  }

  private look(): void {
    const fresh = this.traffic.ledger.slice(this.next).filter((e) => e.outcome === '250' && e.id);
    this.next = this.traffic.ledger.length;
    const todo = [...this.pending, ...fresh.map((e) => ({ e, since: now() }))];
    this.pending = [];
    const peek = new Map<NodeName, Set<string> | undefined>();
    for (const item of todo) {
      const peer = other(item.e.node);
      if (!peek.has(peer)) peek.set(peer, this.fp.spoolIds(peer));
      const ids = peek.get(peer);
      if (ids?.has(item.e.id!)) {
        this.onDisk++;
        continue;
      }
      // the peer's own word that the copy was on its disk: it stored it, or (after a put
      // whose answer was lost, e.g. it was killed right after the fsync) told the primary so
      const id = item.e.id!;
      const attested = (l: Record<string, unknown>) =>
        (l.msg === 'shadow stored' && l.id === id) || (l.msg === 'resolve: told the primary which doubtful copies are held' && Array.isArray(l.held) && l.held.includes(id));
      if (this.fp.lines[peer].some(attested)) {
        this.storedThenDiscarded++;
        continue;
      }
      // the peer's log line may still be in its pipe, or its spool unreadable this instant
      if (now() - item.since < 5000) this.pending.push(item);
      else this.missing.push(`${item.e.token} (${item.e.id} from ${item.e.node})`);
    }
  }

  /** Finishes the audit: everything pending gets its last look. */
  async finish(): Promise<void> {
    await waitFor(() => (this.look(), this.pending.length === 0), 10000, 'shadow audit done', 100).catch(() => undefined);
    clearInterval(this.timer);
    for (const p of this.pending) this.missing.push(`${p.e.token} (${p.e.id} from ${p.e.node})`);
    this.pending = [];
  }

  stop(): void {
    clearInterval(this.timer);
  }

  get summary(): string {
    return `shadow audit: ${this.onDisk} seen on the peer's disk, ${this.storedThenDiscarded} stored then discarded, ${this.missing.length} missing`;
  }
}

export interface Report {
  f: Figures;
  line: string;
}

/** Drains (every 250 delivered, both spools empty) and builds the one-line figures. */
export async function settle(fp: FaultPair, traffic: Traffic, audit: ShadowAudit, name: string, extra: Record<string, string | number> = {}, drainMs = 60000): Promise<Report> {
  await traffic.stop();
  await audit.finish();
  await waitFor(
    () => compare(traffic.ledger, fp.sinkMessages()).lost.length === 0 && NODES.every((n) => !fp.up(n) || fp.spoolTotal(n) === 0),
    drainMs,
    'every 250 delivered and both spools empty',
    200,
  ).catch((e: Error) => process.stdout.write(`[${name}] drain incomplete: ${e.message}\n`));
  const f = compare(traffic.ledger, fp.sinkMessages());
  const parts = [
    `sent ${f.sent}`,
    `250 ${f.ok250}`,
    `4xx ${f.refused4xx}`,
    `delivered ${f.delivered}`,
    `lost ${f.lost.length}`,
    `refused-but-delivered ${f.refusedDelivered.length}`,
    `duplicates ${f.duplicateDeliveries}`,
    ...Object.entries(extra).map(([k, v]) => `${k} ${v}`),
  ];
  const line = `[${name}] ${parts.join(' | ')} | ${audit.summary} | ${fp.mode}`;
  process.stdout.write(line + '\n');
  if (f.lost.length || f.refusedDelivered.length) process.stdout.write(`[${name}] detail: ${formatFigures(f)}\n`);
  for (const m of audit.missing) {
    const id = /\((\w+) from/.exec(m)?.[1];
    const story = NODES.flatMap((n) => fp.lines[n].filter((l) => l.id === id || (Array.isArray(l.ids) && (l.ids as string[]).includes(id!))).map((l) => `${n} ${String(l.time).slice(11, 23)} ${String(l.msg)}`));
    process.stdout.write(`[${name}] no shadow seen for ${m}: ${story.join(' / ')}\n`);
  }
  return { f, line };
}
