/**
 * smtp — the inbound listener (smtp-server, through the hooks in engine.ts).
 *
 * Implementation summary:
 * - EHLO offers SIZE, 8BITMIME, PIPELINING, ENHANCEDSTATUSCODES, SMTPUTF8; STARTTLS (TLS 1.2+)
 *   when `smtp.tls` is set; AUTH PLAIN LOGIN when `smtp.auth` is set — to clients outside
 *   allowedNetworks only after STARTTLS. `smtp.requireTLS` refuses everything but
 *   EHLO/HELO/STARTTLS/NOOP/RSET/QUIT before TLS with `530 5.7.0`.
 * - Relaying (access.ts): allowedNetworks or authenticated clients relay anywhere; anyone
 *   may send to `smtp.relayDomains`; open-relay tricks from others get `554 5.7.1`.
 * - Limits (limits.ts, engine.ts): connections in all / per address / per minute → `421 4.7.0`;
 *   a deadline per command and one for all of DATA → `421 4.4.2`; `maxErrors` 5xx replies →
 *   `421 4.7.0`; command lines over `maxLineLength` → `421`; more than `maxReceivedHeaders`
 *   Received headers → `554 5.4.6 Too many hops`.
 * - Content (content.ts): bare CR / bare LF normalised to CRLF or refused (`521 5.5.2`, then
 *   disconnect), NUL refused (`554 5.6.0`): no body can be read as two messages downstream.
 * - Refusals follow Postfix's wording and codes: relay denied `554 5.7.1` at RCPT, too many
 *   recipients `452 4.5.3`, too big `552 5.3.4`.
 * - At end of DATA the message gets a `Received:` header (RFC 5321 §4.4) and is handed, as
 *   one buffer with its envelope, to the `Acceptor`; its answer (250 with the queue id, or
 *   the 4xx it throws) is what the client sees. Nothing else in the message is changed
 *   (except bare line ends, in normalize mode).
 * - A failure inside our code answers 451 4.3.0; it never crashes the process. Bodies,
 *   passwords and AUTH blobs are never logged.
 * - Bodies held at once (being received or accepted) are bounded by `smtp.maxBytesInFlight`
 *   (budget.ts): past it, new bodies wait and are not read, so TCP holds their clients back.
 *   A body is built in memory shared with the spool's writer thread (no copy on the way).
 * - Graceful stop (`drain`): the listener stays open but new clients and new transactions get
 *   `421 4.3.2 Service shutting down`; messages being received or accepted finish (250 or
 *   4xx); past the deadline, uploads still running are cut off (never accepted).
 */
import type { SMTPServerAuthentication, SMTPServerAuthenticationResponse, SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import type { Logger } from 'pino';
import { reply, SmtpReply, HangUp } from '../base/replies.js';
import { newQueueId } from '../base/ids.js';
import { Parts } from '../base/buffers.js';
import { listenOn, type HostPort } from '../base/net.js';
import { addAcceptHandles, type AcceptHandles } from '../base/accept.js';
import { rfc5322Date, type InboundMessage } from '../base/message.js';
import { noMetrics, type RelayMetrics } from '../base/metrics.js';
import type { NetworkList } from './networks.js';
import { HardenedServer, type HardenedConnection, type RawAddress, type Refusal, type ServerSettings } from './engine.js';
import { RelayPolicy } from './access.js';
import { ConnectionLimiter, type ConnectionLimits } from './limits.js';
import { Authenticator, AuthThrottle, type AuthSettings } from './auth.js';
import { ContentFilter, type BareLineEndings } from './content.js';
import { BodyBudget, type BudgetTicket } from './budget.js';
import { monotonicMs } from '../base/clock.js';

/** Takes responsibility for a message; resolves with the 250 text or throws an SmtpReply. */
export interface Acceptor {
  accept(m: InboundMessage): Promise<string>;
}

/** What a config reload may change on a running listener (applies to new sessions and commands). */
export interface SmtpSettings {
  hostname: string;
  maxMessageSize: number;
  maxRecipients: number;
  socketTimeoutMs: number;
  allowedNetworks: NetworkList;
  /** STARTTLS certificate and key, read by the caller (which validated them) */
  tls?: { cert: Buffer; key: Buffer };
  requireTLS: boolean;
  relayDomains: string[];
  bareLineEndings: BareLineEndings;
  auth?: AuthSettings;
  limits: SmtpLimits;
}

export interface SmtpListenerOptions extends SmtpSettings {
  /** bytes of message bodies held at once, being received or accepted (budget.ts; restart to change) */
  maxBytesInFlight: number;
  acceptor: Acceptor;
  log: Logger;
  metrics?: Pick<RelayMetrics, 'refused'>;
}

export interface SmtpLimits extends ConnectionLimits {
  commandTimeoutMs: number;
  dataTimeoutMs: number;
  maxLineLength: number;
  maxErrors: number;
  maxReceivedHeaders: number;
}

// commands a client may use before STARTTLS when TLS is required (RFC 3207 §4)
const BEFORE_TLS = new Set(['EHLO', 'HELO', 'STARTTLS', 'NOOP', 'RSET', 'QUIT']);
// sendmail jokes and proxy commands smtp-server implements; none has a use here
const ALWAYS_DISABLED = ['WIZ', 'SHELL', 'KILL', 'XCLIENT', 'XFORWARD'];
/** listening copies besides the listener itself: up to 4 connections accepted per event-loop turn */
const EXTRA_ACCEPT_HANDLES = 3;

export function receivedHeader(
  o: { hostname: string },
  s: { helo: string; address: string; protocol: string; id: string; recipients: string[] },
  when: Date,
): string {
  const from = `from ${s.helo || 'unknown'} (unknown [${s.address}])`;
  const forClause = s.recipients.length === 1 ? `\r\n\tfor <${s.recipients[0]}>` : '';
  // the date as Postfix writes it, e.g. "Thu, 26 Nov 2026 08:30:52 +0000 (UTC)"
  return `Received: ${from}\r\n\tby ${o.hostname} (shadowrelay) with ${s.protocol} id ${s.id}${forClause}; ${rfc5322Date(when)} (UTC)\r\n`;
}

/** The commands disabled for every session (AUTH too when it is not configured). */
function disabledCommands(s: Pick<SmtpSettings, 'auth'>): string[] {
  return [...ALWAYS_DISABLED, ...(s.auth ? [] : ['AUTH'])];
}

/** The smtp-server options that follow our settings (at start and on reload). */
function serverSettings(s: SmtpSettings): ServerSettings {
  return {
    name: s.hostname,
    size: s.maxMessageSize,
    maxRecipients: s.maxRecipients,
    socketTimeout: s.socketTimeoutMs,
    maxCommandLength: s.limits.maxLineLength,
    disabledCommands: disabledCommands(s),
    hideSTARTTLS: !s.tls,
    tls: s.tls,
  };
}

export class SmtpListener {
  private readonly server: HardenedServer;
  private readonly bodyBudget: BodyBudget;
  private draining = false;
  private started = false;
  private accepts: AcceptHandles | undefined;
  /** sessions whose DATA is being received (or waits for the body budget) / whose message is being accepted */
  private readonly receiving = new Set<string>();
  private readonly accepting = new Set<string>();
  private readonly metrics: Pick<RelayMetrics, 'refused'>;
  // policy state below is replaced by reload(); the limiter and the AUTH lockouts carry over
  private readonly limiter: ConnectionLimiter;
  private relay: RelayPolicy;
  private authenticator: Authenticator | undefined;
  private throttle: AuthThrottle | undefined;
  private disabled: string[];

  constructor(private readonly o: SmtpListenerOptions) {
    this.bodyBudget = new BodyBudget(o.maxBytesInFlight);
    this.metrics = o.metrics ?? noMetrics;
    this.limiter = new ConnectionLimiter(o.limits);
    this.relay = new RelayPolicy(o.relayDomains);
    if (o.auth) {
      this.authenticator = new Authenticator(o.auth.users);
      this.throttle = new AuthThrottle(o.auth);
    }
    this.disabled = disabledCommands(o);
    const self = this; // the engine reads these per command, so a reload applies at once
    this.server = new HardenedServer(
      serverSettings(o),
      {
        banner: 'shadowrelay',
        rejectOversized: true,
        hideENHANCEDSTATUSCODES: false,
        authMethods: ['PLAIN', 'LOGIN'],
        // whether AUTH may run without TLS is decided by gate() (allowedNetworks only)
        allowInsecureAuth: true,
        authOptional: true,
        disableReverseLookup: true,
        logger: false,
        onConnect: (session, cb) => this.onConnect(session, cb),
        onMailFrom: (_addr, _session, cb) => (this.draining ? cb(reply(421, '4.3.2', 'Service shutting down')) : cb()),
        onSecure: (_sock, session, cb) => {
          // AUTH is offered from here on (the EHLO after STARTTLS lists it)
          if (this.o.auth) session.disabledCommands = this.disabled;
          cb();
        },
        onClose: (session) => {
          this.limiter.release(session.id, session.remoteAddress);
          o.log.info({ session: session.id, client: session.remoteAddress }, 'disconnect');
        },
        onAuth: (auth, session, cb) => this.onAuth(auth, session, cb),
        onRcptTo: (addr, session, cb) => this.onRcptTo(addr as RawAddress, session, cb),
        onData: (stream, session, cb) => this.onData(stream, session, cb),
      },
      {
        get hostname() {
          return self.o.hostname;
        },
        get commandTimeoutMs() {
          return self.o.limits.commandTimeoutMs;
        },
        get maxErrors() {
          return self.o.limits.maxErrors;
        },
        gate: (conn, command) => this.gate(conn, command),
      },
    );
    this.server.on('error', (err) => o.log.warn({ err: err.message }, 'smtp: connection error'));
  }

  private permitted(session: SMTPServerSession): boolean {
    return !!session.user || this.o.allowedNetworks.contains(session.remoteAddress);
  }

  private onConnect(session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const address = session.remoteAddress;
    const allowed = this.o.allowedNetworks.contains(address);
    const refused = this.limiter.admit(session.id, address, allowed);
    this.o.log.info({ session: session.id, client: address }, 'connect');
    // graceful stop: the listener stays open so clients learn why
    if (this.draining) return cb(reply(421, '4.3.2', 'Service shutting down'));
    if (refused) {
      this.metrics.refused('connection_limit');
      this.o.log.warn({ client: address, reason: refused, connections: this.limiter.connections }, 'smtp: connection refused');
      const text = refused === 'too many connections' ? 'Error: too many connections' : `Error: too many connections from ${address}`;
      return cb(reply(421, '4.7.0', `${this.o.hostname} ${text}`));
    }
    if (!allowed && this.throttle?.locked(address)) {
      this.metrics.refused('auth_lockout');
      this.o.log.warn({ client: address }, 'smtp: connection refused (AUTH lockout)');
      return cb(reply(421, '4.7.0', `${this.o.hostname} Error: too many failed authentication attempts, try again later`));
    }
    // no AUTH in the EHLO reply before TLS, except for allowed networks
    if (this.o.auth && (!allowed || this.o.requireTLS)) session.disabledCommands = [...this.disabled, 'AUTH'];
    cb();
  }

  private gate(conn: HardenedConnection, command: string): Refusal | null {
    if (this.o.requireTLS && !conn.secure && !BEFORE_TLS.has(command)) {
      return { code: 530, text: '5.7.0 Must issue a STARTTLS command first' };
    }
    if (command !== 'AUTH') return null;
    const address = conn.remoteAddress;
    if (!this.o.auth) return { code: 503, text: '5.5.1 Error: authentication not enabled' };
    if (this.throttle!.locked(address)) {
      return { code: 421, text: `4.7.0 ${this.o.hostname} Error: too many failed authentication attempts, try again later`, close: true };
    }
    if (!conn.secure && !this.o.allowedNetworks.contains(address)) return { code: 530, text: '5.7.0 Must issue a STARTTLS command first' };
    return null;
  }

  private onAuth(
    auth: SMTPServerAuthentication,
    session: SMTPServerSession,
    cb: (err: Error | null | undefined, response?: SMTPServerAuthenticationResponse) => void,
  ): void {
    const client = session.remoteAddress;
    const username = auth.username ?? '';
    this.authenticator!.verify(username, auth.password ?? '').then(
      (ok) => {
        if (ok) {
          this.o.log.info({ client, user: username, method: auth.method }, 'smtp: authenticated');
          return cb(null, { user: username });
        }
        const lockedOut = this.throttle!.fail(client);
        this.metrics.refused(lockedOut ? 'auth_lockout' : 'auth_failed');
        this.o.log.warn({ client, user: username, method: auth.method, lockedOut }, 'smtp: authentication failed');
        // the delay is what makes guessing slow; the lockout is what makes it stop
        setTimeout(() => {
          if (lockedOut) return cb(reply(421, '4.7.0', `${this.o.hostname} Error: too many failed authentication attempts, try again later`));
          cb(reply(535, '5.7.8', 'Error: authentication failed'));
        }, this.o.auth!.failureDelayMs).unref();
      },
      (err: Error) => {
        this.o.log.error({ client, err: err.message }, 'smtp: authentication error');
        cb(reply(454, '4.7.0', 'Temporary authentication failure'));
      },
    );
  }

  private onRcptTo(addr: RawAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const refusal = this.relay.check(addr.rawPath ?? addr.address, addr.address, this.permitted(session));
    if (refusal) {
      this.metrics.refused('relay_denied');
      this.o.log.info({ session: session.id, client: session.remoteAddress, rcpt: addr.address, reason: refusal }, 'relay access denied');
      return cb(reply(554, '5.7.1', `<${addr.address}>: Relay access denied`));
    }
    cb();
  }

  async listen(at: HostPort): Promise<HostPort> {
    const addr = await listenOn(this.server.server, at.host, at.port);
    // a connection per message: more than one accept per event-loop turn (base/accept.ts)
    this.accepts = await addAcceptHandles(this.server.server, EXTRA_ACCEPT_HANDLES, { allowHalfOpen: true });
    if (this.accepts.reason) this.o.log.warn({ reason: this.accepts.reason }, 'smtp: one connection accepted per event-loop turn');
    this.started = true;
    return addr;
  }

  /** The listener has been started (readiness: it stays true while it drains). */
  get isStarted(): boolean {
    return this.started;
  }

  private onData(
    stream: SMTPServerDataStream,
    session: SMTPServerSession,
    callback: (err?: Error | null, message?: string) => void,
  ): void {
    const sid = session.id;
    this.receiving.add(sid);
    stream.once('close', () => this.receiving.delete(sid));
    // the body is read only once the budget admits it (until then TCP holds the client back)
    const args = session.envelope.mailFrom ? (session.envelope.mailFrom.args as Record<string, string> | false) : false;
    void this.bodyBudget.enter(Number(args && args.SIZE) || undefined).then((ticket) => {
      if (stream.destroyed) return ticket.release(); // the client left while it waited
      this.readBody(stream, session, callback, ticket);
    });
  }

  private readBody(
    stream: SMTPServerDataStream,
    session: SMTPServerSession,
    callback: (err?: Error | null, message?: string) => void,
    ticket: BudgetTicket,
  ): void {
    const conn = this.server.connectionOf(session);
    const filter = new ContentFilter(this.o.bareLineEndings, this.o.limits.maxReceivedHeaders);
    const chunks: Buffer[] = [];
    const sid = session.id;
    let settled = false;
    const cb = (err?: Error | null, message?: string) => {
      this.receiving.delete(sid);
      if (settled) return;
      settled = true;
      clearTimeout(deadline);
      ticket.release();
      callback(err, message);
    };
    // slowloris in DATA: the whole message must arrive within dataTimeoutMs
    const deadline = setTimeout(() => {
      this.metrics.refused('timeout');
      this.o.log.warn({ client: session.remoteAddress, bytes: filter.size }, 'smtp: DATA timeout');
      conn?.hangUp(421, `4.4.2 ${this.o.hostname} Error: timeout exceeded`);
      stream.resume();
      cb(reply(421, '4.4.2', `${this.o.hostname} Error: timeout exceeded`));
    }, this.o.limits.dataTimeoutMs);
    deadline.unref();
    const keep = (b: Buffer) => {
      // past the limit, keep reading (the client must get its 552) but stop storing
      if (b.length && filter.size <= this.o.maxMessageSize) chunks.push(b);
      if (filter.violation === 'bare LF' || filter.violation === 'bare CR') {
        // Postfix's smtpd_forbid_bare_newline = reject: answer and hang up right away
        this.metrics.refused('bare_newline');
        this.o.log.warn({ session: session.id, client: session.remoteAddress, violation: filter.violation }, 'smtp: refused message content');
        conn?.hangUp(521, `5.5.2 ${this.o.hostname} Error: ${filter.violation === 'bare LF' ? 'bare <LF>' : 'bare <CR>'} received`);
        stream.resume();
        cb(reply(521, '5.5.2', 'Error: bare line ending received'));
      }
    };
    let ended = false;
    stream.on('data', (c: Buffer) => {
      keep(filter.push(c));
      if (!ticket.add(c.length)) {
        stream.pause();
        ticket.resume(() => stream.resume());
      }
    });
    stream.once('close', () => ended || ticket.release());
    stream.once('error', (err) => cb(reply(451, '4.3.0', `Error: ${err.message}`)));
    stream.once('end', () => {
      ended = true;
      ticket.received();
      this.receiving.delete(sid);
      keep(filter.end());
      if (settled) return;
      if (stream.sizeExceeded || filter.size > this.o.maxMessageSize) {
        this.metrics.refused('too_big');
        this.o.log.info({ session: session.id, client: session.remoteAddress, size: filter.size }, 'refused: message too big');
        return cb(reply(552, '5.3.4', 'Message size exceeds fixed limit'));
      }
      if (filter.violation === 'NUL') {
        this.metrics.refused('nul');
        this.o.log.warn({ client: session.remoteAddress }, 'smtp: refused message content (NUL)');
        return cb(reply(554, '5.6.0', 'Error: message content rejected: NUL character'));
      }
      if (filter.violation === 'too many hops') {
        this.metrics.refused('mail_loop');
        this.o.log.warn({ client: session.remoteAddress, received: filter.receivedHeaders }, 'smtp: refused message (mail loop)');
        return cb(reply(554, '5.4.6', 'Too many hops'));
      }
      this.accept(session, chunks, cb);
    });
  }

  private accept(session: SMTPServerSession, chunks: Buffer[], cb: (err?: Error | null, message?: string) => void): void {
    const now = new Date();
    const id = newQueueId(now.getTime());
    const recipients = session.envelope.rcptTo.map((r) => r.address);
    const sender = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    const helo = session.hostNameAppearsAs || '';
    const received = receivedHeader(
      this.o,
      { helo, address: session.remoteAddress, protocol: session.transmissionType, id, recipients },
      now,
    );
    // the pieces as received (views of the socket's reads): each consumer copies them once (buffers.ts)
    const body = new Parts([Buffer.from(received, 'latin1'), ...chunks]);
    // ties the session's connect line to the queue id (Postfix: "ID: client=...")
    const env = session.envelope;
    this.o.log.info(
      { id, session: session.id, client: session.remoteAddress, helo, tls: !!session.secure, body: env.bodyType, smtputf8: !!env.smtpUtf8 },
      'client',
    );
    const sid = session.id;
    this.accepting.add(sid);
    this.o.acceptor
      .accept({ id, sender, recipients, body, receivedAt: now.getTime(), client: { address: session.remoteAddress, helo } })
      .then(
        (text) => cb(null, text),
        (err: unknown) => {
          if (err instanceof SmtpReply) return cb(err);
          if (err instanceof HangUp) return this.server.connectionOf(session)?.disconnect();
          this.o.log.error({ id, err }, 'accept failed unexpectedly');
          this.metrics.refused('internal');
          cb(reply(451, '4.3.0', 'Error: queue file write error'));
        },
      )
      .finally(() => this.accepting.delete(sid));
  }

  /**
   * Graceful stop: refuse new clients and transactions with 421 4.3.2, let messages being
   * received finish until `deadlineMs`, then cut off the rest. A message already being
   * accepted always gets its answer first (that wait is bounded by shadow.timeoutMs), so no
   * client sees 421 for a message that was queued. Then the listener closes.
   */
  async drain(deadlineMs: number): Promise<void> {
    await this.stopAccepting(deadlineMs);
    await this.close();
  }

  /**
   * The first half of a graceful stop, also used by a drain: 421 4.3.2 to new clients and
   * transactions, messages being received may finish until `deadlineMs`, every message being
   * accepted gets its answer; the listener stays open (answering 421).
   */
  async stopAccepting(deadlineMs: number): Promise<void> {
    this.draining = true;
    const until = async (cond: () => boolean, ms: number) => {
      const end = monotonicMs() + ms;
      while (!cond() && monotonicMs() < end) await new Promise((r) => setTimeout(r, 20));
    };
    await until(() => this.receiving.size === 0 && this.accepting.size === 0, deadlineMs);
    const shut = () => {
      for (const c of this.server.openConnections()) if (!this.accepting.has(c.session.id)) c.send(421, '4.3.2 Service shutting down');
    };
    shut();
    await until(() => this.accepting.size === 0, Number.POSITIVE_INFINITY);
    shut();
  }

  /**
   * Live change (config reload). smtp-server reads its options per session, our policy per
   * command, so new sessions and commands see the change; sessions already open keep what
   * they negotiated. Connection counts and AUTH lockouts carry over. The caller reads and
   * validates the TLS files first, so a bad file never half-applies.
   */
  reload(s: SmtpSettings): void {
    this.limiter.setLimits(s.limits);
    this.relay = new RelayPolicy(s.relayDomains);
    this.authenticator = s.auth ? new Authenticator(s.auth.users) : undefined;
    this.throttle = s.auth ? (this.throttle ?? new AuthThrottle(s.auth)).withSettings(s.auth) : undefined;
    this.disabled = disabledCommands(s);
    this.server.applySettings(serverSettings(s));
    Object.assign(this.o, s);
  }

  /** Stops accepting connections; open sessions are closed by smtp-server's close logic. */
  async close(): Promise<void> {
    await this.accepts?.close();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
