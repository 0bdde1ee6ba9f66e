/**
 * smtp-server with its greeting sent at once.
 *
 * smtp-server (3.x) holds every new connection for a fixed 100 ms before the 220 greeting, to
 * catch "early talkers" (spam software that talks before the banner — a check for a public
 * MX; Postfix keeps it in postscreen, not in smtpd). A relay for its own allowed networks
 * gains nothing from it, and a sender that opens one connection per message pays the 100 ms
 * every time: with 20 such sessions the relay could never pass ~190 msg/s, and a serial
 * sender waited 107 ms per message instead of a few. Everything else is the library's own
 * connection handling; only the pause is dropped (clients that talk before the greeting
 * still get "You talk too soon" until connectionReady has run).
 */
import type net from 'node:net';
import type tls from 'node:tls';
import { SMTPServer } from 'smtp-server';
import { SMTPConnection, type SMTPConnectionOptions } from 'smtp-server/lib/smtp-connection.js';

class PromptConnection extends SMTPConnection {
  override init(): void {
    // the library's init() minus `setTimeout(() => this.connectionReady(), 100)`
    this._setListeners(() => {
      const max = this._server.options.maxClients;
      if (max && this._server.connections.size > max) {
        return this.send(421, this.name + ' Too many connected clients, try again in a moment', false);
      }
      this.connectionReady();
    });
  }
}

export class PromptSmtpServer extends SMTPServer {
  override connect(socket: net.Socket | tls.TLSSocket, socketOptions?: SMTPConnectionOptions | null): void {
    // the library's connect(), with PromptConnection
    const connection = new PromptConnection(this, socket, socketOptions);
    this.connections.add(connection);
    connection.on('error', (err: Error) => this._onError(err));
    connection.on('connect', (data) => this._onClientConnect(data));
    connection.init();
  }
}
