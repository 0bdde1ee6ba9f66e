/**
 * The Kubernetes deployment (deploy/kubernetes/, a kustomize base). No cluster runs here, so:
 * - every object of every file the kustomization lists is validated against the Kubernetes
 *   schemas (kubernetes-models 5.x; cert-manager and Prometheus-operator models for the CRDs);
 *   those models check types and required fields, not unknown ones, so the fields the design
 *   relies on are asserted one by one;
 * - the pods are started on loopback as the StatefulSet would start them: the init
 *   container's command (`kube-zone`, against a fake API server answering the node's labels),
 *   then the container's command line, with the ConfigMap's configuration and each pod's
 *   environment (POD_NAME, POD_NAMESPACE from the downward API). Container paths are mapped to a temp
 *   dir, pod IPs to 127.0.1.(10+ordinal) (same ports in each, as in pods), the cluster DNS
 *   name of pod N to that address, and cert-manager's secrets to certificates made here
 *   under the same file names. Mail goes through, copies land in another zone, the probes
 *   answer, and the preStop command drains a pod empty.
 */
import { describe, it, expect, afterEach } from 'vitest';
import path from 'node:path';
import https from 'node:https';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import YAML from 'yaml';
import { ServiceAccount, ConfigMap, Service } from 'kubernetes-models/v1';
import { ClusterRole, ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import { StatefulSet } from 'kubernetes-models/apps/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { Certificate, Issuer } from '@kubernetes-models/cert-manager/cert-manager.io/v1';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import { ROOT, tmpDir, freePort, Sink } from '../helpers/index.js';
import { Child, waitUntil, adminHttpAt } from '../helpers/faultpair.js';
import { MeshTraffic } from '../helpers/mesh.js';
import { writeCertSet } from '../../src/certs/index.js';
import { parseConfig } from '../../src/config/index.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const DIR = path.join(ROOT, 'deploy', 'kubernetes');
type Doc = { apiVersion: string; kind: string; metadata: { name: string }; [k: string]: unknown };
type Validating = { validate(): void };

const MODELS: Record<string, new (d: never) => Validating> = {
  'v1/ServiceAccount': ServiceAccount,
  'v1/ConfigMap': ConfigMap,
  'v1/Service': Service,
  'rbac.authorization.k8s.io/v1/ClusterRole': ClusterRole,
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': ClusterRoleBinding,
  'apps/v1/StatefulSet': StatefulSet,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'cert-manager.io/v1/Issuer': Issuer,
  'cert-manager.io/v1/Certificate': Certificate,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
};

/** Every object of every file the kustomization lists. */
function objects(): Array<{ file: string; doc: Doc }> {
  const k = YAML.parse(readFileSync(path.join(DIR, 'kustomization.yaml'), 'utf8')) as { resources: string[] };
  return k.resources.flatMap((file) =>
    YAML.parseAllDocuments(readFileSync(path.join(DIR, file), 'utf8')).map((d) => {
      if (d.errors.length) throw new Error(`${file}: ${d.errors[0]!.message}`);
      return { file, doc: d.toJS() as Doc };
    }),
  );
}

function validate(doc: Doc): void {
  const M = MODELS[`${doc.apiVersion}/${doc.kind}`];
  if (!M) throw new Error(`no schema for ${doc.apiVersion} ${doc.kind}`);
  new M(doc as never).validate();
}

const one = (kind: string, name?: string): Doc => {
  const d = objects().find((o) => o.doc.kind === kind && (name === undefined || o.doc.metadata.name === name))?.doc;
  if (!d) throw new Error(`no ${kind} ${name ?? ''}`);
  return d;
};
// the manifests' shapes, as far as the assertions below read them
type Container = {
  name: string;
  command: string[];
  env?: Array<{ name: string; valueFrom?: { fieldRef?: { fieldPath: string } } }>;
  readinessProbe: { httpGet: { path: string; port: string } };
  livenessProbe: { httpGet: { path: string; port: string } };
  lifecycle: { preStop: { exec: { command: string[] } } };
  ports: Array<{ name: string; containerPort: number }>;
};
type Sts = {
  spec: {
    serviceName: string;
    replicas: number;
    podManagementPolicy: string;
    volumeClaimTemplates: Array<{ metadata: { name: string } }>;
    template: {
      metadata: { labels: Record<string, string> };
      spec: {
        terminationGracePeriodSeconds: number;
        topologySpreadConstraints: Array<{ topologyKey: string; whenUnsatisfiable: string }>;
        initContainers: Container[];
        containers: Container[];
        volumes: Array<{ name: string; projected?: { sources: Array<{ secret: { name: string; items: Array<{ key: string; path: string }> } }> } }>;
      };
    };
  };
};

/** The node configuration the ConfigMap gives every pod. */
const configText = () => (one('ConfigMap', 'shadowrelay-config') as unknown as { data: Record<string, string> }).data['shadowrelay.yaml']!;

describe('Kubernetes deployment (deploy/kubernetes)', () => {
  it('every manifest validates against the Kubernetes schemas (and the check does catch a broken one)', () => {
    const all = objects();
    expect(all.length).toBeGreaterThanOrEqual(10);
    for (const { file, doc } of all) expect(() => validate(doc), `${file}: ${doc.kind} ${doc.metadata.name}`).not.toThrow();
    const broken = structuredClone(one('StatefulSet')) as unknown as Sts & Doc;
    (broken.spec as unknown as Record<string, unknown>).replicas = 'three';
    delete (broken.spec.template.spec.containers[0] as Partial<Container>).name;
    expect(() => validate(broken)).toThrow(/replicas must be integer.*must have required property '?name/);
  });

  it('StatefulSet, Services, PDB, spread, probes, preStop drain, zone, peers, certificates and ServiceMonitor fit together', () => {
    const sts = one('StatefulSet') as unknown as Sts & Doc;
    const pod = sts.spec.template.spec;
    const main = pod.containers[0]!;
    const cfg = YAML.parse(configText()) as {
      node: { zone: string; drainTimeoutMs: number; shutdownTimeoutMs: number; dataDir: string };
      shadow: { peersFrom: { replicas: number; name: string; address: string }; listen: string; tls: Record<string, string> };
      admin: { listen: string };
    };
    expect(sts.spec.podManagementPolicy).toBe('Parallel');
    expect(sts.spec.volumeClaimTemplates.map((v) => v.metadata.name)).toEqual(['spool']);
    // the headless service names each pod; not-ready pods are published (readiness needs a peer)
    const peers = one('Service', sts.spec.serviceName) as unknown as { spec: { clusterIP: string; publishNotReadyAddresses: boolean; ports: Array<{ name: string; port: number }> } };
    expect(peers.spec.clusterIP).toBe('None');
    expect(peers.spec.publishNotReadyAddresses).toBe(true);
    expect(cfg.shadow.peersFrom.address).toContain(`{i}.${sts.spec.serviceName}.`);
    expect(cfg.shadow.peersFrom.name).toBe(`${sts.metadata.name}-{i}`);
    expect(peers.spec.ports.find((p) => p.name === 'shadow')!.port).toBe(Number(cfg.shadow.listen.split(':')[1]));
    const smtp = one('Service', 'shadowrelay-smtp') as unknown as { spec: { externalTrafficPolicy: string; ports: Array<{ targetPort: string }> } };
    expect(smtp.spec.externalTrafficPolicy).toBe('Local');
    expect(main.ports.map((p) => p.name)).toEqual(expect.arrayContaining(['smtp', 'shadow', 'admin']));
    expect((one('PodDisruptionBudget') as unknown as { spec: { maxUnavailable: number } }).spec.maxUnavailable).toBe(1);
    expect(pod.topologySpreadConstraints.map((t) => t.topologyKey)).toContain('topology.kubernetes.io/zone');
    expect(main.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'admin' });
    expect(main.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'admin' });
    expect(main.lifecycle.preStop.exec.command).toEqual(expect.arrayContaining(['drain']));
    expect(pod.terminationGracePeriodSeconds * 1000).toBeGreaterThan(cfg.node.drainTimeoutMs + cfg.node.shutdownTimeoutMs);
    // node.zone: the init container writes the node's zone label, the container exports it
    expect(cfg.node.zone).toBe('${NODE_ZONE:-}');
    expect(pod.initContainers[0]!.command).toEqual(expect.arrayContaining(['kube-zone']));
    expect(main.command.join(' ')).toContain('NODE_ZONE="$(cat /run/shadowrelay/zone)"');
    expect(main.env!.map((e) => [e.name, e.valueFrom?.fieldRef?.fieldPath])).toEqual([
      ['POD_NAME', 'metadata.name'],
      ['POD_NAMESPACE', 'metadata.namespace'],
    ]);
    // one certificate per ordinal peersFrom can name, each mounted under the file name the config reads
    const certs = objects().filter((o) => o.doc.kind === 'Certificate' && o.doc.metadata.name !== 'shadowrelay-ca').map((o) => o.doc as unknown as { spec: { commonName: string; secretName: string; usages: string[] } });
    const ordinals = Array.from({ length: cfg.shadow.peersFrom.replicas }, (_, i) => `${sts.metadata.name}-${i}`);
    expect(certs.map((c) => c.spec.commonName)).toEqual(ordinals);
    for (const c of certs) expect(c.spec.usages).toEqual(expect.arrayContaining(['server auth', 'client auth']));
    const tls = pod.volumes.find((v) => v.name === 'tls')!.projected!.sources;
    expect(tls.map((s) => s.secret.name)).toEqual(certs.map((c) => c.spec.secretName));
    expect(tls.flatMap((s) => s.secret.items.map((i) => i.path)).sort()).toEqual(['ca.crt', ...ordinals.flatMap((n) => [`${n}.crt`, `${n}.key`])].sort());
    expect(cfg.shadow.tls.cert).toBe('/etc/shadowrelay/tls/${POD_NAME}.crt');
    expect(sts.spec.replicas).toBeLessThanOrEqual(cfg.shadow.peersFrom.replicas);
    // the ServiceMonitor scrapes the admin port of the headless service
    const sm = one('ServiceMonitor') as unknown as { spec: { selector: { matchLabels: Record<string, string> }; endpoints: Array<{ port: string; path: string }> } };
    expect(sm.spec.endpoints[0]).toMatchObject({ port: 'admin', path: '/metrics' });
    expect(peers.spec.ports.map((p) => p.name)).toContain('admin');
    expect((one('Service', sts.spec.serviceName) as unknown as { metadata: { labels: Record<string, string> } }).metadata.labels).toMatchObject({ 'app.kubernetes.io/component': 'peers' });
    // the pod runs as the service account the node-reading role is bound to
    expect((one('ClusterRoleBinding') as unknown as { subjects: Array<{ name: string }> }).subjects[0]!.name).toBe((one('ServiceAccount') as Doc).metadata.name);
  });

  it('the rendered config starts a working cluster on loopback: init container, container command, probes, placement across zones, preStop drain', async () => {
    const { dir, cleanup } = tmpDir('sr-k8s-');
    cleanups.push(cleanup);
    const sts = one('StatefulSet') as unknown as Sts & Doc;
    const pod = sts.spec.template.spec;
    const names = [0, 1, 2].map((i) => `${sts.metadata.name}-${i}`);
    const zones: Record<string, string> = { 'node-a': 'zone-a', 'node-b': 'zone-b', 'node-c': 'zone-c' };
    const ip = (i: number) => `127.0.1.${10 + i}`;
    // cert-manager's secrets: the same file names, made here from one CA
    const tlsDir = path.join(dir, 'etc/shadowrelay/tls');
    await writeCertSet(tlsDir, names);
    mkdirSync(path.join(dir, 'etc/shadowrelay/admin'), { recursive: true });
    writeFileSync(path.join(dir, 'etc/shadowrelay/admin/token'), 'k8s-test-admin-token-0123456789\n', { mode: 0o600 });
    const sink = new Sink();
    const sinkPort = await sink.listen();
    cleanups.push(() => sink.close());
    // the API server the init container asks for its node's labels
    const api = https.createServer({ cert: readFileSync(path.join(tlsDir, `${names[0]}.crt`)), key: readFileSync(path.join(tlsDir, `${names[0]}.key`)) }, (req, res) => {
      const node = /^\/api\/v1\/nodes\/([^/]+)$/.exec(req.url ?? '')?.[1];
      if (req.headers.authorization !== 'Bearer sa-token' || !node || !zones[node]) {
        res.writeHead(req.headers.authorization ? 404 : 401).end('{}');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ metadata: { name: node, labels: { 'topology.kubernetes.io/zone': zones[node] } } }));
    });
    const apiPort = await freePort();
    await new Promise<void>((r) => api.listen(apiPort, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => api.close(() => r())));
    writeFileSync(path.join(dir, 'sa-token'), 'sa-token\n');
    // the ConfigMap's text, with the environment's addresses mapped to loopback
    const rendered = configText()
      .replaceAll('0.0.0.0:', '${POD_IP}:')
      .replace(/shadowrelay-\{i\}\.shadowrelay-peers\.\$\{POD_NAMESPACE\}\.svc\.cluster\.local/, '127.0.1.1{i}')
      .replaceAll('/etc/shadowrelay/', `${dir}/etc/shadowrelay/`)
      .replace('dataDir: /var/lib/shadowrelay', `dataDir: ${dir}/volumes/\${POD_NAME}`)
      .replace('host: smtp.example.net', 'host: 127.0.0.1')
      .replace('port: 25', `port: ${sinkPort}`)
      .replace('tls: opportunistic', 'tls: none')
      .replace('allowedNetworks: [', 'allowedNetworks: [127.0.0.0/8, ')
      // the test's timings (the shipped ones are for production)
      .replace('heartbeatMs: 2000', 'heartbeatMs: 500')
      .replace('timeoutMs: 5000', 'timeoutMs: 1500');
    const cfgFile = path.join(dir, 'etc/shadowrelay/shadowrelay.yaml');
    writeFileSync(cfgFile, rendered);
    // each pod's command line, with the image's paths mapped to this checkout
    const mapArgv = (argv: string[]) =>
      argv.map((a) =>
        a
          .replaceAll('/app/dist/', `${ROOT}/dist/`)
          .replaceAll('/etc/shadowrelay/', `${dir}/etc/shadowrelay/`)
          .replaceAll('/run/shadowrelay/', `${dir}/run/\${POD_NAME}/`)
          .replace(/^node$/, process.execPath)
          .replace(/exec node /, `exec ${process.execPath} `),
      );
    const nodes: Child[] = [];
    cleanups.push(async () => {
      await Promise.all(nodes.map((n) => n.kill('SIGKILL')));
    });
    const envOf = (i: number) => ({ ...process.env, POD_NAME: names[i]!, POD_NAMESPACE: 'mail', POD_IP: ip(i), NODE_NAME: Object.keys(zones)[i]! });
    for (const [i] of names.entries()) {
      mkdirSync(path.join(dir, 'run', names[i]!), { recursive: true });
      // init container: kube-zone against the API server
      const init = mapArgv(pod.initContainers[0]!.command).map((a) => a.replaceAll('${POD_NAME}', names[i]!));
      const r = await new Promise<{ code: number | null; out: string }>((resolve) => {
        const p = spawn(init[0]!, [...init.slice(1), '--api', `https://127.0.0.1:${apiPort}`, '--token-file', path.join(dir, 'sa-token'), '--ca-file', path.join(tlsDir, 'ca.crt')], { env: envOf(i), stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        p.stdout.on('data', (d) => (out += d));
        p.stderr.on('data', (d) => (out += d));
        p.on('exit', (code) => resolve({ code, out }));
      });
      expect(r.code, r.out).toBe(0);
      expect(readFileSync(path.join(dir, 'run', names[i]!, 'zone'), 'utf8')).toBe(Object.values(zones)[i]);
    }
    for (const [i] of names.entries()) {
      const argv = mapArgv(pod.containers[0]!.command).map((a) => a.replaceAll('${POD_NAME}', names[i]!));
      const c = new Child(names[i]!, spawn(argv[0]!, argv.slice(1), { env: envOf(i), stdio: ['ignore', 'pipe', 'pipe'] }));
      nodes.push(c);
      await c.line((l) => l.msg === 'shadowrelay started', 30000, 'shadowrelay started');
    }
    // the config the pods got: peers from the ordinals (the absent 3 and 4 are down peers)
    const got = parseConfig(YAML.parse(rendered), cfgFile, envOf(0));
    expect(got.shadow.peers.map((p) => p.name)).toEqual(['shadowrelay-1', 'shadowrelay-2', 'shadowrelay-3', 'shadowrelay-4']);
    await waitUntil(() => nodes.every((n, i) => names.filter((_, j) => j !== i).every((p) => n.lines.some((l) => l.msg === 'shadow peer up' && l.peer === p))), 20000, 'pods linked');
    // the kubelet's probes
    const admin = (i: number, p: string) => adminHttpAt(ip(i), 9025, p);
    for (const [i] of names.entries()) {
      expect((await admin(i, pod.containers[0]!.readinessProbe.httpGet.path)).status).toBe(200);
      expect((await admin(i, pod.containers[0]!.livenessProbe.httpGet.path)).status).toBe(200);
    }
    // mail through every pod's SMTP port
    const fake = { addr: Object.fromEntries(names.map((n, i) => [n, { host: ip(i), smtp: 2525, admin: 9025 }])), reachable: () => names, sinkMessages: () => [] };
    const t = new MeshTraffic(fake, { clients: 3, prefix: 'k8s-', targets: () => names, max: 45 }).start();
    cleanups.push(() => t.stop());
    await waitUntil(() => t.ledger.length >= 45, 30000, '45 sent');
    await t.stop();
    expect(t.ledger.filter((e) => e.outcome !== '250')).toEqual([]);
    await waitUntil(() => sink.messages.length >= 45, 20000, 'all delivered');
    const accepted = nodes.flatMap((n) => n.lines.filter((l) => l.msg === 'accepted'));
    const zoneOf = Object.fromEntries(names.map((n, i) => [n, Object.values(zones)[i]]));
    // every copy in another zone than its primary, spread over both other pods
    expect(accepted.filter((l) => zoneOf[String(l.shadowPeer)] === zoneOf[String(l.node)])).toEqual([]);
    expect(new Set(accepted.filter((l) => l.node === names[0]).map((l) => l.shadowPeer))).toEqual(new Set([names[1], names[2]]));
    // the next hop down: every pod queues; the preStop command then empties pod 2 (its queue to the others, the copies it holds back to their origins)
    await sink.close();
    const t2 = new MeshTraffic(fake, { clients: 3, prefix: 'k8s2-', targets: () => names, max: 30 }).start();
    await waitUntil(() => t2.ledger.length >= 30, 30000, '30 more sent');
    await t2.stop();
    const preStop = mapArgv(pod.containers[0]!.lifecycle.preStop.exec.command);
    const env2 = envOf(2);
    const drained = await new Promise<{ code: number | null; out: string }>((resolve) => {
      const p = spawn(preStop[0]!, preStop.slice(1), { env: env2, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      p.stdout.on('data', (d) => (out += d));
      p.stderr.on('data', (d) => (out += d));
      p.on('exit', (code) => resolve({ code, out }));
    });
    process.stdout.write(`[k8s] 3 pods from the rendered config (peersFrom.replicas 5, zones a/b/c): 45 × 250, delivered, copies in other zones; preStop drain of ${names[2]}: exit ${drained.code}: ${drained.out.trim().replace(/\n/g, ' | ')}\n`);
    expect(drained.code, drained.out).toBe(0);
    expect((await admin(2, '/readyz')).status).toBe(503);
  }, 120000);
});
