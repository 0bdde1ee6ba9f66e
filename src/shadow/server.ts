/**
 * The peer side of the replication link: stores shadow copies durably before acking,
 * answers heartbeats, and hands discards, reconcile and orphan questions to the link's
 * hooks. Only clients whose certificate (signed by `shadow.tls.ca`) names a configured
 * peer get in; every request from one counts as contact (liveness for promotion).
 *
 * Hardening: TLS 1.2+ only, a client certificate is required and verified (no certificate,
 * another CA → the handshake fails; a certificate naming no configured peer → the socket is
 * destroyed); a handshake must finish within 10 s; a request body over `maxBodyBytes` is
 * answered 413 and the stream reset at once (not read to its end); a malformed request
 * gets 400/404/405, and an exception in a handler 500/503 — never a crash.
 *
 * Doubtful copies: a primary whose put got no answer asks `POST /v1/resolve` which of those
 * copies this node holds. For every one it does not hold, it refuses a late copy from then
 * on (409), so the primary can answer its client 451 knowing no copy will appear here. The
 * refusals live in memory: a late copy can only still arrive on a connection of this
 * process. A full spool answers a put 507 (the primary answers 451 and is not ready).
 */
import http2 from 'node:http2';
import type { TLSSocket, PeerCertificate } from 'node:tls';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { ServerSpool } from '../spool/index.js';
import { decodePut, decodeTransfer, ID_RE, ProtocolError, type HeartbeatBody, type DiscardBody, type TransferMeta } from './protocol.js';
import { Parts, type Body } from '../base/buffers.js';
import { listenOn } from '../base/net.js';

export interface TlsFiles {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

export interface ShadowServerOptions {
  nodeName: string;
  /** this node's failure domain, told in heartbeat answers */
  zone?: string | undefined;
  peerNames: string[];
  tls: TlsFiles;
  maxBodyBytes: number;
  spool: ServerSpool;
  log: Logger;
  hooks: ShadowServerHooks;
}

/** What a peer says about itself in a heartbeat (absent from older versions). */
export interface PeerInfo {
  zone?: string | undefined;
  draining?: boolean | undefined;
}

/** What the link does with a peer's requests beyond storing copies. */
export interface ShadowServerHooks {
  /** any authenticated request: the peer is alive; `incarnation` when the request names it */
  contact(peer: string, incarnation: string | null, info?: PeerInfo): void;
  discard(peer: string, body: DiscardBody): Promise<number>;
  reconcile(peer: string, incarnation: string): Promise<string[]>;
  reconcileDone(peer: string, ids: string[]): Promise<number>;
  known(peer: string, ids: string[]): string[];
  /** this node is draining: it takes no new copies */
  draining(): boolean;
  /** a draining peer hands this node a message: [status, answer] */
  transfer(peer: string, id: string, meta: TransferMeta, raw: Body): Promise<[number, unknown]>;
  /** a draining peer asks this node to shadow these of its messages elsewhere */
  reshadow(peer: string, ids: string[]): Promise<{ moved: string[]; gone: string[] }>;
}

/** Most ids one request may name (a discard batch is 500). */
const MAX_IDS = 10000;
/** How long (and how many) "not held, refuse a late copy" answers are remembered. */
const REFUSE_LATE_MS = 86400_000;
const REFUSE_LATE_MAX = 100000;

/** Names a certificate vouches for: its DNS SANs and CN. */
export function certNames(cert: PeerCertificate | null | undefined): string[] {
  const names: string[] = [];
  // a socket already closed has no peer certificate any more (null)
  if (!cert) return names;
  if (cert.subjectaltname) {
    for (const part of cert.subjectaltname.split(/,\s*/)) {
      if (part.startsWith('DNS:')) names.push(part.slice(4));
    }
  }
  const cn = cert.subject?.CN;
  if (typeof cn === 'string') names.push(cn);
  return names;
}

export const WINDOW = 16 * 1024 * 1024;

export class ShadowServer {
  private readonly server: http2.Http2SecureServer;
  private readonly peerOf = new WeakMap<object, string>();
  private readonly sessions = new Set<http2.ServerHttp2Session>();
  /** every TCP socket, authenticated or not: close() must not wait for a peer's goodwill */
  private readonly sockets = new Set<Socket>();
  /** `peer id` → until when a late copy is refused (its primary was told we do not hold it) */
  private readonly refuseLate = new Map<string, number>();
  /** the last copy was refused for lack of room (told in heartbeat answers until a store or purge succeeds) */
  private full = false;
  /** `peer id` → the store in progress (a resolve waits for it) */
  private readonly storing = new Map<string, Promise<unknown>>();

  constructor(private readonly o: ShadowServerOptions) {
    this.server = http2.createSecureServer({
      ca: o.tls.ca,
      cert: o.tls.cert,
      key: o.tls.key,
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
      allowHTTP1: false,
      // an unauthenticated client cannot hold a socket open by never finishing the handshake
      handshakeTimeout: 10000,
      settings: { initialWindowSize: WINDOW },
    });
    this.server.on('connection', (sock: Socket) => {
      this.sockets.add(sock);
      sock.once('close', () => this.sockets.delete(sock));
    });
    this.server.on('secureConnection', (sock: TLSSocket) => {
      // Nagle + delayed ACK costs ~40 ms per small reply on this link
      sock.setNoDelay(true);
      const names = certNames(sock.getPeerCertificate());
      const peer = o.peerNames.find((p) => names.includes(p));
      if (!peer) {
        o.log.warn({ names, remote: sock.remoteAddress }, 'shadow: refused client whose certificate names no configured peer');
        sock.destroy();
        return;
      }
      this.peerOf.set(sock, peer);
    });
    this.server.on('session', (session) => {
      this.sessions.add(session);
      session.on('close', () => this.sessions.delete(session));
      session.on('error', () => session.destroy());
      if (!session.destroyed) session.setLocalWindowSize(WINDOW);
    });
    this.server.on('stream', (stream, headers) => this.onStream(stream, headers));
    this.server.on('tlsClientError', (err) => o.log.debug({ err: err.message }, 'shadow: TLS handshake failed'));
  }

  /** The peer list changed (reload): sessions of a removed peer are closed. */
  setPeerNames(names: string[]): void {
    this.o.peerNames = names;
    for (const session of this.sessions) {
      const peer = this.peerOf.get(session);
      if (peer && !names.includes(peer)) session.destroy();
    }
  }

  /** New certificates for connections made from now on (config reload). */
  setTls(tls: TlsFiles): void {
    this.server.setSecureContext({ ca: tls.ca, cert: tls.cert, key: tls.key, minVersion: 'TLSv1.2' });
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return listenOn(this.server, host, port);
  }

  private peerFor(stream: http2.ServerHttp2Stream): string | undefined {
    const sock = stream.session?.socket as unknown as TLSSocket | undefined;
    // the session's socket is a proxy; look the peer up through the real TLS socket's cert
    if (!sock) return undefined;
    const cached = this.peerOf.get(stream.session!);
    if (cached) return this.o.peerNames.includes(cached) ? cached : undefined;
    const names = certNames(sock.getPeerCertificate());
    const peer = this.o.peerNames.find((p) => names.includes(p));
    if (peer) this.peerOf.set(stream.session!, peer);
    return peer;
  }

  private onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    const since = process.hrtime.bigint();
    stream.on('error', () => {});
    const peer = this.peerFor(stream);
    if (!peer) return reply(stream, 403, { error: 'certificate names no configured peer' });
    const method = headers[':method'];
    const url = String(headers[':path'] ?? '');
    const chunks: Buffer[] = [];
    let size = 0;
    let tooBig = false;
    stream.on('data', (c: Buffer) => {
      if (tooBig) return;
      size += c.length;
      if (size > this.o.maxBodyBytes) {
        tooBig = true;
        chunks.length = 0;
        // answer now and stop the upload instead of reading it to its end
        reply(stream, 413, { error: 'body exceeds maxMessageSize' });
        stream.close(http2.constants.NGHTTP2_NO_ERROR);
        return;
      }
      chunks.push(c);
    });
    stream.on('end', () => {
      if (tooBig) return;
      // the pieces as they came: the spool copies them once, into its staging area
      const body = new Parts(chunks);
      this.handle(peer, String(method), url, body, since).then(
        ([status, json]) => reply(stream, status, json),
        (err: unknown) => {
          if (err instanceof ProtocolError) return reply(stream, 400, { error: err.message });
          this.o.log.error({ err, peer, url }, 'shadow: request failed');
          reply(stream, 503, { error: 'storage error' });
        },
      );
    });
  }

  /** `since`: when the request's headers arrived (the stored line says how long the copy took here) */
  private async handle(peer: string, method: string, url: string, body: Parts, since: bigint): Promise<[number, unknown]> {
    const spool = this.o.spool;
    const hooks = this.o.hooks;
    if (method === 'PUT' && url.startsWith('/v1/messages/')) {
      const id = url.slice('/v1/messages/'.length);
      if (!ID_RE.test(id)) throw new ProtocolError('bad message id');
      const { meta, raw } = decodePut(body);
      hooks.contact(peer, meta.incarnation);
      const key = `${peer} ${id}`;
      // a node leaving takes no new copies: the primary tries its next candidate at once
      if (hooks.draining()) return [503, { error: 'draining: this node takes no new copies' }];
      if ((this.refuseLate.get(key) ?? 0) > Date.now()) {
        this.o.log.warn({ id, peer }, 'shadow refused: its primary already settled this message without our copy');
        return [409, { error: 'resolved as not held: copy refused' }];
      }
      const t0 = process.hrtime.bigint();
      const store = spool.storeShadow({
        id,
        origin: peer,
        originIncarnation: meta.incarnation,
        sender: meta.sender,
        recipients: meta.recipients,
        receivedAt: meta.receivedAt,
        body: raw,
        ...(meta.done?.length ? { done: meta.done } : {}),
      });
      this.storing.set(key, store.catch(() => undefined));
      let result: 'stored' | 'exists';
      try {
        result = await store;
      } catch (err) {
        if (!isFull(err)) throw err;
        this.full = true;
        this.o.log.warn({ id, peer, err: (err as Error).message }, 'shadow refused: spool full');
        return [507, { error: 'spool full' }];
      } finally {
        this.storing.delete(key);
      }
      this.full = false;
      // storeMs: this node's durable write; requestMs: from the request's headers to here (the
      // primary's shadowMs minus this is the link and the primary's own loop)
      const now = process.hrtime.bigint();
      this.o.log.info({ id, peer, size: raw.length, result, storeMs: Number(now - t0) / 1e6, requestMs: Number(now - since) / 1e6 }, 'shadow stored');
      return [201, { result }];
    }
    if (method === 'POST' && url === '/v1/resolve') {
      const ids = parseJson(body, (j) => {
        const v = (j as { ids?: unknown }).ids;
        return isIdList(v) ? v : null;
      });
      hooks.contact(peer, null);
      const held: string[] = [];
      for (const id of ids) {
        const key = `${peer} ${id}`;
        await this.storing.get(key);
        const m = spool.get(id);
        // a copy promoted here (even delivered already) was held: the primary's reconcile settles it
        if ((m && m.origin === peer) || spool.isPromoted(peer, id)) held.push(id);
        else this.refuseLaterCopies(key);
      }
      this.o.log.info({ peer, ids, held }, 'resolve: told the primary which doubtful copies are held');
      return [200, { held }];
    }
    if (method === 'POST' && url === '/v1/discard') {
      const d = parseJson(body, (j) => {
        const o = j as Partial<DiscardBody>;
        if (!isIdList(o.ids)) return null;
        if (o.rcpts === undefined) return { ids: o.ids };
        if (
          !Array.isArray(o.rcpts) ||
          o.rcpts.length > MAX_IDS ||
          !o.rcpts.every((r) => r && typeof r.id === 'string' && Array.isArray(r.idx) && r.idx.every((i) => Number.isInteger(i) && i >= 0))
        ) {
          return null;
        }
        return { ids: o.ids, rcpts: o.rcpts };
      });
      hooks.contact(peer, null);
      const purged = await hooks.discard(peer, d);
      // room again, perhaps: the next copy will tell
      if (purged > 0) this.full = false;
      return [200, { purged }];
    }
    if (method === 'POST' && url === '/v1/heartbeat') {
      const hb = parseJson(body, (j) => {
        const h = j as Partial<HeartbeatBody>;
        return typeof h.name === 'string' && typeof h.incarnation === 'string' ? (h as HeartbeatBody) : null;
      });
      hooks.contact(peer, hb.incarnation, { zone: typeof hb.zone === 'string' ? hb.zone : undefined, draining: hb.draining === true });
      return [
        200,
        {
          name: this.o.nodeName,
          incarnation: spool.incarnation,
          ...(this.full ? { spoolFull: true } : {}),
          ...(this.o.zone ? { zone: this.o.zone } : {}),
          ...(hooks.draining() ? { draining: true } : {}),
        },
      ];
    }
    if (method === 'PUT' && url.startsWith('/v1/transfer/')) {
      const id = url.slice('/v1/transfer/'.length);
      if (!ID_RE.test(id)) throw new ProtocolError('bad message id');
      const { meta, raw } = decodeTransfer(body);
      hooks.contact(peer, meta.incarnation);
      try {
        return await hooks.transfer(peer, id, meta, raw);
      } catch (err) {
        if (!isFull(err)) throw err;
        return [507, { error: 'spool full' }];
      }
    }
    if (method === 'POST' && url === '/v1/reshadow') {
      const ids = parseJson(body, (j) => {
        const v = (j as { ids?: unknown }).ids;
        return isIdList(v) ? v : null;
      });
      hooks.contact(peer, null);
      return [200, await hooks.reshadow(peer, ids)];
    }
    if (method === 'POST' && url === '/v1/reconcile') {
      const inc = parseJson(body, (j) => {
        const v = (j as { incarnation?: unknown }).incarnation;
        return typeof v === 'string' ? v : null;
      });
      hooks.contact(peer, inc);
      return [200, { promoted: await hooks.reconcile(peer, inc) }];
    }
    if (method === 'POST' && (url === '/v1/reconcile/done' || url === '/v1/known')) {
      const ids = parseJson(body, (j) => {
        const v = (j as { ids?: unknown }).ids;
        return isIdList(v) ? v : null;
      });
      hooks.contact(peer, null);
      if (url === '/v1/known') return [200, { known: hooks.known(peer, ids) }];
      return [200, { forgotten: await hooks.reconcileDone(peer, ids) }];
    }
    return [404, { error: 'no such endpoint' }];
  }

  private refuseLaterCopies(key: string): void {
    const now = Date.now();
    if (this.refuseLate.size >= REFUSE_LATE_MAX) {
      for (const [k, until] of this.refuseLate) if (until <= now || this.refuseLate.size >= REFUSE_LATE_MAX) this.refuseLate.delete(k);
    }
    this.refuseLate.set(key, now + REFUSE_LATE_MS);
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    for (const s of this.sessions) s.destroy();
    // a session destroyed while its peer still uploads can keep its socket: end those too
    for (const sock of this.sockets) sock.destroy();
    await closed;
  }
}

/** SQLite ran out of room: the file hit spool.maxSizeBytes (max_page_count), or the disk is full. */
function isFull(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return code === 'SQLITE_FULL' || /database or disk is full/i.test(String((err as Error).message));
}

function isIdList(v: unknown): v is string[] {
  return Array.isArray(v) && v.length <= MAX_IDS && v.every((x) => typeof x === 'string');
}

function parseJson<T>(body: Parts, check: (j: unknown) => T | null): T {
  let j: unknown;
  try {
    j = JSON.parse(body.whole().toString('utf8'));
  } catch {
    throw new ProtocolError('body is not JSON');
  }
  const v = typeof j === 'object' && j !== null ? check(j) : null;
  if (v === null) throw new ProtocolError('body has the wrong shape');
  return v;
}

function reply(stream: http2.ServerHttp2Stream, status: number, json: unknown): void {
  if (stream.destroyed || stream.closed) return;
  try {
    stream.respond({ ':status': status, 'content-type': 'application/json' });
    stream.end(JSON.stringify(json));
  } catch {
    /* the peer went away */
  }
}
