/**
 * The CLI's side of the admin endpoint: one JSON request to the running daemon named by a
 * configuration file (`admin.listen`, with `admin.token` when set). A daemon that does not
 * answer is reported as such (`DaemonDown`), so the CLI can say so or fall back to reading
 * the spool file.
 */
import http from 'node:http';
import { adminToken, type ParsedConfig } from '../config/index.js';
import { formatHostPort, type HostPort } from '../base/net.js';

export class DaemonDown extends Error {
  constructor(readonly listen: HostPort, readonly reason: string) {
    super(`shadowrelay does not answer on ${formatHostPort(listen)}: is it running? (${reason})`);
    this.name = 'DaemonDown';
  }
}

export class AdminError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** the answer's JSON body, when it had one */
    readonly body?: unknown,
  ) {
    super(message);
    this.name = 'AdminError';
  }
}

/** Where to reach the admin endpoint: a wildcard listen address is reached on loopback. */
export function adminTarget(cfg: ParsedConfig): HostPort {
  const hp = cfg.admin.listen;
  const host = hp.host === '0.0.0.0' ? '127.0.0.1' : hp.host === '::' ? '::1' : hp.host;
  return { host, port: hp.port };
}

export function adminRequest<T>(cfg: ParsedConfig, method: string, path: string, timeoutMs = 30000): Promise<T> {
  const { host, port } = adminTarget(cfg);
  const token = adminToken(cfg);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host, port, method, path, timeout: timeoutMs, headers: token ? { authorization: `Bearer ${token}` } : {} },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => {
          let body: unknown = text;
          try {
            body = JSON.parse(text);
          } catch {
            /* plain text (metrics) */
          }
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) return resolve(body as T);
          const msg = typeof body === 'object' && body && 'error' in body ? String((body as { error: unknown }).error) : `HTTP ${status}`;
          reject(new AdminError(status, msg, typeof body === 'object' ? body : undefined));
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', (e: NodeJS.ErrnoException) => reject(new DaemonDown(cfg.admin.listen, e.code ?? e.message)));
    req.end();
  });
}
