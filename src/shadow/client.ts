/**
 * The primary side of the replication link to one peer: one warm HTTP/2 session over
 * mutual TLS (no handshake per message), many requests in flight on it, a deadline on each.
 */
import http2 from 'node:http2';
import tls from 'node:tls';
import type { TlsFiles } from './server.js';
import { WINDOW } from './server.js';
import { encodePutParts, type PutMeta, type HeartbeatBody, type DiscardBody } from './protocol.js';

export class PeerError extends Error {
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

export interface PeerClientOptions {
  name: string;
  host: string;
  port: number;
  tls: TlsFiles;
}

export class PeerClient {
  private session: http2.ClientHttp2Session | undefined;
  private closed = false;

  constructor(private readonly o: PeerClientOptions) {}

  /** New certificates (config reload): the current session closes once its requests finish. */
  setTls(tls: TlsFiles): void {
    this.o.tls = tls;
    const s = this.session;
    this.session = undefined;
    if (s && !s.closed && !s.destroyed) s.close();
  }

  get name(): string {
    return this.o.name;
  }

  private connect(): http2.ClientHttp2Session {
    if (this.session && !this.session.closed && !this.session.destroyed) return this.session;
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
    session.on('error', () => {
      /* reported through the failing requests */
    });
    // the session can be destroyed before 'connect' is delivered (peer stopping): then this throws
    session.on('connect', () => {
      if (!session.destroyed) session.setLocalWindowSize(WINDOW);
    });
    session.on('close', () => {
      if (this.session === session) this.session = undefined;
    });
    this.session = session;
    return session;
  }

  /** One request with a deadline. Resolves with status and body; rejects with PeerError. */
  request(method: string, path: string, body: Buffer | Buffer[], timeoutMs: number): Promise<{ status: number; body: Buffer }> {
    if (this.closed) return Promise.reject(new PeerError('client closed', 'unreachable'));
    return new Promise((resolve, reject) => {
      let session: http2.ClientHttp2Session;
      try {
        session = this.connect();
      } catch (e) {
        return reject(new PeerError(`peer ${this.o.name}: ${(e as Error).message}`, 'unreachable'));
      }
      let done = false;
      const req = session.request({ ':method': method, ':path': path, 'content-type': 'application/octet-stream' });
      const timer = setTimeout(() => {
        finish(new PeerError(`peer ${this.o.name} did not answer within ${timeoutMs} ms`, 'timeout'));
        req.close(http2.constants.NGHTTP2_CANCEL);
      }, timeoutMs);
      const finish = (err: Error | null, status = 0, data: Buffer = Buffer.alloc(0)) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve({ status, body: data });
      };
      let status = 0;
      const chunks: Buffer[] = [];
      req.on('response', (h) => {
        status = Number(h[':status']);
      });
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => finish(null, status, Buffer.concat(chunks)));
      req.on('error', (e: NodeJS.ErrnoException) => finish(new PeerError(`peer ${this.o.name}: ${e.code ?? e.message}`, 'unreachable')));
      // 'close' follows every request; build its error (a stack capture) only when it is news
      req.on('close', () => done || finish(new PeerError(`peer ${this.o.name}: stream closed without reply`, 'unreachable')));
      if (Array.isArray(body)) {
        for (const part of body.slice(0, -1)) req.write(part);
        req.end(body[body.length - 1]);
      } else {
        req.end(body);
      }
    });
  }

  private async json<T>(method: string, path: string, body: Buffer | Buffer[], timeoutMs: number, ok: number): Promise<T> {
    const r = await this.request(method, path, body, timeoutMs);
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

  /** Sends a shadow copy; resolves once the peer has it on disk. */
  async put(id: string, meta: PutMeta, raw: Buffer, timeoutMs: number): Promise<'stored' | 'exists'> {
    const r = await this.json<{ result: 'stored' | 'exists' }>('PUT', `/v1/messages/${id}`, encodePutParts(meta, raw), timeoutMs, 201);
    return r.result;
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

  async heartbeat(me: HeartbeatBody, timeoutMs: number): Promise<HeartbeatBody> {
    return this.json<HeartbeatBody>('POST', '/v1/heartbeat', Buffer.from(JSON.stringify(me)), timeoutMs, 200);
  }

  close(): void {
    this.closed = true;
    this.session?.destroy();
    this.session = undefined;
  }
}
