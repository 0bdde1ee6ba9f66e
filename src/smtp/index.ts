/**
 * smtp — the inbound listener (smtp-server).
 *
 * Implementation summary:
 * - EHLO offers SIZE, 8BITMIME, PIPELINING, ENHANCEDSTATUSCODES, SMTPUTF8, and STARTTLS when
 *   `smtp.tls` is set. No AUTH yet: relaying is decided by `smtp.allowedNetworks`.
 * - Refusals follow Postfix's wording and codes: relay denied `554 5.7.1` at RCPT, too many
 *   recipients `452 4.5.3`, too big `552 5.3.4`.
 * - At end of DATA the message gets a `Received:` header (RFC 5321 §4.4) and is handed, as
 *   one buffer with its envelope, to the `Acceptor`; its answer (250 with the queue id, or
 *   the 4xx it throws) is what the client sees. Nothing else in the message is changed.
 * - A failure inside our code answers 451 4.3.0; it never crashes the process.
 * - Graceful stop (`drain`): the listener stays open but new clients and new transactions get
 *   `421 4.3.2 Service shutting down`; messages being received or accepted finish (250 or
 *   4xx); past the deadline, uploads still running are cut off (never accepted).
 */
import { SMTPServer, type SMTPServerDataStream, type SMTPServerSession } from 'smtp-server';
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { reply, SmtpReply } from './replies.js';
import type { NetworkList } from './networks.js';
import { newQueueId } from '../core/ids.js';
import { noMetrics, type RelayMetrics } from '../ops/metrics.js';

export { SmtpReply, reply } from './replies.js';

export interface InboundMessage {
  id: string;
  sender: string;
  recipients: string[];
  /** the message as received, with our Received header prepended */
  body: Buffer;
  receivedAt: number;
  client: { address: string; helo: string };
}

/** Takes responsibility for a message; resolves with the 250 text or throws an SmtpReply. */
export interface Acceptor {
  accept(m: InboundMessage): Promise<string>;
}

/** What a config reload may change on a running listener (applies to new sessions). */
export interface SmtpSettings {
  hostname: string;
  maxMessageSize: number;
  maxRecipients: number;
  socketTimeoutMs: number;
  allowedNetworks: NetworkList;
  tls?: { cert: string; key: string };
}

export interface SmtpListenerOptions extends SmtpSettings {
  acceptor: Acceptor;
  log: Logger;
  metrics?: Pick<RelayMetrics, 'refused'>;
}

function rfc2822Date(d: Date): string {
  // e.g. "Thu, 26 Nov 2026 08:30:52 +0000 (UTC)" as Postfix writes it
  return d.toUTCString().replace('GMT', '+0000 (UTC)');
}

export function receivedHeader(
  o: { hostname: string },
  s: { helo: string; address: string; protocol: string; id: string; recipients: string[] },
  when: Date,
): string {
  const from = `from ${s.helo || 'unknown'} (unknown [${s.address}])`;
  const forClause = s.recipients.length === 1 ? `\r\n\tfor <${s.recipients[0]}>` : '';
  return `Received: ${from}\r\n\tby ${o.hostname} (shadowrelay) with ${s.protocol} id ${s.id}${forClause}; ${rfc2822Date(when)}\r\n`;
}

interface LiveConnection {
  session: SMTPServerSession;
  send(code: number, text: string): void;
}

export class SmtpListener {
  private readonly server: SMTPServer;
  private draining = false;
  /** sessions whose DATA is being received / whose message is being accepted */
  private readonly receiving = new Set<string>();
  private readonly accepting = new Set<string>();
  private readonly metrics: Pick<RelayMetrics, 'refused'>;

  constructor(private readonly o: SmtpListenerOptions) {
    this.metrics = o.metrics ?? noMetrics;
    const tls = o.tls ? { key: readFileSync(o.tls.key), cert: readFileSync(o.tls.cert) } : {};
    this.server = new SMTPServer({
      ...tls,
      name: o.hostname,
      banner: 'shadowrelay',
      size: o.maxMessageSize,
      rejectOversized: true,
      maxRecipients: o.maxRecipients,
      hideSTARTTLS: !o.tls,
      hideENHANCEDSTATUSCODES: false,
      disabledCommands: ['AUTH'],
      authOptional: true,
      disableReverseLookup: true,
      socketTimeout: o.socketTimeoutMs,
      logger: false,
      onConnect: (session, cb) => {
        o.log.info({ session: session.id, client: session.remoteAddress }, 'connect');
        // graceful stop: the listener stays open so clients learn why
        if (this.draining) return cb(reply(421, '4.3.2', 'Service shutting down'));
        cb();
      },
      onMailFrom: (_addr, _session, cb) => (this.draining ? cb(reply(421, '4.3.2', 'Service shutting down')) : cb()),
      onClose: (session) => {
        o.log.info({ session: session.id, client: session.remoteAddress }, 'disconnect');
      },
      onRcptTo: (addr, session, cb) => {
        if (!o.allowedNetworks.contains(session.remoteAddress) && !session.user) {
          this.metrics.refused('relay_denied');
          o.log.info({ session: session.id, client: session.remoteAddress, rcpt: addr.address }, 'relay access denied');
          return cb(reply(554, '5.7.1', `<${addr.address}>: Relay access denied`));
        }
        cb();
      },
      onData: (stream, session, cb) => this.onData(stream, session, cb),
    });
    this.server.on('error', (err) => o.log.warn({ err: err.message }, 'smtp: connection error'));
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.server.off('error', reject);
        const a = this.server.server.address();
        resolve({ host, port: typeof a === 'object' && a ? a.port : port });
      });
    });
  }

  private onData(
    stream: SMTPServerDataStream,
    session: SMTPServerSession,
    cb: (err?: Error | null, message?: string) => void,
  ): void {
    const chunks: Buffer[] = [];
    let size = 0;
    const sid = session.id;
    this.receiving.add(sid);
    stream.once('close', () => this.receiving.delete(sid));
    stream.on('data', (c: Buffer) => {
      // past the limit, keep reading (the client must get its 552) but stop storing
      if (size <= this.o.maxMessageSize) chunks.push(c);
      size += c.length;
    });
    stream.once('error', (err) => {
      this.receiving.delete(sid);
      cb(reply(451, '4.3.0', `Error: ${err.message}`));
    });
    stream.once('end', () => {
      this.receiving.delete(sid);
      if (stream.sizeExceeded) {
        this.metrics.refused('too_big');
        this.o.log.info({ session: session.id, client: session.remoteAddress, size }, 'refused: message too big');
        return cb(reply(552, '5.3.4', 'Message size exceeds fixed limit'));
      }
      const now = new Date();
      const id = newQueueId(now.getTime());
      const recipients = session.envelope.rcptTo.map((r) => r.address);
      const sender = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
      const helo = session.hostNameAppearsAs ?? '';
      const received = receivedHeader(
        this.o,
        { helo, address: session.remoteAddress, protocol: session.transmissionType, id, recipients },
        now,
      );
      const body = Buffer.concat([Buffer.from(received, 'latin1'), ...chunks]);
      // ties the session's connect line to the queue id (Postfix: "ID: client=...")
      const env = session.envelope;
      this.o.log.info(
        { id, session: session.id, client: session.remoteAddress, helo, tls: !!session.secure, body: env.bodyType, smtputf8: !!env.smtpUtf8 },
        'client',
      );
      this.accepting.add(sid);
      this.o.acceptor
        .accept({ id, sender, recipients, body, receivedAt: now.getTime(), client: { address: session.remoteAddress, helo } })
        .then(
          (text) => cb(null, text),
          (err: unknown) => {
            if (err instanceof SmtpReply) return cb(err);
            this.o.log.error({ id, err }, 'accept failed unexpectedly');
            this.metrics.refused('internal');
            cb(reply(451, '4.3.0', 'Error: queue file write error'));
          },
        )
        .finally(() => this.accepting.delete(sid));
    });
  }

  /**
   * Graceful stop: refuse new clients and transactions with 421 4.3.2, let messages being
   * received finish until `deadlineMs`, then cut off the rest. A message already being
   * accepted always gets its answer first (that wait is bounded by shadow.timeoutMs), so no
   * client sees 421 for a message that was queued. Then the listener closes.
   */
  async drain(deadlineMs: number): Promise<void> {
    this.draining = true;
    const until = async (cond: () => boolean, ms: number) => {
      const end = Date.now() + ms;
      while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    };
    await until(() => this.receiving.size === 0 && this.accepting.size === 0, deadlineMs);
    const conns = (this.server as unknown as { connections: Set<LiveConnection> }).connections;
    const shut = () => {
      for (const c of [...conns]) if (!this.accepting.has(c.session.id)) c.send(421, '4.3.2 Service shutting down');
    };
    shut();
    await until(() => this.accepting.size === 0, Number.POSITIVE_INFINITY);
    shut();
    await this.close();
  }

  /**
   * Live change (config reload). smtp-server reads these options per session, so new
   * sessions see them; sessions already open keep what they negotiated. TLS files are read
   * here: a caller validates them first (see relay reload) so a bad file never half-applies.
   */
  reload(s: SmtpSettings): void {
    const opts = this.server.options as unknown as Record<string, unknown>;
    opts.name = s.hostname;
    opts.size = s.maxMessageSize;
    opts.maxRecipients = s.maxRecipients;
    opts.socketTimeout = s.socketTimeoutMs;
    opts.hideSTARTTLS = !s.tls;
    if (s.tls) this.server.updateSecureContext({ key: readFileSync(s.tls.key), cert: readFileSync(s.tls.cert) });
    Object.assign(this.o, s);
  }

  /** Stops accepting connections; open sessions are closed by smtp-server's close logic. */
  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
