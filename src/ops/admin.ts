/**
 * The admin HTTP endpoint (`admin.listen`, loopback by default).
 *
 * Implementation summary:
 * - `GET /healthz`: 200 while the process runs (no token needed: probes and HEALTHCHECK).
 * - `GET /readyz`: 200 once the spool is open, the SMTP listener is up and a peer can take a
 *   shadow copy now (this node's requests to it succeed) or the degraded policy is on, else
 *   503 with the reasons as JSON (no token needed).
 * - `GET /metrics`: Prometheus text format (prom-client).
 * - The JSON queue API used by `shadowrelay queue …` and the dashboard:
 *     GET    /queue                 list (summaries), every message
 *     GET    /queue?limit=N[&offset=N&state=S&q=TEXT&order=oldest|newest]
 *                                   one page (≤ 500), filtered by state (all, queued, deferred,
 *                                   held, shadow, spooled) and searched by id, sender, recipient
 *     GET    /queue/<id>[?body=1]   show: envelope, recipients, history, headers (and body)
 *     POST   /queue/flush           every queued message due now
 *     POST   /queue/<id>/retry|hold|release
 *     DELETE /queue/<id>[?bounce=1] delete (with a bounce to the sender); the peer is owed a
 *                                   discard of its shadow copy
 *     POST   /queue/delete-failed   delete every message whose last attempt failed
 * - `POST /drain[?timeoutMs=N]`: hand this node's queue to its peers and stop taking mail
 *   (shadow/drain.ts); answers the report when done (200 empty, 409 not empty).
 * - The dashboard (dashboard.ts, ui/): `GET /` and `/ui/*` (static files of the package, no
 *   data), `GET /api/overview` (JSON) and `GET /api/events` (Server-Sent Events: `overview`
 *   every few seconds, `queue` when the queue changed; read with fetch(), which can carry the
 *   bearer header EventSource cannot). Every page is sent with a strict Content-Security-
 *   Policy (`default-src 'self'`, no inline script or style) and never cached.
 * - When a token is configured (`admin.token` / `admin.tokenFile`), everything but the two
 *   probes and the dashboard's static files needs `Authorization: Bearer <token>`; a wrong or
 *   missing one gets 401. Without a token the dashboard (page and API) is served only when
 *   `admin.listen` is a loopback address, and then only to requests whose Host is a loopback
 *   name (a DNS-rebinding page cannot reach it); otherwise 403 with the reason. A browser's
 *   cross-origin POST or DELETE (its Origin is not this endpoint) is refused (403).
 * - Bad input (an unknown path or method, a malformed id, page parameters out of range) gets
 *   a 4xx with a JSON `error` naming what is wrong; a failure of ours gets 500, never a crash.
 */
import http from 'node:http';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { timingSafeEqual, createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { QueueService, ActionResult } from './queue.js';
import type { Dashboard } from './dashboard.js';
import { BROWSE_STATES, type BrowseQuery, type BrowseState } from '../spool/index.js';
import { listenOn, formatHostPort, type HostPort } from '../base/net.js';

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
  /** the dashboard's data (absent → the dashboard answers 404) */
  dashboard?: Dashboard;
  log?: Logger;
}

/** Live streams at once: each holds a socket; more is a mistake or an attack. */
const MAX_STREAMS = 32;
const MAX_PAGE = 500;
const MAX_OFFSET = 10_000_000;
const MAX_SEARCH = 200;

/** The dashboard's security headers: nothing but this endpoint's own files, no framing. */
const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; " +
  "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const PAGE_HEADERS = {
  'content-security-policy': CSP,
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cache-control': 'no-store',
};

/** The dashboard's files: ours (built into dist/ops/ui) and uPlot's, from the package. */
function uiFiles(): Record<string, { type: string; file: string }> {
  const here = fileURLToPath(import.meta.url);
  // under a TypeScript test runner this file is loaded from src/: the built copy is in dist/
  const dir = here.endsWith('.ts') ? path.resolve(path.dirname(here), '..', '..', 'dist', 'ops', 'ui') : path.join(path.dirname(here), 'ui');
  const require = createRequire(import.meta.url);
  const uplot = path.dirname(require.resolve('uplot/dist/uPlot.iife.min.js'));
  return {
    '/': { type: 'text/html; charset=utf-8', file: path.join(dir, 'index.html') },
    '/ui/app.js': { type: 'text/javascript; charset=utf-8', file: path.join(dir, 'app.js') },
    '/ui/app.css': { type: 'text/css; charset=utf-8', file: path.join(dir, 'app.css') },
    '/ui/favicon.svg': { type: 'image/svg+xml', file: path.join(dir, 'favicon.svg') },
    '/ui/uPlot.iife.min.js': { type: 'text/javascript; charset=utf-8', file: path.join(uplot, 'uPlot.iife.min.js') },
    '/ui/uPlot.min.css': { type: 'text/css; charset=utf-8', file: path.join(uplot, 'uPlot.min.css') },
  };
}

function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  if (h === 'localhost') return true;
  if (net.isIPv4(h)) return h.startsWith('127.');
  return h === '::1';
}

/** The host part of a Host header (`[::1]:9025` → `::1`). */
function hostOf(header: string | undefined): string {
  const h = (header ?? '').trim();
  const v6 = /^\[([^\]]+)\](?::\d+)?$/.exec(h);
  if (v6) return v6[1]!;
  return h.replace(/:\d+$/, '');
}

class BadRequest extends Error {}

function intParam(v: string | null, name: string, dflt: number, min: number, max: number): number {
  if (v === null || v === '') return dflt;
  if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) throw new BadRequest(`${name} must be an integer from ${min} to ${max}`);
  return Number(v);
}

/** `GET /queue?…` → one page's query, or BadRequest naming the parameter. */
export function pageQuery(p: URLSearchParams): BrowseQuery {
  const state = (p.get('state') || 'all') as BrowseState;
  if (!BROWSE_STATES.includes(state)) throw new BadRequest(`state must be one of ${BROWSE_STATES.join(', ')}`);
  const order = p.get('order') || 'newest';
  if (order !== 'oldest' && order !== 'newest') throw new BadRequest('order must be oldest or newest');
  const search = p.get('q') ?? '';
  if (search.length > MAX_SEARCH) throw new BadRequest(`q must be at most ${MAX_SEARCH} characters`);
  return {
    state,
    order,
    search,
    limit: intParam(p.get('limit'), 'limit', 100, 1, MAX_PAGE),
    offset: intParam(p.get('offset'), 'offset', 0, 0, MAX_OFFSET),
  };
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
  private readonly files = uiFiles();
  private readonly streams = new Set<http.ServerResponse>();
  /** where the endpoint listens (set by listen): decides whether a tokenless dashboard may be served */
  private bound: HostPort | undefined;

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

    const dashboardPath = path === '/' || path.startsWith('/ui/') || path.startsWith('/api/');
    if (dashboardPath && this.o.dashboard) {
      const refused = this.dashboardRefusal(req);
      if (refused) return send(403, { error: refused });
    }
    // a browser's cross-site POST/DELETE carries its page's Origin: only our own pages may act
    if (method !== 'GET' && method !== 'HEAD' && req.headers.origin !== undefined) {
      if (req.headers.origin !== `http://${req.headers.host ?? ''}`) return send(403, { error: 'cross-origin request refused' });
    }
    if (this.o.dashboard && (path === '/' || path.startsWith('/ui/'))) {
      if (method !== 'GET') return send(405, { error: 'method not allowed' });
      const f = this.files[path];
      if (!f) return send(404, { error: 'not found' });
      let body: Buffer;
      try {
        body = readFileSync(f.file);
      } catch {
        return send(404, { error: `dashboard file missing from the build: ${path} (npm run build)` });
      }
      res.writeHead(200, { 'content-type': f.type, ...PAGE_HEADERS });
      res.end(body);
      return;
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

    const d = this.o.dashboard;
    if (d && path === '/api/overview') {
      if (method !== 'GET') return send(405, { error: 'method not allowed' });
      return send(200, await d.overview());
    }
    if (d && path === '/api/events') {
      if (method !== 'GET') return send(405, { error: 'method not allowed' });
      return this.stream(res, d);
    }

    const q = this.o.queue;
    if (!q || !(path === '/queue' || path.startsWith('/queue/'))) return send(404, { error: 'not found' });
    const answer = (r: ActionResult) => (r.ok ? send(200, r) : send(r.status, { error: r.error }));

    if (path === '/queue') {
      if (method !== 'GET') return send(405, { error: 'method not allowed' });
      const paged = ['limit', 'offset', 'state', 'q', 'order'].some((k) => url.searchParams.has(k));
      if (!paged) return send(200, { messages: q.list() });
      try {
        return send(200, q.browse(pageQuery(url.searchParams)));
      } catch (e) {
        if (e instanceof BadRequest) return send(400, { error: e.message });
        throw e;
      }
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
    if (method === 'DELETE') return answer(url.searchParams.get('bounce') === '1' ? await q.deleteWithBounce(id) : await q.delete(id));
    if (method !== 'GET') return send(405, { error: 'method not allowed' });
    const v = q.show(id, url.searchParams.get('body') === '1');
    return v ? send(200, v) : send(404, { error: `${id}: no such message in the queue` });
  }

  /**
   * Why the dashboard may not be served to this request, or null. Without a token it is
   * served only on a loopback listener and to loopback Host names.
   */
  private dashboardRefusal(req: http.IncomingMessage): string | null {
    if (this.token) return null;
    if (this.bound && !isLoopback(this.bound.host)) {
      return `dashboard disabled: admin.listen (${formatHostPort(this.bound)}) is not a loopback address and no admin.token is set; set admin.token or admin.tokenFile`;
    }
    if (!isLoopback(hostOf(req.headers.host))) return `dashboard refused: Host ${req.headers.host ?? '(none)'} is not a loopback name (no admin.token is set)`;
    return null;
  }

  /** Whether the dashboard is served, and why not (the start-up log line). */
  dashboardState(): { enabled: boolean; reason: string } {
    if (!this.o.dashboard) return { enabled: false, reason: 'no dashboard' };
    if (this.token) return { enabled: true, reason: 'admin.token required' };
    if (this.bound && !isLoopback(this.bound.host)) {
      return { enabled: false, reason: 'admin.listen is not a loopback address and no admin.token is set' };
    }
    return { enabled: true, reason: 'loopback only, no token (none is set)' };
  }

  /** Server-Sent Events: the dashboard's live updates, until the client goes away. */
  private stream(res: http.ServerResponse, d: Dashboard): void {
    if (this.streams.size >= MAX_STREAMS) {
      res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '5' });
      res.end(JSON.stringify({ error: `too many live streams (${MAX_STREAMS})` }) + '\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no' });
    res.socket?.setNoDelay(true);
    this.streams.add(res);
    // the first bytes at once: the client knows it is connected before the first event
    res.write(': connected\n\n');
    const unsubscribe = d.subscribe((event, data) => {
      if (!res.writableEnded) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    });
    const done = () => {
      unsubscribe();
      this.streams.delete(res);
    };
    res.on('close', done);
  }

  /** Live change (config reload): the bearer token for requests from now on. */
  setToken(token: string | undefined): void {
    this.token = token;
  }

  async listen(at: HostPort): Promise<HostPort> {
    this.bound = await listenOn(this.server, at.host, at.port);
    return this.bound;
  }

  close(): Promise<void> {
    this.o.dashboard?.stop();
    for (const r of this.streams) r.end();
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }
}
