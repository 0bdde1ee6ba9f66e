/**
 * Pooled SMTP sessions to the next hop that send stored messages as they are (smtp-client.ts).
 *
 * Envelope addresses are normalised exactly as nodemailer's mailer does (its MimeNode:
 * IDN domains to punycode, lower-cased domains, duplicate recipients dropped).
 * Pool behaviour follows nodemailer's SMTP pool: at most `maxConnections` sessions, reused
 * for message after message; a message refused at the envelope or the message (not 421)
 * leaves its session usable after RSET; any other error closes the session; a reused session
 * that the server closed meanwhile is replaced once, transparently, when not a byte of the
 * message went out (so the retry can never duplicate it).
 */
import MimeNode from 'nodemailer/lib/mime-node';
import { SmtpSession, type SessionOptions, type SendInfo, type SmtpError } from './smtp-client.js';
import type { Body } from '../base/buffers.js';

export type { SendInfo } from './smtp-client.js';

export type PoolOptions = Omit<SessionOptions, 'connectionTimeout' | 'greetingTimeout' | 'socketTimeout' | 'opportunisticTLS' | 'requireTLS' | 'tls'> &
  Partial<Pick<SessionOptions, 'connectionTimeout' | 'greetingTimeout' | 'socketTimeout' | 'opportunisticTLS' | 'requireTLS' | 'tls'>> & {
    maxConnections: number;
    /** accepted for nodemailer-shaped option objects; STARTTLS-only relaying never starts in TLS */
    secure?: false;
  };

/** What the delivery worker needs of a transport (nodemailer's Transporter has the same shape). */
export interface RawTransport {
  sendMail(m: { envelope: { from: string; to: string[] }; raw: Body }): Promise<SendInfo>;
  close(): void;
}

interface Session {
  conn: SmtpSession;
  sent: number;
  dead: boolean;
}

export class SmtpPool implements RawTransport {
  private readonly idle: Session[] = [];
  private readonly waiting: Array<{ resolve: (s: Session) => void; reject: (e: Error) => void }> = [];
  private open = 0;
  private closed = false;
  /** used only for its envelope normalisation (synchronous, so one instance serves all sends) */
  private readonly addresses = new MimeNode();
  private readonly session: SessionOptions;

  constructor(private readonly o: PoolOptions) {
    this.session = {
      connectionTimeout: 30000,
      greetingTimeout: 30000,
      socketTimeout: 300000,
      opportunisticTLS: false,
      requireTLS: false,
      tls: {},
      ...o,
    };
  }

  async sendMail(m: { envelope: { from: string; to: string[] }; raw: Body }): Promise<SendInfo> {
    const envelope = this.addresses.setEnvelope(m.envelope).getEnvelope() as { from: string | false; to: string[] };
    const env = { from: envelope.from || '', to: envelope.to };
    for (let attempt = 0; ; attempt++) {
      const s = await this.acquire();
      try {
        const info = await s.conn.send(env, m.raw);
        s.sent++;
        this.release(s);
        return info;
      } catch (e) {
        const err = e as SmtpError;
        const reused = s.sent > 0;
        s.sent++;
        if (reused && attempt === 0 && isConnectionError(err) && !s.conn.wroteMessage) {
          // the server dropped an idle session just now; the message did not go out: use a fresh one
          this.discard(s);
          continue;
        }
        if ((err.code === 'EENVELOPE' || err.code === 'EMESSAGE') && err.responseCode !== 421 && !s.conn.dead) {
          // the server refused this message; the session itself is fine
          s.conn.reset().then(
            () => this.release(s),
            () => this.discard(s),
          );
        } else {
          this.discard(s);
        }
        throw err;
      }
    }
  }

  /** Closes idle sessions now and busy ones when their message is done. */
  close(): void {
    this.closed = true;
    for (const s of [...this.idle]) this.discard(s);
    for (const w of this.waiting.splice(0)) w.reject(new Error('transport closed'));
  }

  private acquire(): Promise<Session> {
    if (this.closed) return Promise.reject(new Error('transport closed'));
    const s = this.idle.pop();
    if (s) return Promise.resolve(s);
    if (this.open < this.o.maxConnections) return this.connect();
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  private release(s: Session): void {
    if (s.dead || s.conn.dead || this.closed) return this.discard(s);
    const w = this.waiting.shift();
    if (w) w.resolve(s);
    else this.idle.push(s);
  }

  private discard(s: Session): void {
    const i = this.idle.indexOf(s);
    if (i >= 0) this.idle.splice(i, 1);
    if (s.dead) return;
    s.dead = true;
    this.open--;
    s.conn.close();
    // its slot is free: the first waiter gets a new session
    const w = this.waiting.shift();
    if (w) this.connect().then(w.resolve, w.reject);
  }

  private async connect(): Promise<Session> {
    this.open++;
    let conn: SmtpSession;
    try {
      conn = await SmtpSession.open(this.session);
    } catch (e) {
      this.open--;
      // its slot is free again: a waiter gets a new try
      const w = this.waiting.shift();
      if (w) this.connect().then(w.resolve, w.reject);
      throw e;
    }
    const s: Session = { conn, sent: 0, dead: false };
    // a session the server closes (or that times out) while idle leaves the pool
    conn.onClose(() => {
      if (this.idle.includes(s)) this.discard(s);
    });
    return s;
  }
}

function isConnectionError(err: SmtpError): boolean {
  return (err.code === 'ECONNECTION' || err.code === 'ESOCKET') && !err.responseCode;
}
