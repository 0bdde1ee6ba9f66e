/**
 * Pooled SMTP sessions to the next hop that send stored messages as they are, with
 * nodemailer's own protocol engine (SMTPConnection: EHLO, STARTTLS, AUTH, PIPELINING, DSN,
 * dot-stuffing) and without its mailer layer. For a raw message that layer built a MIME tree,
 * a Message-ID, parsed addresses and ran two stream pipelines per message only to pass our
 * bytes through unchanged: measured at ~6 % of a relay's main thread under load.
 *
 * Envelope addresses are normalised exactly as nodemailer's mailer does (its MimeNode:
 * IDN domains to punycode, lower-cased domains, duplicate recipients dropped).
 * Pool behaviour follows nodemailer's SMTP pool: at most `maxConnections` sessions, reused
 * for message after message; a message refused at the envelope or the message (not 421)
 * leaves its session usable after RSET; any other error closes the session; a reused session
 * that the server closed meanwhile is replaced once, transparently, when not a byte of the
 * message went out (so the retry can never duplicate it).
 */
import { Readable } from 'node:stream';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import MimeNode from 'nodemailer/lib/mime-node';

export type PoolOptions = SMTPConnection.Options & {
  maxConnections: number;
  auth?: { user: string; pass: string };
};

export interface SendInfo {
  accepted: string[];
  rejected: string[];
  rejectedErrors?: SMTPConnection.SMTPError[];
  response: string;
}

/** What the delivery worker needs of a transport (nodemailer's Transporter has the same shape). */
export interface RawTransport {
  sendMail(m: { envelope: { from: string; to: string[] }; raw: Buffer }): Promise<SendInfo>;
  close(): void;
}

interface Session {
  conn: SMTPConnection;
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

  constructor(private readonly o: PoolOptions) {}

  async sendMail(m: { envelope: { from: string; to: string[] }; raw: Buffer }): Promise<SendInfo> {
    const envelope = this.addresses.setEnvelope(m.envelope).getEnvelope() as SMTPConnection.Envelope;
    for (let attempt = 0; ; attempt++) {
      const s = await this.acquire();
      const message = oneChunk(m.raw);
      try {
        const info = await new Promise<SMTPConnection.SentMessageInfo>((resolve, reject) =>
          s.conn.send(envelope, message, (err, info) => (err ? reject(err) : resolve(info))),
        );
        s.sent++;
        this.release(s);
        return info as unknown as SendInfo;
      } catch (e) {
        const err = e as SMTPConnection.SMTPError;
        const reused = s.sent > 0;
        s.sent++;
        if (reused && attempt === 0 && !message.readableDidRead && isConnectionError(err)) {
          // the server dropped an idle session just now; nothing was sent: use a fresh one
          this.discard(s);
          continue;
        }
        if ((err.code === 'EENVELOPE' || err.code === 'EMESSAGE') && err.responseCode !== 421 && !s.dead) {
          // the server refused this message; the session itself is fine
          s.conn.reset((resetErr) => (resetErr ? this.discard(s) : this.release(s)));
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
    if (s.dead || this.closed) return this.discard(s);
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

  private connect(): Promise<Session> {
    this.open++;
    const conn = new SMTPConnection({ ...this.o, logger: false });
    const s: Session = { conn, sent: 0, dead: false };
    return new Promise<Session>((resolve, reject) => {
      let ready = false;
      // connect() reports failures (refused, timeout, TLS) only through 'error'; later, a
      // session that errs or that the server closes while idle leaves the pool the same way
      const fail = (err: Error) => {
        // settle first: closing the session below emits 'end' at once
        if (!ready) {
          ready = true;
          reject(err);
        }
        this.discard(s);
      };
      conn.on('error', fail);
      conn.on('end', () => fail(new Error('connection closed before the session was ready')));
      const done = () => {
        if (ready) return;
        ready = true;
        resolve(s);
      };
      conn.connect((err) => {
        if (err) return fail(err);
        if (!this.o.auth) return done();
        conn.login(this.o.auth, (err) => (err ? fail(err) : done()));
      });
    });
  }
}

/** The message as a stream of one chunk: `readableDidRead` tells whether it started to go out. */
function oneChunk(raw: Buffer): Readable {
  let pushed = false;
  return new Readable({
    read() {
      if (pushed) return;
      pushed = true;
      this.push(raw);
      this.push(null);
    },
  });
}

function isConnectionError(err: SMTPConnection.SMTPError): boolean {
  return (err.code === 'ECONNECTION' || err.code === 'ESOCKET') && !err.responseCode;
}
