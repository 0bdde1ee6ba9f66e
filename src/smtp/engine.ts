/**
 * smtp-server (3.21.x) with the few hooks it lacks, as subclasses rather than patches:
 * - a command deadline: after each reply the client has `commandTimeoutMs` to deliver its next
 *   complete command, however it trickles the bytes (smtp-server's own idle timeout restarts
 *   on every byte, so a one-byte-a-second client would never hit it);
 * - an error budget: after `maxErrors` 5xx replies the client gets Postfix's
 *   `421 4.7.0 <host> Error: too many errors` and is disconnected;
 * - a gate run before each command (requireTLS, AUTH only after TLS, AUTH lockout);
 * - the raw path of MAIL/RCPT as the client wrote it (smtp-server strips source routes before
 *   our onRcptTo sees the address, and the relay check needs to see them);
 * - quoted local parts (`"a@b"@c`), which smtp-server's parser refuses as a syntax error,
 *   are parsed, so that the relay policy — not a 501 — decides on them;
 * - `hangUp()`: reply and disconnect at once (bare LF in reject mode, DATA deadline);
 * - replies whose text starts with an enhanced status code (base/replies.ts) are sent as they
 *   are: smtp-server would prefix a second code derived from the numeric one;
 * - the server offers what the listener needs of it: its open connections (graceful stop)
 *   and applying new settings to the sessions that start from now on (config reload);
 * - replies still go out after the client half-closed: Exim pipelines QUIT behind the final
 *   dot and sends its FIN at once; with Node's default the socket ended our side too and the
 *   250 was lost (the client then sent the message again — a duplicate), and smtp-server writes
 *   only to an 'open' socket. So sockets are half-open, replies are written to a 'writeOnly'
 *   one, and once everything the client sent before its FIN is answered, the connection closes;
 * - the DATA scan by `Buffer.indexOf` instead of a loop over every byte, and a continuation
 *   that a pipelined second message cannot lose (data-stream.ts);
 * - the 220 greeting at once: smtp-server holds every connection 100 ms before it (an
 *   "early talker" check for public MX hosts; Postfix keeps it in postscreen, not smtpd). A
 *   sender opening one connection per message paid it every time: 20 such sessions could not
 *   pass ~190 msg/s, a serial one took 107 ms a message instead of ~3.
 * Each overridden member is part of smtp-server's typed surface (its .d.ts); the tests in
 * test/security.test.ts pin the behaviour, so a smtp-server upgrade that changes it fails them.
 */
import { SMTPServer, type SMTPServerOptions, type SMTPServerSession, type SMTPServerAddress } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import type net from 'node:net';
import type tls from 'node:tls';
import { hasEnhancedCode } from '../base/replies.js';
import { FastDataStream } from './data-stream.js';

export interface Refusal {
  code: number;
  /** reply text starting with the enhanced code, e.g. "5.7.0 Must issue a STARTTLS command first" */
  text: string;
  close?: boolean;
}

export interface EngineHooks {
  hostname: string;
  commandTimeoutMs: number;
  maxErrors: number;
  /** checked before each command (not AUTH continuation lines); a refusal replaces the command */
  gate(conn: HardenedConnection, command: string): Refusal | null;
}

/** One reply as smtp-server words it: `code[-| ]enhanced text`, control characters blanked. */
function formatReply(code: number, enhanced: string, data?: string | string[] | null): string {
  // eslint-disable-next-line no-control-regex
  const clean = (l: string | null | undefined) => (l ?? '').toString().replace(/[\x00-\x1f\x7f]/g, ' ');
  const prefix = enhanced ? `${enhanced} ` : '';
  if (Array.isArray(data)) return data.map((l, i, all) => `${code}${i < all.length - 1 ? '-' : ' '}${prefix}${clean(l)}`).join('\r\n');
  return [String(code), enhanced, data ? clean(data) : ''].filter(Boolean).join(' ');
}

/** The address smtp-server parsed, plus the path exactly as the client wrote it. */
export interface RawAddress extends SMTPServerAddress {
  rawPath?: string;
}

const PATH_RE = /^[^:]*:\s*<([^<>]*)>/;
// a quoted local part: "..." with escaped pairs, followed by @
const QUOTED_RE = /<((?:@[^:<>]*:)?)("(?:[^"\\\r\n]|\\[\x20-\x7e])*")@/;

export class HardenedConnection extends SMTPConnection {
  private cmdTimer: NodeJS.Timeout | undefined;
  private errors = 0;

  constructor(
    server: HardenedServer,
    socket: net.Socket | tls.TLSSocket,
    options: ConstructorParameters<typeof SMTPConnection>[2],
    private readonly hooks: EngineHooks,
  ) {
    super(server, socket, options);
  }

  override init(): void {
    // smtp-server's init() minus `setTimeout(() => this.connectionReady(), 100)`
    this._setListeners(() => {
      const max = this._server.options.maxClients;
      if (max && this._server.connections.size > max) {
        return this.send(421, this.name + ' Too many connected clients, try again in a moment', false);
      }
      this.connectionReady();
    });
  }

  override send(code: number, data?: string | string[] | null, context?: string | false): void {
    this.write(code, data, context);
    if (this._closing || this._closed) return this.stopDeadline();
    if (code === 354) this.stopDeadline(); // DATA has its own deadline (see SmtpListener)
    else this.startDeadline();
    if (code >= 500 && ++this.errors >= this.hooks.maxErrors) {
      this.hangUp(421, `4.7.0 ${this.hooks.hostname} Error: too many errors`);
    }
  }

  override _onCommand(command: Buffer, callback?: () => void): void {
    this.stopDeadline();
    if (!this._nextHandler && this._ready && !this._upgrading && !this._closing) {
      const name = command.toString('latin1').split(' ')[0]!.trim().toUpperCase();
      const refusal = this.hooks.gate(this, name);
      if (refusal) {
        if (refusal.close) return this.hangUp(refusal.code, refusal.text);
        this.send(refusal.code, refusal.text);
        const next = callback ?? (() => false);
        setImmediate(() => this._whenWritable(next));
        return;
      }
    }
    super._onCommand(command, callback);
  }

  override _parseAddressCommand(rawName: string, rawCommand: Buffer | string): RawAddress | false {
    const text = rawCommand.toString();
    const rawPath = PATH_RE.exec(text)?.[1];
    const q = QUOTED_RE.exec(text);
    let parsed: RawAddress | false;
    if (q) {
      const quoted = q[2]!;
      // stand-in token so that smtp-server checks everything else (domain, params) as usual
      const token = `q${Math.random().toString(36).slice(2)}x`;
      parsed = super._parseAddressCommand(rawName, text.replace(`<${q[1]}${quoted}@`, `<${q[1]}${token}@`));
      if (parsed && parsed.address) parsed.address = parsed.address.replace(token, quoted);
    } else {
      parsed = super._parseAddressCommand(rawName, text);
    }
    if (parsed && rawPath !== undefined) parsed.rawPath = rawPath;
    return parsed;
  }

  override _onClose(): void {
    this.stopDeadline();
    super._onClose();
  }

  /** Sends a final reply and disconnects; nothing the client sends afterwards is read. */
  hangUp(code: number, text: string): void {
    this.stopDeadline();
    if (this._closing || this._closed) return;
    this.write(code, text);
    this.close();
  }

  /** Closes without any reply (the transaction's outcome is unknown: the client retries). */
  disconnect(): void {
    this.stopDeadline();
    if (this._closing || this._closed) return;
    this.close();
  }

  /**
   * smtp-server's send, except that text carrying its own enhanced code gets no second one,
   * and that a reply still goes out once the client has half-closed (see the summary).
   */
  private write(code: number, data?: string | string[] | null, context?: string | false): void {
    const ctx = typeof data === 'string' && hasEnhancedCode(data) ? false : context;
    const s = this._socket;
    if (s.readyState === 'writeOnly' && !this._upgrading && !s.destroyed) {
      const payload = formatReply(code, this._getEnhancedStatusCode(code, ctx), data);
      if (code >= 400) this.session.error = payload;
      s.write(payload + '\r\n');
      if (code === 421) this.close();
      return;
    }
    super.send(code, data, ctx);
  }

  override _createParser(): ReturnType<SMTPConnection['_createParser']> {
    // as smtp-server's, with our parser class (data-stream.ts)
    const parser = new FastDataStream({ maxCommandLength: this._server.options.maxCommandLength });
    parser.oncommand = (command, callback) => this._onCommand(command, callback);
    parser.on('error', (err: Error) => this.send(421, 'Error: ' + err.message));
    // the parser finishes when the client's FIN ended it and every command it sent before
    // (a pipelined QUIT included) was handled: nothing more can come, so close
    parser.once('finish', () => {
      if (!this._closing && !this._closed) this.close();
    });
    return parser;
  }

  private startDeadline(): void {
    clearTimeout(this.cmdTimer);
    this.cmdTimer = setTimeout(() => this.hangUp(421, `4.4.2 ${this.hooks.hostname} Error: timeout exceeded`), this.hooks.commandTimeoutMs);
    this.cmdTimer.unref();
  }

  private stopDeadline(): void {
    clearTimeout(this.cmdTimer);
    this.cmdTimer = undefined;
  }
}

/** smtp-server options a running server may change (it reads them for each new session). */
export interface ServerSettings {
  name: string;
  size: number;
  maxRecipients: number;
  socketTimeout: number;
  maxCommandLength: number;
  disabledCommands: string[];
  hideSTARTTLS: boolean;
  /** STARTTLS certificate and key (TLS 1.2 and later only) */
  tls?: { cert: Buffer; key: Buffer };
}

/** smtp-server's TLS options for our certificate: TLS 1.2+ only (its own default still allows 1.0). */
function tlsOptions(t: { cert: Buffer; key: Buffer }) {
  return { key: t.key, cert: t.cert, minVersion: 'TLSv1.2' as const };
}

export class HardenedServer extends SMTPServer {
  private readonly bySession = new Map<string, HardenedConnection>();

  constructor(
    settings: ServerSettings,
    options: Omit<SMTPServerOptions, keyof ServerSettings | 'key' | 'cert'>,
    private readonly hooks: EngineHooks,
  ) {
    const { tls, ...live } = settings;
    // half-open sockets: a client's FIN must not end our side before its replies are out
    // (the TLS socket of STARTTLS takes the setting from the socket it wraps)
    super({ ...options, ...live, ...(tls ? tlsOptions(tls) : {}), allowHalfOpen: true } as SMTPServerOptions);
  }

  /** New settings for the sessions that start from now on; open ones keep what they have. */
  applySettings(settings: ServerSettings): void {
    const { tls, ...live } = settings;
    Object.assign(this.options, live);
    if (tls) this.updateSecureContext(tlsOptions(tls));
  }

  /** The sessions open now. */
  openConnections(): HardenedConnection[] {
    return [...this.connections].filter((c): c is HardenedConnection => c instanceof HardenedConnection);
  }

  override connect(socket: net.Socket | tls.TLSSocket, socketOptions?: ConstructorParameters<typeof SMTPConnection>[2]): void {
    // as SMTPServer.connect, with our connection class
    const connection = new HardenedConnection(this, socket, socketOptions, this.hooks);
    this.connections.add(connection);
    this.bySession.set(connection.id, connection);
    socket.once('close', () => this.bySession.delete(connection.id));
    connection.on('error', (err: Error) => this._onError(err));
    connection.on('connect', (data) => this._onClientConnect(data));
    connection.init();
  }

  /** The live connection of a session (sessions and connections share their id). */
  connectionOf(session: SMTPServerSession): HardenedConnection | undefined {
    return this.bySession.get(session.id);
  }
}
