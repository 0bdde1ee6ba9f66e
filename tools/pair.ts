/**
 * Writes the configuration of a loopback pair (relay-a ⇄ relay-b, each the other's shadow
 * peer) with its own CA and certificates. Used by the demo, the tests and the
 * benchmark, so all three run the same embedded default.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { writeCertSet } from '../src/certs/index.js';
import { freePort } from './net.js';

export interface PairOptions {
  dir: string;
  sinkPort: number;
  /** deep-merged into both nodes' config documents */
  overrides?: Record<string, unknown>;
  /** per node overrides, by name */
  nodeOverrides?: Record<string, Record<string, unknown>>;
  names?: [string, string];
}

export interface PairFiles {
  names: [string, string];
  configs: Record<string, string>;
  certDir: string;
  shadowPorts: Record<string, number>;
}

export function deepMerge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const cur = out[k];
    out[k] =
      v && typeof v === 'object' && !Array.isArray(v) && cur && typeof cur === 'object' && !Array.isArray(cur)
        ? deepMerge(cur as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}

export async function writePairConfigs(o: PairOptions): Promise<PairFiles> {
  const names = o.names ?? ['relay-a', 'relay-b'];
  mkdirSync(o.dir, { recursive: true });
  const certDir = path.join(o.dir, 'certs');
  await writeCertSet(certDir, names);
  // each node names the other's replication port, so those two are picked up front
  const shadowPorts: Record<string, number> = {};
  for (const n of names) shadowPorts[n] = await freePort();
  const configs: Record<string, string> = {};
  for (const [i, name] of names.entries()) {
    const peer = names[1 - i]!;
    let doc: Record<string, unknown> = {
      node: { name, dataDir: `./data/${name}` },
      smtp: {
        listen: '127.0.0.1:0',
        hostname: `${name}.example.test`,
        allowedNetworks: ['127.0.0.0/8', '::1/128'],
      },
      shadow: {
        listen: `127.0.0.1:${shadowPorts[name]}`,
        peers: [{ name: peer, address: `127.0.0.1:${shadowPorts[peer]}` }],
        tls: { ca: 'certs/ca.crt', cert: `certs/${name}.crt`, key: `certs/${name}.key` },
        timeoutMs: 5000,
        heartbeatMs: 1000,
        promoteAfterMs: 60000,
      },
      delivery: {
        nextHop: { host: '127.0.0.1', port: o.sinkPort, tls: 'none' },
        concurrency: 10,
        retry: { initialMs: 1000, maxMs: 60000, maxAgeMs: 432000000 },
      },
      admin: { listen: '127.0.0.1:0' },
      log: { level: 'info' },
    };
    if (o.overrides) doc = deepMerge(doc, o.overrides);
    const own = o.nodeOverrides?.[name];
    if (own) doc = deepMerge(doc, own);
    const file = path.join(o.dir, `${name}.yaml`);
    writeFileSync(file, YAML.stringify(doc));
    configs[name] = file;
  }
  return { names: names as [string, string], configs, certDir, shadowPorts };
}

export interface MeshOptions {
  dir: string;
  /** node names; every node lists every other as its peer */
  names: string[];
  /** node → failure domain (node.zone); absent: no zones */
  zones?: Record<string, string>;
  nextHop: { host: string; port: number };
  /** node → replication address (default 127.0.0.1 and a free port each) */
  shadowAt?: Record<string, { host: string; port: number }>;
  overrides?: Record<string, unknown>;
  nodeOverrides?: Record<string, Record<string, unknown>>;
}

export interface MeshFiles {
  names: string[];
  configs: Record<string, string>;
  certDir: string;
  shadowAt: Record<string, { host: string; port: number }>;
  /** the document each file holds (tests rewrite peer lists and reload) */
  docs: Record<string, Record<string, unknown>>;
}

/** The peer entries of `name` in a mesh (every other node). */
export function meshPeers(names: string[], name: string, shadowAt: MeshFiles['shadowAt']): Array<{ name: string; address: string }> {
  return names.filter((n) => n !== name).map((n) => ({ name: n, address: `${shadowAt[n]!.host}:${shadowAt[n]!.port}` }));
}

/** N relays on loopback (or at the given addresses), each the others' shadow peer. */
export async function writeMeshConfigs(o: MeshOptions): Promise<MeshFiles> {
  mkdirSync(o.dir, { recursive: true });
  const certDir = path.join(o.dir, 'certs');
  await writeCertSet(certDir, o.names);
  const shadowAt: MeshFiles['shadowAt'] = {};
  for (const n of o.names) shadowAt[n] = o.shadowAt?.[n] ?? { host: '127.0.0.1', port: await freePort() };
  const configs: Record<string, string> = {};
  const docs: Record<string, Record<string, unknown>> = {};
  for (const name of o.names) {
    let doc: Record<string, unknown> = {
      node: { name, dataDir: `./data/${name}`, ...(o.zones?.[name] ? { zone: o.zones[name] } : {}) },
      smtp: { listen: '127.0.0.1:0', hostname: `${name}.example.test`, allowedNetworks: ['127.0.0.0/8', '::1/128'] },
      shadow: {
        listen: `${shadowAt[name]!.host}:${shadowAt[name]!.port}`,
        peers: meshPeers(o.names, name, shadowAt),
        tls: { ca: 'certs/ca.crt', cert: `certs/${name}.crt`, key: `certs/${name}.key` },
        timeoutMs: 5000,
        heartbeatMs: 1000,
        promoteAfterMs: 60000,
      },
      delivery: {
        nextHop: { host: o.nextHop.host, port: o.nextHop.port, tls: 'none' },
        concurrency: 10,
        retry: { initialMs: 1000, maxMs: 60000, maxAgeMs: 432000000 },
      },
      admin: { listen: '127.0.0.1:0' },
      log: { level: 'info', format: 'json' },
    };
    if (o.overrides) doc = deepMerge(doc, o.overrides);
    const own = o.nodeOverrides?.[name];
    if (own) doc = deepMerge(doc, own);
    const file = path.join(o.dir, `${name}.yaml`);
    writeFileSync(file, YAML.stringify(doc));
    configs[name] = file;
    docs[name] = doc;
  }
  return { names: o.names, configs, certDir, shadowAt, docs };
}
