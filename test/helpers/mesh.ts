/**
 * N relays for scale-out tests: each a child process (`node dist/cli.js start`), every node
 * the others' shadow peer, optionally with zones; the next hop is the tools' sink, a child
 * too. With `netns`, each relay and the sink live in their own network namespace
 * (test/helpers/netns.ts), so a node or a whole zone can vanish silently (`isolate`: no
 * RST, no FIN); otherwise everything runs on loopback and a vanish is a SIGKILL.
 *
 * Clients (`MeshTraffic`) send tagged messages from the test process to the nodes that are
 * up and keep a ledger; the relays' `accepted` lines give each 250's accept latency
 * (`shadowMs`: end of DATA → 250, measured by the relay) and shadow holder.
 */
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import nodemailer from 'nodemailer';
import YAML from 'yaml';
import { writeFileSync } from 'node:fs';
import { writeMeshConfigs, meshPeers, deepMerge, type MeshFiles } from '../../tools/pair.js';
import { freePort } from '../../tools/net.js';
import type { SinkMessage } from '../../tools/sink.js';
import { CLI, tmpDir, peekSpool } from './index.js';
import { NetLab, netnsSupport } from './netns.js';
import { Child, waitUntil, FAST, startSink } from './faultpair.js';
import { compare, type Figures, type Outcome } from './load.js';

export { FAST } from './faultpair.js';
const SINK = 'sink';
const NS_PORTS = { smtp: 2525, shadow: 7000, admin: 9025, sink: 2600 };
const now = () => performance.now();

export interface MeshOptions {
  names: string[];
  zones?: Record<string, string>;
  overrides?: Record<string, unknown>;
  nodeOverrides?: Record<string, Record<string, unknown>>;
  /** 'netns' fails without namespaces; 'auto' falls back to loopback; 'loopback' never tries */
  mode?: 'netns' | 'auto' | 'loopback';
}

export class Mesh {
  readonly nodes: Record<string, Child> = {};
  readonly lines: Record<string, Array<Record<string, unknown>>> = {};
  readonly addr: Record<string, { host: string; smtp: number; admin: number }> = {};
  readonly received: Array<{ token: string; at: number }> = [];
  readonly stderrs: string[] = [];
  /** nodes cut off by isolate() (clients no longer pick them) */
  readonly isolated = new Set<string>();
  sink: Child | undefined;

  private constructor(
    readonly mode: 'netns' | 'loopback',
    readonly lab: NetLab | undefined,
    readonly dir: string,
    private readonly cleanupDir: () => void,
    readonly files: MeshFiles,
    private readonly sinkAt: { host: string; port: number },
  ) {
    for (const n of files.names) this.lines[n] = [];
  }

  static async create(o: MeshOptions): Promise<Mesh> {
    const why = o.mode === 'loopback' ? 'loopback asked for' : netnsSupport();
    if (why && o.mode === 'netns') throw new Error(`network namespaces unavailable: ${why}`);
    const lab = why ? undefined : NetLab.create([...o.names, SINK]);
    const { dir, cleanup } = tmpDir('sr-mesh-');
    try {
      const sinkAt = lab ? { host: lab.node(SINK).ip, port: NS_PORTS.sink } : { host: '127.0.0.1', port: await freePort() };
      const perNode: Record<string, Record<string, unknown>> = {};
      const shadowAt: Record<string, { host: string; port: number }> = {};
      for (const n of o.names) {
        if (lab) {
          const ip = lab.node(n).ip;
          shadowAt[n] = { host: ip, port: NS_PORTS.shadow };
          perNode[n] = { smtp: { listen: `${ip}:${NS_PORTS.smtp}`, allowedNetworks: [`${lab.subnet}.0/24`] }, admin: { listen: `${ip}:${NS_PORTS.admin}` } };
        } else {
          // fixed admin ports: the CLI (drain, queue) finds a node through its config file
          perNode[n] = { smtp: { listen: `127.0.0.1:${await freePort()}` }, admin: { listen: `127.0.0.1:${await freePort()}` } };
        }
        perNode[n] = deepMerge(perNode[n]!, o.nodeOverrides?.[n] ?? {});
      }
      const files = await writeMeshConfigs({
        dir,
        names: o.names,
        zones: o.zones,
        nextHop: sinkAt,
        shadowAt: lab ? shadowAt : undefined,
        overrides: deepMerge(FAST, o.overrides ?? {}),
        nodeOverrides: perNode,
      });
      return new Mesh(lab ? 'netns' : 'loopback', lab, dir, cleanup, files, sinkAt);
    } catch (e) {
      lab?.destroy();
      cleanup();
      throw e;
    }
  }

  get names(): string[] {
    return this.files.names;
  }

  private prefix(name: string): string[] {
    return this.lab ? this.lab.exec(name) : [];
  }

  up(name: string): boolean {
    return this.nodes[name]?.running ?? false;
  }

  /** Nodes a client may send to now. */
  reachable(): string[] {
    return this.names.filter((n) => this.up(n) && this.addr[n] && !this.isolated.has(n));
  }

  async start(name: string): Promise<Child> {
    const c = Child.spawn(name, [...this.prefix(name), process.execPath, CLI, 'start', '--config', this.files.configs[name]!]);
    this.nodes[name] = c;
    c.onLine((l) => this.lines[name]!.push(l));
    void c.exited.then(() => c.stderr && this.stderrs.push(`${name}: ${c.stderr}`));
    const started = (await c.line((l) => l.msg === 'shadowrelay started', 30000, 'shadowrelay started')) as unknown as {
      smtp: { host: string; port: number };
      admin: { host: string; port: number };
    };
    this.addr[name] = { host: started.smtp.host, smtp: started.smtp.port, admin: started.admin.port };
    return c;
  }

  /** Starts every node and the sink; resolves once every node's link to every other is up. */
  async startAll(): Promise<void> {
    await this.sinkUp();
    await Promise.all(this.names.map((n) => this.start(n)));
    await this.waitMeshed(this.names);
  }

  /** Waits until each of `names` logged `shadow peer up` for each other one of `names`. */
  async waitMeshed(names: string[], timeoutMs = 30000): Promise<void> {
    await waitUntil(
      () => names.every((n) => names.filter((p) => p !== n).every((p) => this.lines[n]!.some((l) => l.msg === 'shadow peer up' && l.peer === p))),
      timeoutMs,
      'every link up',
    );
  }

  async kill(name: string, sig: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    await this.nodes[name]?.kill(sig);
    delete this.nodes[name];
  }

  pause(name: string): void {
    this.nodes[name]?.signal('SIGSTOP');
  }

  resume(name: string): void {
    this.nodes[name]?.signal('SIGCONT');
  }

  /**
   * These nodes vanish silently: in namespaces every packet to and from them is dropped (no
   * RST, no FIN); on loopback they are killed. They are not picked by clients from now on.
   */
  async vanish(group: string[]): Promise<void> {
    for (const n of group) this.isolated.add(n);
    if (this.lab) this.lab.isolate(group);
    else await Promise.all(group.map((n) => this.kill(n)));
  }

  async sinkUp(): Promise<void> {
    if (this.sink?.running) return;
    this.sink = await startSink(this.prefix(SINK), this.sinkAt, this.received);
  }

  async sinkDown(): Promise<void> {
    const c = this.sink;
    this.sink = undefined;
    await c?.kill('SIGKILL');
  }

  dataDir(name: string): string {
    return path.join(this.dir, 'data', name);
  }

  /** Rows a node's spool holds (messages, owed discards, promotion records); 0 = empty. */
  spoolTotal(name: string): number {
    const p = peekSpool(this.dataDir(name));
    try {
      return p.total();
    } finally {
      p.close();
    }
  }

  logged(name: string, msg: string): Array<Record<string, unknown>> {
    return (this.lines[name] ?? []).filter((l) => l.msg === msg);
  }

  /** Every `accepted` line of every node: id, node, shadow peer, accept latency. */
  accepted(): Array<{ node: string; id: string; shadowPeer: string | null; shadowMs: number }> {
    return this.names.flatMap((node) =>
      this.logged(node, 'accepted').map((l) => ({ node, id: String(l.id), shadowPeer: (l.shadowPeer as string | null) ?? null, shadowMs: Number(l.shadowMs) })),
    );
  }

  sinkMessages(): SinkMessage[] {
    return this.received.map((r) => ({ from: '', to: [], raw: Buffer.from(`Subject: load ${r.token}\r\n`), secure: false }));
  }

  /** Rewrites a node's peer list (every other of `names`) and sends SIGHUP. */
  reloadPeers(name: string, names: string[]): void {
    const doc = this.files.docs[name]!;
    (doc.shadow as Record<string, unknown>).peers = meshPeers(names, name, this.files.shadowAt);
    writeFileSync(this.files.configs[name]!, YAML.stringify(doc));
    this.nodes[name]?.signal('SIGHUP');
  }

  diagnostics(): string {
    const live = this.names.filter((n) => this.nodes[n]?.stderr).map((n) => `${n}: ${this.nodes[n]!.stderr}`);
    return [...this.stderrs, ...live].map((s) => s.slice(-3000)).join('\n---\n');
  }

  async stop(): Promise<void> {
    await Promise.all(this.names.map((n) => this.kill(n)));
    await this.sinkDown();
    this.lab?.destroy();
    this.cleanupDir();
  }
}

export interface MeshSent {
  token: string;
  node: string;
  outcome: Outcome;
  response: string;
  id?: string;
  ms: number;
}

/** Clients sending tagged messages, one after another each, to nodes picked by `targets`. */
export class MeshTraffic {
  readonly ledger: MeshSent[] = [];
  private running = false;
  private loops: Promise<void>[] = [];
  private seq = 0;

  constructor(
    private readonly mesh: Pick<Mesh, 'addr' | 'reachable' | 'sinkMessages'>,
    private readonly o: { clients: number; prefix: string; targets?: () => string[]; rand?: () => number; timeoutMs?: number; max?: number },
  ) {}

  start(): this {
    this.running = true;
    for (let i = 0; i < this.o.clients; i++) this.loops.push(this.loop(i));
    return this;
  }

  private async loop(i: number): Promise<void> {
    const rand = this.o.rand ?? Math.random;
    while (this.running && (this.o.max === undefined || this.seq < this.o.max)) {
      const targets = (this.o.targets ?? (() => this.mesh.reachable()))().filter((n) => this.mesh.addr[n]);
      if (targets.length === 0) {
        await new Promise((r) => setTimeout(r, 20));
        continue;
      }
      const node = targets[(i + Math.floor(rand() * targets.length)) % targets.length]!;
      const e = await this.sendOne(node, `${this.o.prefix}${++this.seq}`);
      this.ledger.push(e);
      if (e.outcome !== '250') await new Promise((r) => setTimeout(r, 50));
    }
  }

  async sendOne(node: string, token: string): Promise<MeshSent> {
    const { host, smtp: port } = this.mesh.addr[node]!;
    const timeout = this.o.timeoutMs ?? 15000;
    const t = nodemailer.createTransport({ host, port, secure: false, ignoreTLS: true, connectionTimeout: timeout, greetingTimeout: timeout, socketTimeout: timeout });
    const t0 = now();
    try {
      const info = (await t.sendMail({
        envelope: { from: 'load@example.test', to: ['sink@example.test'] },
        raw: `From: load@example.test\r\nTo: sink@example.test\r\nSubject: load ${token}\r\nMessage-ID: <${token}@load.test>\r\n\r\ntoken ${token}\r\n`,
      })) as { response: string };
      const id = /queued as ([A-Za-z0-9]+)/.exec(info.response)?.[1];
      return { token, node, outcome: info.response.startsWith('250') ? '250' : 'noreply', response: info.response, id, ms: now() - t0 };
    } catch (e) {
      const err = e as { responseCode?: number; response?: string; message: string };
      const text = err.response ?? err.message;
      const outcome: Outcome =
        err.responseCode && err.responseCode >= 500 ? '5xx' : err.responseCode && err.responseCode >= 400 ? '4xx' : /ECONNREFUSED|EHOSTUNREACH/.test(err.message) ? 'noconnect' : 'noreply';
      return { token, node, outcome, response: text, ms: now() - t0 };
    } finally {
      t.close();
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
    this.loops = [];
  }

  /** The ledger against what the next hop received. */
  figures(): Figures {
    return compare(
      this.ledger.map((e) => ({ token: e.token, port: 0, outcome: e.outcome, response: e.response })),
      this.mesh.sinkMessages(),
    );
  }
}

/** The q-quantile (0..1) of a list of numbers (nearest rank). */
export function quantile(xs: number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
}

/** Waits until the next hop received every token answered 250 (or the deadline passes). */
export async function waitDelivered(mesh: Mesh, traffic: MeshTraffic, timeoutMs: number): Promise<void> {
  const want = traffic.ledger.filter((e) => e.outcome === '250').map((e) => e.token);
  await waitUntil(
    () => {
      const got = new Set(mesh.received.map((r) => r.token));
      return want.every((t) => got.has(t));
    },
    timeoutMs,
    `every 250 delivered (${want.length})`,
    100,
  ).catch(() => undefined);
}
