/**
 * A pair of relays as child processes (`node dist/cli.js start`) with fixed SMTP ports, and a
 * next hop that can be brought down and up — for tests that kill real processes.
 */
import path from 'node:path';
import { writePairConfigs, deepMerge, type PairFiles } from '../../tools/pair.js';
import { Sink, type SinkMessage } from '../../tools/sink.js';
import { freePort } from '../../tools/net.js';
import { startNodeProcess, tmpDir, peekSpool, type NodeProcess } from './index.js';

export type NodeName = 'relay-a' | 'relay-b';

export interface Cluster {
  dir: string;
  files: PairFiles;
  smtpPorts: Record<NodeName, number>;
  nodes: Partial<Record<NodeName, NodeProcess>>;
  /** everything the next hop received, across its restarts */
  received: SinkMessage[];
  /** the current sink (undefined while the next hop is down) */
  sink: Sink | undefined;
  /** `env`: extra environment for this start (e.g. a faked wall clock) */
  start(name: NodeName, opts?: { env?: Record<string, string> }): Promise<NodeProcess>;
  kill(name: NodeName, signal?: NodeJS.Signals): Promise<number | null>;
  up(name: NodeName): boolean;
  dataDir(name: NodeName): string;
  /** rows a node's spool still holds (messages, owed discards); 0 = empty */
  spoolTotal(name: NodeName): number;
  /** ids of a node's spool rows (role: primary | shadow) */
  spoolIds(name: NodeName, role?: string): string[];
  sinkUp(): Promise<void>;
  /** the next hop crashes: listener closed, connections cut */
  sinkDown(): Promise<void>;
  stop(): Promise<void>;
}

export async function startCluster(
  overrides: Record<string, unknown> = {},
  nodeOverrides: Record<string, Record<string, unknown>> = {},
  opts: { sinkUp?: boolean } = {},
): Promise<Cluster> {
  const { dir, cleanup } = tmpDir('sr-cluster-');
  const sinkPort = await freePort();
  const smtpPorts = { 'relay-a': await freePort(), 'relay-b': await freePort() };
  const perNode: Record<string, Record<string, unknown>> = {};
  for (const n of ['relay-a', 'relay-b'] as const) {
    perNode[n] = deepMerge({ smtp: { listen: `127.0.0.1:${smtpPorts[n]}` } }, nodeOverrides[n] ?? {});
  }
  const files = await writePairConfigs({ dir, sinkPort, overrides, nodeOverrides: perNode });
  const received: SinkMessage[] = [];
  const c: Cluster = {
    dir,
    files,
    smtpPorts,
    nodes: {},
    received,
    sink: undefined,
    async start(name, opts = {}) {
      const n = await startNodeProcess(files.configs[name]!, name, 30000, opts);
      c.nodes[name] = n;
      return n;
    },
    async kill(name, signal = 'SIGKILL') {
      const n = c.nodes[name];
      if (!n) return null;
      const code = await n.kill(signal);
      delete c.nodes[name];
      return code;
    },
    up: (name) => c.nodes[name] !== undefined,
    dataDir: (name) => path.join(dir, 'data', name),
    spoolTotal(name) {
      const p = peekSpool(c.dataDir(name));
      try {
        return p.total();
      } finally {
        p.close();
      }
    },
    spoolIds(name, role) {
      const p = peekSpool(c.dataDir(name));
      try {
        return p.ids(role);
      } finally {
        p.close();
      }
    },
    async sinkUp() {
      if (c.sink) return;
      // a fresh server each time: a closed smtp-server refuses everything with 421
      const s = new Sink();
      s.on('message', (m: SinkMessage) => received.push(m));
      await s.listen(sinkPort);
      c.sink = s;
    },
    async sinkDown() {
      const s = c.sink;
      c.sink = undefined;
      if (s) await s.kill();
    },
    async stop() {
      await Promise.all((Object.keys(c.nodes) as NodeName[]).map((n) => c.kill(n)));
      await c.sinkDown();
      cleanup();
    },
  };
  if (opts.sinkUp !== false) await c.sinkUp();
  return c;
}
