/**
 * The admin HTTP endpoint (`admin.listen`, loopback by default).
 *
 * Implementation summary:
 * - `GET /healthz`: 200 while the process runs (no token needed: probes and HEALTHCHECK).
 * - `GET /readyz`: 200 once the spool is open, the SMTP listener is up and a peer can take a
 *   shadow copy now (this node's requests to it succeed) or the degraded policy is on, else
 *   503 with the reasons as JSON (no token needed).
 * - `GET /metrics`: Prometheus text format (prom-client).
 * - The JSON queue API used by `shadowrelay queue …`:
 *     GET    /queue                 list (summaries)
 *     GET    /queue/<id>[?body=1]   show: envelope, recipients, history, headers (and body)
 *     POST   /queue/flush           every queued message due now
 *     POST   /queue/<id>/retry|hold|release
 *     DELETE /queue/<id>            delete; the peer is owed a discard of its shadow copy
 *     POST   /queue/delete-failed   delete every message whose last attempt failed
 * - `POST /drain[?timeoutMs=N]`: hand this node's queue to its peers and stop taking mail
 *   (shadow/drain.ts); answers the report when done (200 empty, 409 not empty).
 * - When a token is configured (`admin.token` / `admin.tokenFile`), everything but the two
 *   probes needs `Authorization: Bearer <token>`; a wrong or missing one gets 401.
 */
import http from 'node:http';
import { timingSafeEqual, createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { QueueService, ActionResult } from './queue.js';
import { listenOn, type HostPort } from '../base/net.js';

export interface Readiness {
  ready: boolean;
  reasons: string[];
}

/** What readiness is judged on, read when a probe asks. */
export interface ReadinessState {
  smtpStarted: boolean;
  /** shadow.onFailure=accept: the node answers 250 even without a peer */
  acceptsWithoutPeer: boolean;
  anyPeerUp: boolean;
  peers: Array<{ name: string; link: string; lastError: string | null; spoolFull?: boolean; draining?: boolean }>;
  /** the node is draining (or drained): it takes no mail */
  draining?: boolean;
}

/**
 * The readiness rule: the SMTP listener is up, and a peer can take a shadow copy now or the
 * degraded policy is on. A node that would answer 451 to every message is not ready: a load
 * balancer or Kubernetes sends the mail elsewhere.
 */
export function readiness(s: ReadinessState): Readiness {
  const reasons: string[] = [];
  if (!s.smtpStarted) reasons.push('smtp listener not up');
  if (s.draining) reasons.push('draining: this node hands its queue to its peers and takes no mail');
  if (!s.anyPeerUp && !s.acceptsWithoutPeer) {
    const why = s.peers.map((p) => `${p.name} ${p.link}${p.spoolFull ? ' (its spool is full)' : p.draining ? ' (draining)' : p.lastError ? ` (${p.lastError})` : ''}`);
    reasons.push(`no shadow peer can take a copy: ${why.join(', ')}`);
  }
  return { ready: reasons.length === 0, reasons };
}

export interface AdminOptions {
  readiness: () => ReadinessState;
  /** Prometheus exposition; absent → 404 */
  metrics?: () => Promise<{ contentType: string; text: string }>;
  queue?: QueueService;
  /** drain this node (POST /drain): resolves with the report */
  drain?: (timeoutMs?: number) => Promise<{ empty: boolean }>;
  /** bearer token (a reload can change it: `setToken`); undefined → open */
  token?: string;
  log?: Logger;
}

const ID_PATH = /^\/queue\/([A-Za-z0-9]{1,64})(?:\/(retry|hold|release))?$/;

function sameSecret(a: string, b: string): boolean {
  // hash first: timingSafeEqual needs equal lengths, and the length must not leak either
  const h = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(h(a), h(b));
}

export class AdminServer {
  private readonly server: http.Server;

  private token: string | undefined;

  constructor(private readonly o: AdminOptions) {
    this.token = o.token;
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        o.log?.error({ err: (err as Error).message, url: req.url }, 'admin: request failed');
        if (!res.headersSent) {
          res.writeHead(500, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: 'internal error' }) + '\n');
        } else res.destroy();
      });
    });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const send = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body) + '\n');
    };
    const url = new URL(req.url ?? '/', 'http://admin');
    const path = url.pathname;
    const method = req.method ?? 'GET';
    // requests carry no body we need; drain whatever comes
    req.resume();

    if (path === '/healthz' || path === '/readyz') {
      if (method !== 'GET') return send(405, { error: 'method not allowed' });
      if (path === '/healthz') return send(200, { status: 'ok' });
      const r = readiness(this.o.readiness());
      return send(r.ready ? 200 : 503, r.ready ? { status: 'ready' } : { status: 'not ready', reasons: r.reasons });
    }

    const token = this.token;
    if (token) {
      const auth = req.headers.authorization ?? '';
      const m = /^Bearer\s+(\S+)$/i.exec(auth);
      if (!m || !sameSecret(m[1]!, token)) {
        res.setHeader('www-authenticate', 'Bearer realm="shadowrelay"');
        return send(401, { error: 'missing or wrong bearer token (admin.token)' });
      }
    }

    if (path === '/metrics' && this.o.metrics) {
      if (method !== 'GET') return send(405, { error: 'method not allowed' });
      const m = await this.o.metrics();
      res.writeHead(200, { 'content-type': m.contentType });
      res.end(m.text);
      return;
    }

    if (path === '/drain' && this.o.drain) {
      if (method !== 'POST') return send(405, { error: 'method not allowed' });
      const t = url.searchParams.get('timeoutMs');
      const ms = t === null ? undefined : Number(t);
      if (ms !== undefined && !(Number.isInteger(ms) && ms > 0)) return send(400, { error: 'timeoutMs must be a positive integer' });
      const r = await this.o.drain(ms);
      return send(r.empty ? 200 : 409, r);
    }

    const q = this.o.queue;
    if (!q || !(path === '/queue' || path.startsWith('/queue/'))) return send(404, { error: 'not found' });
    const answer = (r: ActionResult) => (r.ok ? send(200, r) : send(r.status, { error: r.error }));

    if (path === '/queue') {
      if (method !== 'GET') return send(405, { error: 'method not allowed' });
      return send(200, { messages: q.list() });
    }
    if (path === '/queue/flush' || path === '/queue/delete-failed') {
      if (method !== 'POST') return send(405, { error: 'method not allowed' });
      return send(200, path === '/queue/flush' ? await q.flush() : await q.deleteAllFailed());
    }
    const m = ID_PATH.exec(path);
    if (!m) return send(404, { error: 'not found' });
    const [, id, action] = m as unknown as [string, string, string | undefined];
    if (action) {
      if (method !== 'POST') return send(405, { error: 'method not allowed' });
      return answer(action === 'retry' ? await q.retry(id) : action === 'hold' ? await q.hold(id) : await q.release(id));
    }
    if (method === 'DELETE') return answer(await q.delete(id));
    if (method !== 'GET') return send(405, { error: 'method not allowed' });
    const v = q.show(id, url.searchParams.get('body') === '1');
    return v ? send(200, v) : send(404, { error: `${id}: no such message in the queue` });
  }

  /** Live change (config reload): the bearer token for requests from now on. */
  setToken(token: string | undefined): void {
    this.token = token;
  }

  listen(at: HostPort): Promise<HostPort> {
    return listenOn(this.server, at.host, at.port);
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }
}
