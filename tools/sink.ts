/**
 * A small SMTP sink used as the next hop by the demo, the tests and the benchmark. It keeps
 * what it receives in memory and can be told how to answer each recipient (to play a next
 * hop that defers or refuses).
 */
import { SMTPServer } from 'smtp-server';
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { listenOn } from '../src/base/net.js';

export interface SinkMessage {
  from: string;
  to: string[];
  raw: Buffer;
  /** the session was TLS-protected (STARTTLS) */
  secure: boolean;
  /** the authenticated user, if the sender logged in */
  user?: string;
}

export interface SinkOptions {
  /** offer STARTTLS with this certificate (PEM) */
  tls?: { key: string | Buffer; cert: string | Buffer };
  /** offer AUTH PLAIN/LOGIN and require it, with these credentials */
  auth?: { user: string; pass: string };
}

export type RcptPolicy = (rcpt: string, attempt: number) => { code: number; message: string } | null;

export class Sink extends EventEmitter {
  readonly messages: SinkMessage[] = [];
  private readonly server: SMTPServer;
  private readonly attempts = new Map<string, number>();
  private readonly sockets = new Set<Socket>();
  port = 0;
  /** decides per recipient; null accepts */
  rcptPolicy: RcptPolicy | null = null;
  /** while set, the final reply to DATA waits for it (lets a test look at a moment in between) */
  replyAfter: Promise<void> | null = null;

  constructor(opts: SinkOptions = {}) {
    super();
    const disabled = [...(opts.auth ? [] : ['AUTH']), ...(opts.tls ? [] : ['STARTTLS'])];
    this.server = new SMTPServer({
      ...(opts.tls ? { key: opts.tls.key, cert: opts.tls.cert } : {}),
      authOptional: !opts.auth,
      allowInsecureAuth: true,
      onAuth: (a, _s, cb) => {
        if (opts.auth && a.username === opts.auth.user && a.password === opts.auth.pass) return cb(null, { user: a.username });
        cb(new Error('Invalid credentials'));
      },
      disabledCommands: disabled,
      disableReverseLookup: true,
      logger: false,
      size: 64 * 1024 * 1024,
      onRcptTo: (addr, _s, cb) => {
        const n = (this.attempts.get(addr.address) ?? 0) + 1;
        this.attempts.set(addr.address, n);
        const r = this.rcptPolicy?.(addr.address, n);
        if (r) {
          const e = new Error(r.message) as Error & { responseCode: number };
          e.responseCode = r.code;
          return cb(e);
        }
        cb();
      },
      onData: (stream, session, cb) => {
        const chunks: Buffer[] = [];
        stream.on('data', (c: Buffer) => chunks.push(c));
        stream.on('end', async () => {
          if (this.replyAfter) await this.replyAfter;
          const m: SinkMessage = {
            from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
            to: session.envelope.rcptTo.map((r) => r.address),
            raw: Buffer.concat(chunks),
            secure: !!session.secure,
            ...(session.user ? { user: String(session.user) } : {}),
          };
          this.messages.push(m);
          this.emit('message', m);
          cb(null, 'Ok: sunk');
        });
      },
    });
    this.server.on('error', () => {});
    this.server.server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.once('close', () => this.sockets.delete(s));
    });
  }

  async listen(port = 0, host = '127.0.0.1'): Promise<number> {
    this.port = (await listenOn(this.server.server, host, port)).port;
    return this.port;
  }

  close(): Promise<void> {
    return new Promise((r) => this.server.close(() => r()));
  }

  /** Stops at once, cutting every open connection (a next hop that crashed). */
  kill(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((r) => this.server.server.close(() => r()));
  }
}
