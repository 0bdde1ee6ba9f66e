/**
 * The primary side of the replication link to one peer: one warm HTTP/2 session over
 * mutual TLS (no handshake per message), many requests in flight on it, a deadline on each.
 *
 * Liveness is ours to build (Node's http2 client cancels a request that hits its deadline
 * but keeps the session, and a session can outlive the socket behind it, or sit on a TCP
 * connection a silent network will never deliver on):
 * - connect + TLS handshake + the peer's SETTINGS must finish within `connectTimeoutMs`;
 * - a request that hits its deadline destroys the session it was sent on, so the next
 *   request opens a new one instead of queueing into a dead one;
 * - an idle session is probed with an HTTP/2 PING every `pingIntervalMs`; a PING not
 *   answered within `pingTimeoutMs` destroys the session;
 * - a failed connect is retried after a capped, jittered backoff; until then requests fail
 *   at once ('unreachable') rather than each waiting for a connect that will fail too.
 * The link's state (`state`) is what this node's own requests saw, never what the peer's
 * requests to us say.
 */
import http2 from 'node:http2';
import tls from 'node:tls';
import type { Body } from '../base/buffers.js';
import type { TlsFiles } from './server.js';
import { WINDOW } from './server.js';
import { encodePutParts, type PutMeta, type HeartbeatBody, type DiscardBody, type TransferMeta } from './protocol.js';
import { monotonicMs } from '../base/clock.js';

export class PeerError extends Error {
  /**
   * The request went out on a session whose TLS handshake had finished, and no answer came:
   * the peer may have acted on it (a shadow copy may be on its disk) — the outcome is unknown.
   */
  maybeDone = false;
  constructor(
    message: string,
    /** 'timeout' | 'unreachable' | 'refused' */
    readonly kind: 'timeout' | 'unreachable' | 'refused',
    /** the HTTP status of a refusal */
    readonly status?: number,
  ) {
    super(message);
  }
}

/** What the link can observe of one peer's session. */
export interface PeerClientEvents {
  /** a session finished its handshake (`reconnect`: not the first one) */
  connected?(reconnect: boolean): void;
  /** this node's requests succeed again (or for the first time) */
  up?(): void;
  /** this node's requests stopped succeeding, or the session was lost; `reason` says why */
  down?(reason: string): void;
  /** an HTTP/2 PING was answered after `ms` */
  pinged?(ms: number): void;
}

export interface PeerClientOptions {
  name: string;
  host: string;
  port: number;
  tls: TlsFiles;
  /** TCP connect + TLS handshake + SETTINGS (default 5000) */
  connectTimeoutMs?: number;
  /** PING an idle session this often; 0 = never (default 0) */
  pingIntervalMs?: number;
  /** a PING unanswered this long destroys the session (default 5000) */
  pingTimeoutMs?: number;
  /** first and longest wait before reconnecting after a failed connect (default 100 / 1000) */
  backoffMs?: { initialMs: number; maxMs: number };
  events?: PeerClientEvents;
  /** jitter source (tests) */
  random?: () => number;
}

type Session = http2.ClientHttp2Session;

export class PeerClient {
  private session: Session | undefined;
  private closed = false;
  /** consecutive failed connects (0 after a handshake succeeds) */
  private failures = 0;
  private retryAt = 0;
  private lastError = '';
  private everConnected = false;
  private pingTimer: NodeJS.Timeout | undefined;
  private lastActivity = 0;
  private pinging = false;
  /** sessions whose handshake finished */
  private readonly ready = new WeakSet<Session>();
  /** sessions whose TLS handshake finished (requests on them may have reached the peer) */
  private readonly secured = new WeakSet<Session>();
  /** sessions closed on purpose (certificate reload) */
  private readonly retired = new WeakSet<Session>();
  /**
   * the last session was lost or the last connect failed, and no handshake has succeeded
   * since: requests that can be refused at once (shadow puts) are, rather than each waiting
   * on a connect the peer may never answer
   */
  private suspect = false;
  /** this node's last request on the link succeeded (and its session still stands) */
  private ok = false;

  constructor(private readonly o: PeerClientOptions) {}

  get name(): string {
    return this.o.name;
  }

  /**
   * 'up': the last request answered and its session still stands; 'connecting': a session
   * is being made; 'down': no session (failed, lost, or none yet).
   */
  get state(): 'up' | 'connecting' | 'down' {
    if (this.ok) return 'up';
    const s = this.usable();
    return s && !this.ready.has(s) ? 'connecting' : 'down';
  }

  private setOk(ok: boolean, reason = ''): void {
    if (this.ok === ok) return;
    this.ok = ok;
    if (ok) this.o.events?.up?.();
    else this.o.events?.down?.(reason);
  }

  /** New certificates (config reload): the current session closes once its requests finish. */
  setTls(tls: TlsFiles): void {
    this.o.tls = tls;
    const s = this.session;
    // the next request opens a session with the new certificates; this one finishes its requests
    this.session = undefined;
    if (s && !s.closed && !s.destroyed) {
      this.retired.add(s);
      s.close();
    }
  }

  private usable(): Session | undefined {
    const s = this.session;
    return s && !s.closed && !s.destroyed ? s : undefined;
  }

  private connect(failFast: boolean): Session {
    const current = this.usable();
    if (current) {
      if (failFast && this.suspect && !this.ready.has(current)) throw this.reconnecting();
      return current;
    }
    const now = monotonicMs();
    if (now < this.retryAt) {
      throw new PeerError(`peer ${this.o.name}: reconnecting in ${Math.ceil(this.retryAt - now)} ms (last: ${this.lastError || 'connect failed'})`, 'unreachable');
    }
    const session = this.open();
    // the attempt goes on without this request; the next one finds it done or failed
    if (failFast && this.suspect) throw this.reconnecting();
    return session;
  }

  private reconnecting(): PeerError {
    return new PeerError(`peer ${this.o.name}: reconnecting (last: ${this.lastError || 'session lost'})`, 'unreachable');
  }

  private open(): Session {
    const { host, port, name } = this.o;
    const session = http2.connect(`https://${host.includes(':') ? `[${host}]` : host}:${port}`, {
      settings: { initialWindowSize: WINDOW },
      createConnection: () => {
        const sock = tls.connect({
          host,
          port,
          ca: this.o.tls.ca,
          cert: this.o.tls.cert,
          key: this.o.tls.key,
          // the peer's certificate must name the configured peer
          servername: name,
          ALPNProtocols: ['h2'],
          minVersion: 'TLSv1.2',
        });
        sock.setNoDelay(true);
        return sock;
      },
    });
    this.session = session;
    this.lastActivity = monotonicMs();
    let ready = false;
    let timedOut = false;
    // a peer that accepts TCP but never finishes the handshake (frozen, black hole) must not
    // hold the link in 'connecting' forever
    const connectTimer = setTimeout(() => {
      timedOut = true;
      this.drop(session, `no TLS/HTTP2 handshake within ${this.connectTimeoutMs} ms`);
    }, this.connectTimeoutMs);
    connectTimer.unref();
    session.on('error', (e: NodeJS.ErrnoException) => {
      // reported through the failing requests; remembered for the backoff message
      this.lastError = e.code ?? e.message;
    });
    // SETTINGS from the peer: the handshake is complete and the peer's HTTP/2 layer answers
    session.once('remoteSettings', () => {
      if (session.destroyed) return;
      ready = true;
      clearTimeout(connectTimer);
      this.ready.add(session);
      this.suspect = false;
      this.failures = 0;
      this.retryAt = 0;
      const reconnect = this.everConnected;
      this.everConnected = true;
      this.o.events?.connected?.(reconnect);
    });
    // the session can be destroyed before 'connect' is delivered (peer stopping): then this throws
    session.on('connect', () => {
      this.secured.add(session);
      if (!session.destroyed) session.setLocalWindowSize(WINDOW);
    });
    // a GOAWAY (peer stopping, certificate reload) ends the session for new requests
    session.on('goaway', () => {
      if (this.session === session) this.session = undefined;
    });
    session.on('close', () => {
      clearTimeout(connectTimer);
      // closed on purpose (client closed, new certificates): says nothing about the peer
      if (this.closed || this.retired.has(session)) return;
      if (this.session === session) {
        this.session = undefined;
        this.setOk(false, this.lastError || (ready ? 'session closed' : 'connect failed'));
      }
      this.suspect = true;
      if (!ready) {
        // a failed connect: wait before the next attempt, longer each time, jittered so
        // many nodes do not reconnect in step
        this.failures++;
        const { initialMs, maxMs } = this.o.backoffMs ?? { initialMs: 100, maxMs: 1000 };
        const wait = Math.min(maxMs, initialMs * 2 ** (this.failures - 1));
        // an attempt that timed out has already waited connectTimeoutMs (a silent network:
        // its SYN may have been dropped just before the network came back), so the next one
        // may start at once; a refused or failed one backs off
        this.retryAt = timedOut ? 0 : monotonicMs() + wait * (0.5 + 0.5 * (this.o.random ?? Math.random)());
      }
    });
    this.armPing();
    return session;
  }

  private get connectTimeoutMs(): number {
    return this.o.connectTimeoutMs ?? 5000;
  }

  /** Destroys `session` (if still ours to destroy) because it stopped answering. */
  private drop(session: Session, reason: string): void {
    if (session.destroyed) return;
    this.lastError = reason;
    if (this.session === session) {
      this.session = undefined;
      this.setOk(false, reason);
    }
    session.destroy();
  }

  private armPing(): void {
    const every = this.o.pingIntervalMs ?? 0;
    if (every <= 0 || this.pingTimer) return;
    this.pingTimer = setInterval(() => this.pingIfIdle(every), every);
    this.pingTimer.unref();
  }

  private pingIfIdle(every: number): void {
    const s = this.usable();
    if (!s || s.connecting || this.pinging || !this.ready.has(s)) return;
    if (monotonicMs() - this.lastActivity < every) return;
    this.pinging = true;
    const timeout = this.o.pingTimeoutMs ?? 5000;
    const timer = setTimeout(() => {
      this.pinging = false;
      this.drop(s, `PING not answered within ${timeout} ms`);
    }, timeout);
    timer.unref();
    const sent = s.ping((err, ms) => {
      clearTimeout(timer);
      this.pinging = false;
      if (err) return this.drop(s, `PING failed: ${err.message}`);
      this.lastActivity = monotonicMs();
      this.o.events?.pinged?.(ms);
    });
    if (!sent) {
      clearTimeout(timer);
      this.pinging = false;
    }
  }

  /** One request with a deadline. Resolves with status and body; rejects with PeerError. */
  request(
    method: string,
    path: string,
    body: Buffer | Buffer[],
    timeoutMs: number,
    opts: { failFast?: boolean } = {},
  ): Promise<{ status: number; body: Buffer }> {
    if (this.closed) return Promise.reject(new PeerError('client closed', 'unreachable'));
    return new Promise((resolve, reject) => {
      let session: Session;
      let req: http2.ClientHttp2Stream;
      try {
        session = this.connect(opts.failFast ?? false);
        req = session.request({ ':method': method, ':path': path, 'content-type': 'application/octet-stream' });
      } catch (e) {
        return reject(e instanceof PeerError ? e : new PeerError(`peer ${this.o.name}: ${(e as Error).message}`, 'unreachable'));
      }
      let done = false;
      // no answer to a request that may have reached the peer: its outcome is unknown
      const unanswered = (err: PeerError) => {
        err.maybeDone = this.secured.has(session);
        return err;
      };
      const timer = setTimeout(() => {
        const err = unanswered(new PeerError(`peer ${this.o.name} did not answer within ${timeoutMs} ms`, 'timeout'));
        finish(err);
        // a session that let a request time out is not trusted with the next one
        this.drop(session, err.message);
      }, timeoutMs);
      const finish = (err: PeerError | null, status = 0, data: Buffer = Buffer.alloc(0)) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (err) {
          if (this.session === session) this.setOk(false, err.message);
          reject(err);
        } else {
          this.lastActivity = monotonicMs();
          // an answer, even a refusal, proves this node reaches the peer
          if (this.session === session) this.setOk(true);
          resolve({ status, body: data });
        }
      };
      let status = 0;
      const chunks: Buffer[] = [];
      req.on('response', (h) => {
        status = Number(h[':status']);
      });
      req.on('data', (c: Buffer) => chunks.push(c));
      // a stream of a session destroyed under it ends without response headers: no answer
      req.on('end', () =>
        status === 0 ? finish(unanswered(new PeerError(`peer ${this.o.name}: stream ended without a reply`, 'unreachable'))) : finish(null, status, Buffer.concat(chunks)),
      );
      req.on('error', (e: NodeJS.ErrnoException) => finish(unanswered(new PeerError(`peer ${this.o.name}: ${e.code ?? e.message}`, 'unreachable'))));
      // 'close' follows every request; build its error (a stack capture) only when it is news
      req.on('close', () => done || finish(unanswered(new PeerError(`peer ${this.o.name}: stream closed without reply`, 'unreachable'))));
      if (Array.isArray(body)) {
        // corked: the parts go to HTTP/2 in one writev (end() uncorks), so the peer gets the
        // headers and the whole body in one flush; uncorked, the parts after the first waited
        // for its write callback, a turn of this loop later (the peer saw the body's end
        // ~5 ms after the headers at C=20)
        req.cork();
        for (const part of body.slice(0, -1)) req.write(part);
        req.end(body[body.length - 1]);
      } else {
        req.end(body);
      }
    });
  }

  private async json<T>(method: string, path: string, body: Buffer | Buffer[], timeoutMs: number, ok: number, failFast = false): Promise<T> {
    const r = await this.request(method, path, body, timeoutMs, { failFast });
    if (r.status !== ok) {
      let msg = r.body.toString('utf8').slice(0, 200);
      try {
        msg = (JSON.parse(msg) as { error?: string }).error ?? msg;
      } catch {
        /* not JSON */
      }
      throw new PeerError(`peer ${this.o.name} refused: ${r.status} ${msg}`, 'refused', r.status);
    }
    return JSON.parse(r.body.toString('utf8')) as T;
  }

  /**
   * Sends a shadow copy; resolves once the peer has it on disk. Fails at once while the link
   * is reconnecting after a loss (the client gets its 451 now, not after timeoutMs).
   */
  async put(id: string, meta: PutMeta, raw: Body, timeoutMs: number): Promise<'stored' | 'exists'> {
    const r = await this.json<{ result: 'stored' | 'exists' }>('PUT', `/v1/messages/${id}`, encodePutParts(meta, raw), timeoutMs, 201, true);
    return r.result;
  }

  /**
   * After a put whose outcome is unknown: asks the peer which of these copies it holds. The
   * peer refuses any copy it does not hold from then on (a late one still in the network),
   * so "not held" stays true. A peer of a version without this answers 404 (unknown).
   */
  async resolve(ids: string[], timeoutMs: number): Promise<string[]> {
    const r = await this.json<{ held: unknown }>('POST', '/v1/resolve', Buffer.from(JSON.stringify({ ids })), timeoutMs, 200);
    if (!Array.isArray(r.held) || !r.held.every((x) => typeof x === 'string')) {
      throw new PeerError(`peer ${this.o.name}: malformed resolve answer`, 'refused');
    }
    return r.held as string[];
  }

  async discard(body: DiscardBody, timeoutMs: number): Promise<number> {
    const r = await this.json<{ purged: number }>('POST', '/v1/discard', Buffer.from(JSON.stringify(body)), timeoutMs, 200);
    return r.purged;
  }

  /** Asks the peer which of our messages it promoted (for our current incarnation). */
  async reconcile(incarnation: string, timeoutMs: number): Promise<string[]> {
    let r: { promoted: unknown };
    try {
      r = await this.json<{ promoted: unknown }>('POST', '/v1/reconcile', Buffer.from(JSON.stringify({ incarnation })), timeoutMs, 200);
    } catch (e) {
      // a peer of a version without promotion (rolling upgrade) never promoted anything
      if (e instanceof PeerError && e.status === 404) return [];
      throw e;
    }
    if (!Array.isArray(r.promoted) || !r.promoted.every((x) => typeof x === 'string')) {
      throw new PeerError(`peer ${this.o.name}: malformed reconcile answer`, 'refused');
    }
    return r.promoted as string[];
  }

  async reconcileDone(ids: string[], timeoutMs: number): Promise<number> {
    const r = await this.json<{ forgotten: number }>('POST', '/v1/reconcile/done', Buffer.from(JSON.stringify({ ids })), timeoutMs, 200);
    return r.forgotten;
  }

  /** Asks the primary which of these ids it still holds. */
  async known(ids: string[], timeoutMs: number): Promise<string[]> {
    const r = await this.json<{ known: unknown }>('POST', '/v1/known', Buffer.from(JSON.stringify({ ids })), timeoutMs, 200);
    if (!Array.isArray(r.known) || !r.known.every((x) => typeof x === 'string')) {
      throw new PeerError(`peer ${this.o.name}: malformed known answer`, 'refused');
    }
    return r.known as string[];
  }

  /** Drain: hands the peer a message to take over (it shadows it on a third node first). */
  async transfer(id: string, meta: TransferMeta, raw: Body, timeoutMs: number): Promise<{ result: 'accepted' | 'exists'; shadowPeer: string }> {
    const r = await this.json<{ result: unknown; shadowPeer: unknown }>('PUT', `/v1/transfer/${id}`, encodePutParts(meta, raw), timeoutMs, 201);
    if ((r.result !== 'accepted' && r.result !== 'exists') || typeof r.shadowPeer !== 'string') {
      throw new PeerError(`peer ${this.o.name}: malformed transfer answer`, 'refused');
    }
    return { result: r.result, shadowPeer: r.shadowPeer };
  }

  /** Drain: asks the primary to shadow these copies elsewhere; a 404 (older version) is a refusal. */
  async reshadow(ids: string[], timeoutMs: number): Promise<{ moved: string[]; gone: string[] }> {
    const r = await this.json<{ moved: unknown; gone: unknown }>('POST', '/v1/reshadow', Buffer.from(JSON.stringify({ ids })), timeoutMs, 200);
    const ok = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === 'string');
    if (!ok(r.moved) || !ok(r.gone)) throw new PeerError(`peer ${this.o.name}: malformed reshadow answer`, 'refused');
    return { moved: r.moved, gone: r.gone };
  }

  async heartbeat(me: HeartbeatBody, timeoutMs: number): Promise<HeartbeatBody> {
    return this.json<HeartbeatBody>('POST', '/v1/heartbeat', Buffer.from(JSON.stringify(me)), timeoutMs, 200);
  }

  close(): void {
    this.closed = true;
    clearInterval(this.pingTimer);
    this.session?.destroy();
    this.session = undefined;
  }
}
