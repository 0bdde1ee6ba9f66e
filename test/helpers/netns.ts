/**
 * A network lab for fault tests: each node in its own network namespace, all joined to a
 * bridge in a hub namespace by veth pairs, plus one veth into the test's own namespace so
 * the test process (clients, proxies, spool peeks) reaches every node. Addresses come from
 * 198.18.0.0/15 (RFC 2544, never routed outside); each lab takes one /24:
 *   .1 the test process, .2 .3 … the nodes, in the order given.
 * Faults are nftables rules in a node's namespace (silent drops: no RST, no ICMP), replaced
 * atomically. Names carry the test process's pid, so a sweep at start removes what a
 * crashed run left behind (its pid is gone) without touching a concurrent run's lab.
 * Needs root and `ip`; `nft` only for the drop rules. `netnsSupport()` says why not.
 */
import { spawnSync } from 'node:child_process';
import { which } from './index.js';

const PREFIX = 'srf';

export interface NetNode {
  name: string;
  ns: string;
  ip: string;
}

/** Why namespaces cannot be made here, or null when they can. */
export function netnsSupport(): string | null {
  // to see the fallback (loopback; nft tests skipped) on a machine that has namespaces
  if (process.env.SR_NO_NETNS) return 'disabled by SR_NO_NETNS';
  if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`;
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'network namespaces need root (CI runs as root)';
  if (!which('ip')) return 'the `ip` command (iproute2) is not installed';
  const probe = `${PREFIX}-${process.pid}-probe`;
  const r = run(['ip', 'netns', 'add', probe]);
  run(['ip', 'netns', 'del', probe]);
  if (r.status !== 0) return `ip netns add failed: ${r.stderr.trim()}`;
  return null;
}

/** Why nft rules cannot be used here, or null. */
export function nftSupport(): string | null {
  const why = netnsSupport();
  if (why) return why;
  if (!which('nft')) return 'nft (Debian package nftables) is not installed; .ci/run installs it';
  return null;
}

function run(argv: string[], input?: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', input, env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` } });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? (r.error ? String(r.error) : '') };
}

function must(argv: string[], input?: string): string {
  const r = run(argv, input);
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed (${r.status}): ${r.stderr.trim()}`);
  return r.stdout;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes namespaces and root-side links of labs whose test process is gone. */
export function sweepLeftovers(): string[] {
  const removed: string[] = [];
  const ours = new RegExp(`^${PREFIX}-(\\d+)-`);
  for (const line of run(['ip', 'netns', 'list']).stdout.split('\n')) {
    const name = line.split(' ')[0]!;
    const m = ours.exec(name);
    if (m && !alive(Number(m[1]))) {
      run(['ip', 'netns', 'del', name]);
      removed.push(name);
    }
  }
  for (const line of run(['ip', '-o', 'link', 'show']).stdout.split('\n')) {
    const name = /^\d+: ([^:@]+)/.exec(line)?.[1];
    const m = name ? ours.exec(name) : null;
    if (name && m && !alive(Number(m[1]))) {
      run(['ip', 'link', 'del', name]);
      removed.push(name);
    }
  }
  return removed;
}

let labSeq = 0;

/** A /24 of 198.18.0.0/15 that no interface of this namespace uses yet. */
function pickSubnet(): string {
  const used = run(['ip', '-4', '-o', 'addr', 'show']).stdout + run(['ip', '-4', 'route', 'show']).stdout;
  for (let k = 0; k < 512; k++) {
    const i = (process.pid * 31 + labSeq * 7 + k) % 512;
    const net = `198.${18 + (i >> 8)}.${i & 255}`;
    if (!used.includes(`${net}.`)) return net;
  }
  throw new Error('no free /24 in 198.18.0.0/15');
}

/** As a DropRule's `peer`: the test process's own end of the lab (clients, proxies). */
export const HOST = '@host';

export interface DropRule {
  /** the node whose namespace holds the rule */
  at: string;
  /** the other node (or HOST) */
  peer: string;
  /** out: packets `at` sends to `peer`; in: packets it receives from `peer` */
  dir: 'out' | 'in';
  /**
   * packet: every packet that way. conn: only the connections `at` opened to `peer`
   * (conntrack: their original direction going out, their replies coming in)
   */
  level: 'packet' | 'conn';
}

export class NetLab {
  readonly hostIp: string;
  readonly nodes = new Map<string, NetNode>();
  private readonly hub: string;
  private readonly hostLink: string;
  private readonly rules = new Map<string, DropRule[]>();
  private destroyed = false;

  private constructor(
    readonly subnet: string,
    private readonly tag: string,
  ) {
    this.hostIp = `${subnet}.1`;
    this.hub = `${tag}-hub`;
    this.hostLink = tag;
  }

  /** Makes the hub, one namespace per name and the test's own link into the hub. */
  static create(names: string[]): NetLab {
    sweepLeftovers();
    const seq = ++labSeq;
    const lab = new NetLab(pickSubnet(), `${PREFIX}-${process.pid}-${seq}`);
    try {
      lab.build(names);
    } catch (e) {
      lab.destroy();
      throw e;
    }
    return lab;
  }

  private build(names: string[]): void {
    const { hub, subnet } = this;
    must(['ip', 'netns', 'add', hub]);
    must(['ip', '-n', hub, 'link', 'add', 'br0', 'type', 'bridge']);
    must(['ip', '-n', hub, 'link', 'set', 'br0', 'up']);
    // the test process's end: a link in its own namespace (only this one name lives there)
    must(['ip', 'link', 'add', this.hostLink, 'type', 'veth', 'peer', 'name', 'h0', 'netns', hub]);
    must(['ip', '-n', hub, 'link', 'set', 'h0', 'master', 'br0', 'up']);
    must(['ip', 'addr', 'add', `${this.hostIp}/24`, 'dev', this.hostLink]);
    must(['ip', 'link', 'set', this.hostLink, 'up']);
    names.forEach((name, i) => {
      const ns = `${this.tag}-${name}`;
      const ip = `${subnet}.${i + 2}`;
      must(['ip', 'netns', 'add', ns]);
      must(['ip', '-n', hub, 'link', 'add', `h${i + 1}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      must(['ip', '-n', hub, 'link', 'set', `h${i + 1}`, 'master', 'br0', 'up']);
      must(['ip', '-n', ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
      must(['ip', '-n', ns, 'link', 'set', 'eth0', 'up']);
      must(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
      // connection tracking from the first SYN on: a connection it first sees mid-stream
      // gets its direction from whichever packet came first (and conn-level drops hit the
      // wrong side). A table of its own, never replaced, keeps it on.
      if (which('nft')) must(['ip', 'netns', 'exec', ns, 'nft', '-f', '-'], 'table inet srtrack {\n  chain pre { type filter hook prerouting priority -150; policy accept; ct state new counter; }\n  chain out { type filter hook output priority -150; policy accept; ct state new counter; }\n}\n');
      this.nodes.set(name, { name, ns, ip });
    });
  }

  node(name: string): NetNode {
    const n = this.nodes.get(name);
    if (!n) throw new Error(`no node ${name} in the lab`);
    return n;
  }

  /** argv prefix that runs a command inside a node's namespace */
  exec(name: string): string[] {
    return ['ip', 'netns', 'exec', this.node(name).ns];
  }

  /** Installs these drop rules (replacing all earlier ones), atomically per namespace. */
  setDrops(rules: DropRule[]): void {
    const byNode = new Map<string, DropRule[]>();
    for (const r of rules) byNode.set(r.at, [...(byNode.get(r.at) ?? []), r]);
    // namespaces that had rules and have none now are reset too
    for (const at of new Set([...byNode.keys(), ...this.rules.keys()])) {
      const mine = byNode.get(at) ?? [];
      const input: string[] = [];
      const output: string[] = [];
      for (const r of mine) {
        const peer = r.peer === HOST ? this.hostIp : this.node(r.peer).ip;
        if (r.level === 'packet') (r.dir === 'out' ? output : input).push(r.dir === 'out' ? `ip daddr ${peer} drop` : `ip saddr ${peer} drop`);
        else if (r.dir === 'out') {
          // connections `at` opened: requests out, replies in
          output.push(`ip daddr ${peer} ct direction original drop`);
          input.push(`ip saddr ${peer} ct direction reply drop`);
        } else {
          // connections `peer` opened to `at`: requests in, replies out
          input.push(`ip saddr ${peer} ct direction original drop`);
          output.push(`ip daddr ${peer} ct direction reply drop`);
        }
      }
      const script = [
        'table inet srfault {}',
        'delete table inet srfault',
        'table inet srfault {',
        `  chain input { type filter hook input priority 0; policy accept; ${input.map((r) => `${r}; `).join('')}}`,
        `  chain output { type filter hook output priority 0; policy accept; ${output.map((r) => `${r}; `).join('')}}`,
        '}',
        '',
      ].join('\n');
      must([...this.exec(at), 'nft', '-f', '-'], script);
      if (mine.length) this.rules.set(at, mine);
      else this.rules.delete(at);
    }
  }

  /** A silent partition between two nodes: every packet either way is dropped. */
  partition(a: string, b: string): void {
    this.setDrops([
      { at: a, peer: b, dir: 'out', level: 'packet' },
      { at: a, peer: b, dir: 'in', level: 'packet' },
    ]);
  }

  /**
   * A group of nodes vanishes silently (a zone's power or uplink lost): every packet between
   * them and everyone else — the other nodes and the test's own end — is dropped.
   */
  isolate(group: string[]): void {
    const others = [...[...this.nodes.keys()].filter((n) => !group.includes(n)), HOST];
    this.setDrops(group.flatMap((at) => others.flatMap((peer) => (['out', 'in'] as const).map((dir) => ({ at, peer, dir, level: 'packet' as const })))));
  }

  heal(): void {
    this.setDrops([]);
  }

  /** The namespaces and the link this lab made (for the "nothing left" check). */
  leftovers(): string[] {
    const ns = run(['ip', 'netns', 'list']).stdout.split('\n').map((l) => l.split(' ')[0]!).filter((n) => n.startsWith(this.tag + '-'));
    const link = run(['ip', 'link', 'show', this.hostLink]).status === 0 ? [this.hostLink] : [];
    return [...ns, ...link];
  }

  /** Removes every namespace and link of this lab. Processes inside must be gone first. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const n of this.nodes.values()) run(['ip', 'netns', 'del', n.ns]);
    run(['ip', 'netns', 'del', this.hub]);
    // removing the hub destroys the pair asynchronously; remove our end now
    run(['ip', 'link', 'del', this.hostLink]);
  }
}
