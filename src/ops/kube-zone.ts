/**
 * `shadowrelay kube-zone`: the Kubernetes init container's one job — read the zone label of
 * the node this pod runs on (`topology.kubernetes.io/zone`) and write it to a file the relay
 * reads as `node.zone`. The downward API gives a pod its node's name but not the node's
 * labels, so it asks the API server, as the pod's service account (it needs `get` on
 * `nodes`; deploy/kubernetes/serviceaccount.yaml).
 * A node without the label gives an empty zone (the relay then runs without one, and says
 * so); an API server that cannot be asked is an error: the pod does not start half-informed.
 */
import https from 'node:https';
import { readFileSync, writeFileSync } from 'node:fs';

export const ZONE_LABEL = 'topology.kubernetes.io/zone';
const SA = '/var/run/secrets/kubernetes.io/serviceaccount';

export interface KubeZoneOptions {
  /** the API server, e.g. https://10.0.0.1:443 (default: from KUBERNETES_SERVICE_HOST/PORT) */
  api?: string;
  tokenFile?: string;
  caFile?: string;
  node?: string;
  label?: string;
  timeoutMs?: number;
}

/** The value of the node's zone label ('' when it has none). */
export async function nodeZone(o: KubeZoneOptions, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const host = env.KUBERNETES_SERVICE_HOST;
  const api = o.api ?? (host ? `https://${host.includes(':') ? `[${host}]` : host}:${env.KUBERNETES_SERVICE_PORT ?? '443'}` : undefined);
  if (!api) throw new Error('no API server: KUBERNETES_SERVICE_HOST is not set (not in a pod?) and --api was not given');
  const node = o.node ?? env.NODE_NAME;
  if (!node) throw new Error('no node name: set NODE_NAME from the downward API (spec.nodeName)');
  const token = readFileSync(o.tokenFile ?? `${SA}/token`, 'utf8').trim();
  const ca = readFileSync(o.caFile ?? `${SA}/ca.crt`);
  const url = new URL(`/api/v1/nodes/${encodeURIComponent(node)}`, api);
  const body = await new Promise<string>((resolve, reject) => {
    const req = https.request(url, { ca, headers: { authorization: `Bearer ${token}`, accept: 'application/json' }, timeout: o.timeoutMs ?? 10000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => (res.statusCode === 200 ? resolve(text) : reject(new Error(`GET ${url.pathname}: HTTP ${res.statusCode} ${text.slice(0, 200)}`))));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url.pathname}: no answer within ${o.timeoutMs ?? 10000} ms`)));
    req.on('error', reject);
    req.end();
  });
  let labels: unknown;
  try {
    labels = (JSON.parse(body) as { metadata?: { labels?: unknown } }).metadata?.labels;
  } catch {
    throw new Error(`GET ${url.pathname}: the answer is not JSON`);
  }
  const v = labels && typeof labels === 'object' ? (labels as Record<string, unknown>)[o.label ?? ZONE_LABEL] : undefined;
  return typeof v === 'string' ? v : '';
}

export async function writeNodeZone(out: string, o: KubeZoneOptions): Promise<string> {
  const zone = await nodeZone(o);
  writeFileSync(out, zone);
  return zone;
}
