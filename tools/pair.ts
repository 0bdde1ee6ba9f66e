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
