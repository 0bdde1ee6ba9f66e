/**
 * The admin HTTP endpoint (loopback by default): `/healthz` answers 200 while the process
 * runs; `/readyz` answers 200 once the spool is open, the SMTP listener is up and a peer
 * answers (or the degraded policy is on), else 503 with the reasons as JSON.
 */
import http from 'node:http';

export interface Readiness {
  ready: boolean;
  reasons: string[];
}

export interface AdminOptions {
  readiness: () => Readiness;
}

export class AdminServer {
  private readonly server: http.Server;

  constructor(o: AdminOptions) {
    this.server = http.createServer((req, res) => {
      const send = (status: number, body: unknown) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body) + '\n');
      };
      const url = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET') return send(405, { error: 'method not allowed' });
      if (url === '/healthz') return send(200, { status: 'ok' });
      if (url === '/readyz') {
        const r = o.readiness();
        return send(r.ready ? 200 : 503, r.ready ? { status: 'ready' } : { status: 'not ready', reasons: r.reasons });
      }
      send(404, { error: 'not found' });
    });
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        const a = this.server.address();
        resolve({ host, port: typeof a === 'object' && a ? a.port : port });
      });
    });
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }
}
