/**
 * Test helpers: real parts only — temp dirs with real SQLite files, real certificates,
 * real SMTP servers and clients on 127.0.0.1, real relays started through the composition
 * root (in-process) or as child processes (`node dist/cli.js start`).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import nodemailer, { type TransportOptions } from 'nodemailer';
import pino from 'pino';
import Database from 'better-sqlite3';
import { loadConfig } from '../../src/config/index.js';
import { Relay } from '../../src/relay.js';
import type { MetricName } from '../../src/ops/metrics.js';
import { Sink } from '../../tools/sink.js';
import { writePairConfigs, type PairFiles } from '../../tools/pair.js';
import { waitFor } from '../../tools/wait.js';
import { freePort } from '../../tools/net.js';

export { waitFor } from '../../tools/wait.js';
export { freePort } from '../../tools/net.js';
export { Sink } from '../../tools/sink.js';

export const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..');
export const CLI = path.join(ROOT, 'dist', 'cli.js');
/** the tools' command line (demo, sink), as `npm run build` makes it */
export const TOOLS_CLI = path.join(ROOT, 'dist-tools', 'tools', 'cli.js');

/**
 * Counts turns of this process's event loop (a check-phase callback that re-arms itself), so a
 * test can say "in the same turn" instead of "within N ms". `stop` ends the count.
 */
export function countTurns(): { now(): number; stop(): void } {
  let turn = 0;
  let on = true;
  const tick = () => {
    turn++;
    if (on) setImmediate(tick);
  };
  setImmediate(tick);
  return { now: () => turn, stop: () => (on = false) };
}

export function tmpDir(prefix = 'sr-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A logger that keeps lines in memory (tests can look at what was logged). */
export function memoryLogger(node: string) {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino(
    { level: 'debug', base: { node } },
    {
      write(s: string) {
        lines.push(JSON.parse(s) as Record<string, unknown>);
      },
    },
  );
  return { log, lines };
}

export interface Pair {
  a: Relay;
  b: Relay;
  sink: Sink;
  files: PairFiles;
  dir: string;
  logs: Record<string, Array<Record<string, unknown>>>;
  start(name: 'relay-a' | 'relay-b'): Promise<Relay>;
  /** with `sinkDown`: the next hop starts listening now (on the port the configs name) */
  openSink(): Promise<void>;
  stop(): Promise<void>;
}

export async function startPair(
  overrides: Record<string, unknown> = {},
  nodeOverrides: Record<string, Record<string, unknown>> = {},
  opts: { sinkDown?: boolean } = {},
): Promise<Pair> {
  const { dir, cleanup } = tmpDir();
  const sink = new Sink();
  // a next hop that is down: the configs name a port nothing listens on yet
  const sinkPort = opts.sinkDown ? await freePort() : await sink.listen();
  let sinkOpen = !opts.sinkDown;
  const files = await writePairConfigs({ dir, sinkPort, overrides, nodeOverrides });
  const logs: Record<string, Array<Record<string, unknown>>> = {};
  const running = new Map<string, Relay>();
  const start = async (name: string) => {
    const { log, lines } = memoryLogger(name);
    logs[name] = lines;
    const r = await Relay.start(loadConfig(files.configs[name]!), { log });
    running.set(name, r);
    return r;
  };
  const stop = async () => {
    await Promise.all([...running.values()].map((r) => r.stop()));
    if (sinkOpen) await sink.close();
    cleanup();
  };
  // the replication ports were picked before the nodes bind them (freePort: outside the
  // ephemeral range, a slice per test worker, so no other test takes them meanwhile)
  let a: Relay;
  let b: Relay;
  try {
    b = await start('relay-b');
    a = await start('relay-a');
    await waitFor(() => a.shadow.anyPeerUp() && b.shadow.anyPeerUp(), 10000, 'peers up');
  } catch (e) {
    // a pair that does not come up leaves no node, sink or folder behind (the test never gets it to stop)
    await stop();
    throw e;
  }
  const pair: Pair = {
    a,
    b,
    sink,
    files,
    dir,
    logs,
    start: async (name) => {
      const r = await start(name);
      if (name === 'relay-a') pair.a = r;
      else pair.b = r;
      return r;
    },
    openSink: async () => {
      await sink.listen(sinkPort);
      sinkOpen = true;
    },
    stop,
  };
  return pair;
}

export interface SendResult {
  code: number;
  response: string;
}

/** Sends through a relay with nodemailer; resolves with the final reply (success or error). */
export async function send(
  port: number,
  o: {
    from?: string;
    to?: string[];
    raw?: string | Buffer;
    localAddress?: string;
    /** merged into the nodemailer transport options (STARTTLS, AUTH, …) */
    transport?: Record<string, unknown>;
  } = {},
): Promise<SendResult> {
  const t = nodemailer.createTransport({
    host: '127.0.0.1',
    port,
    secure: false,
    ignoreTLS: true,
    localAddress: o.localAddress,
    connectionTimeout: 20000,
    socketTimeout: 60000,
    ...o.transport,
  } as TransportOptions);
  const to = o.to ?? ['bob@example.test'];
  try {
    const info = (await t.sendMail({
      envelope: { from: o.from ?? 'alice@example.test', to },
      raw: o.raw ?? `From: alice@example.test\r\nTo: ${to.join(', ')}\r\nSubject: test\r\nMessage-ID: <${Math.random()}@test>\r\n\r\nhello\r\n`,
    })) as { response: string };
    return { code: Number(info.response.slice(0, 3)), response: info.response };
  } catch (e) {
    const err = e as { responseCode?: number; response?: string; message: string; rejectedErrors?: Array<{ response?: string; responseCode?: number }> };
    const first = err.rejectedErrors?.[0];
    return { code: err.responseCode ?? first?.responseCode ?? 0, response: err.response ?? first?.response ?? err.message };
  } finally {
    t.close();
  }
}

export const queueIdOf = (response: string): string => {
  const m = /queued as ([A-Z0-9]+)/.exec(response);
  if (!m) throw new Error(`no queue id in "${response}"`);
  return m[1]!;
};

/** Waits until a metric of a node's registry (summed over its series) satisfies `pred`. */
export async function waitForMetric(
  relay: Relay,
  name: MetricName,
  pred: (value: number) => boolean,
  timeoutMs: number,
  what: string,
  labels: Record<string, string> = {},
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!pred((await relay.metrics.snapshot()).value(name, labels))) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Opens a node's spool database read-only from the test, like an operator would. */
export function peekSpool(dataDir: string): {
  ids: (role?: string) => string[];
  /** rows in messages, outboxes and promotion records: 0 when the node holds and owes nothing */
  total: () => number;
  close: () => void;
} {
  const db = new Database(path.join(dataDir, 'spool.db'), { readonly: true });
  return {
    total: () =>
      (
        db
          .prepare(
            `SELECT (SELECT COUNT(*) FROM messages) + (SELECT COUNT(*) FROM outbox) + (SELECT COUNT(*) FROM outbox_rcpt)
                  + (SELECT COUNT(*) FROM promoted) AS n`,
          )
          .get() as { n: number }
      ).n,
    ids: (role?: string) =>
      (role
        ? (db.prepare('SELECT id FROM messages WHERE role=?').all(role) as Array<{ id: string }>)
        : (db.prepare('SELECT id FROM messages').all() as Array<{ id: string }>)
      ).map((r) => r.id),
    close: () => db.close(),
  };
}

/** A line-oriented raw SMTP client for tests that need byte-level control. */
export class RawSmtp {
  private buf = '';
  private waiters: Array<() => void> = [];
  closed = false;
  /** resolves when the server closed the connection */
  readonly closedP: Promise<void>;
  private onClosed!: () => void;

  private constructor(public sock: net.Socket) {
    this.closedP = new Promise((r) => (this.onClosed = r));
    this.attach(sock);
  }

  private attach(sock: net.Socket): void {
    sock.on('data', (d) => {
      this.buf += d.toString('latin1');
      for (const w of this.waiters.splice(0)) w();
    });
    sock.on('close', () => {
      this.closed = true;
      this.onClosed();
      for (const w of this.waiters.splice(0)) w();
    });
    sock.on('error', () => {});
  }

  /** Sends STARTTLS and upgrades the socket; resolves once the handshake is done. */
  async starttls(opts: tls.ConnectionOptions): Promise<void> {
    const r = await this.cmd('STARTTLS');
    if (!r?.startsWith('220')) throw new Error(`STARTTLS refused: ${r}`);
    const plain = this.sock;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    await new Promise<void>((resolve, reject) => {
      const s = tls.connect({ socket: plain, ...opts }, () => resolve());
      s.once('error', reject);
      this.sock = s;
      this.attach(s);
    });
  }

  static connect(port: number, localAddress?: string): Promise<RawSmtp> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port, localAddress }, () => resolve(new RawSmtp(s)));
      s.once('error', reject);
    });
  }

  /**
   * Connects and runs a transaction up to DATA (greeting, EHLO, MAIL, RCPT, DATA), throwing
   * on any other reply; resolves with the client ready for the message bytes.
   */
  static async openData(port: number, o: { helo?: string; from: string; to: string }): Promise<RawSmtp> {
    const c = await RawSmtp.connect(port);
    const step = async (line: string | null, want: RegExp) => {
      const r = line === null ? await c.reply() : await c.cmd(line);
      if (!r || !want.test(r)) {
        c.close();
        throw new Error(`${line ?? 'greeting'}: unexpected reply ${JSON.stringify(r)}`);
      }
    };
    await step(null, /^220 /);
    await step(`EHLO ${o.helo ?? 'client.test'}`, /^250/);
    await step(`MAIL FROM:<${o.from}>`, /^250 /);
    await step(`RCPT TO:<${o.to}>`, /^250 /);
    await step('DATA', /^354/);
    return c;
  }

  /** Next complete reply (multi-line replies joined), or null if the server closed. */
  async reply(timeoutMs = 20000): Promise<string | null> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const m = /^((?:\d{3}-[^\r\n]*\r\n)*\d{3}(?: [^\r\n]*)?\r\n)/.exec(this.buf);
      if (m) {
        this.buf = this.buf.slice(m[1]!.length);
        return m[1]!.trimEnd();
      }
      if (this.closed) return null;
      const left = end - Date.now();
      if (left <= 0) throw new Error(`no reply within ${timeoutMs} ms; buffer: ${JSON.stringify(this.buf)}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  write(s: string | Buffer): void {
    this.sock.write(s);
  }

  async cmd(line: string): Promise<string | null> {
    this.write(line + '\r\n');
    return this.reply();
  }

  close(): void {
    this.sock.destroy();
  }
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI as a child process and collects its output. */
export function runCli(args: string[], timeoutMs = 60000): Promise<RunResult> {
  return runCommand([process.execPath, CLI, ...args], timeoutMs);
}

/** Where a program is on PATH (sbin folders included), or null. */
export function which(bin: string): string | null {
  const r = spawnSync('sh', ['-c', `command -v ${bin}`], { encoding: 'utf8', env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` } });
  return r.status === 0 ? r.stdout.trim() : null;
}

/** Runs any command line to completion (killed after `timeoutMs`) and collects its output. */
export function runCommand(argv: string[], timeoutMs = 60000): Promise<RunResult> {
  return new Promise((resolve) => {
    const p = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

export interface NodeProcess {
  proc: ChildProcess;
  name: string;
  addresses: { smtp: { port: number }; shadow: { port: number }; admin: { port: number } };
  lines: Array<Record<string, unknown>>;
  exited: Promise<number | null>;
  kill(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Starts `shadowrelay start --config FILE` as a child; resolves once it logged its ports. */
export function startNodeProcess(
  configFile: string,
  name: string,
  timeoutMs = 20000,
  opts: { env?: Record<string, string> } = {},
): Promise<NodeProcess> {
  return new Promise((resolve, reject) => {
    const env = opts.env ? { ...process.env, ...opts.env } : process.env;
    const proc = spawn(process.execPath, [CLI, 'start', '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'], env });
    const lines: Array<Record<string, unknown>> = [];
    let stderr = '';
    proc.stderr!.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));
    const t = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`${name} did not start within ${timeoutMs} ms: ${stderr}`));
    }, timeoutMs);
    createInterface({ input: proc.stdout! }).on('line', (l) => {
      let j: Record<string, unknown>;
      try {
        j = JSON.parse(l) as Record<string, unknown>;
      } catch {
        return;
      }
      lines.push(j);
      if (j.msg === 'shadowrelay started') {
        clearTimeout(t);
        resolve({
          proc,
          name,
          addresses: j as unknown as NodeProcess['addresses'],
          lines,
          exited,
          kill: (signal = 'SIGKILL') => {
            if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
            return exited;
          },
        });
      }
    });
    void exited.then((code) => {
      clearTimeout(t);
      reject(new Error(`${name} exited with ${code} before starting: ${stderr}`));
    });
  });
}

/** Waits until a child node logged a line matching `pred`; resolves with that line. */
export async function waitForLine(
  node: { lines: Array<Record<string, unknown>> },
  pred: (l: Record<string, unknown>) => boolean,
  timeoutMs: number,
  what: string,
): Promise<Record<string, unknown>> {
  let found: Record<string, unknown> | undefined;
  await waitFor(() => (found = node.lines.find(pred)) !== undefined, timeoutMs, what);
  return found!;
}

export function writeFile(file: string, text: string): string {
  writeFileSync(file, text);
  return file;
}

/** Issues a certificate for `name` from a pair's own CA (the CA key is in the cert dir). */
export async function signedByPairCa(
  certDir: string,
  name: string,
  opts: { ips?: string[]; dnsNames?: string[] } = {},
): Promise<{ cert: string; key: string }> {
  await import('reflect-metadata');
  const x509 = await import('@peculiar/x509');
  const { webcrypto } = await import('node:crypto');
  const crypto = webcrypto as unknown as Crypto;
  x509.cryptoProvider.set(crypto);
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
  const caCert = new x509.X509Certificate(readFileSync(path.join(certDir, 'ca.crt'), 'utf8'));
  const caKeyPem = readFileSync(path.join(certDir, 'ca.key'), 'utf8');
  const der = Buffer.from(caKeyPem.replace(/-----[^-]+-----/g, '').replace(/\s/g, ''), 'base64');
  const caKey = await crypto.subtle.importKey('pkcs8', der, alg, false, ['sign']);
  const keys = (await crypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '0badc0de',
    subject: `CN=${name}`,
    issuer: caCert.subject,
    notBefore: new Date(Date.now() - 3600e3),
    notAfter: new Date(Date.now() + 3600e3),
    publicKey: keys.publicKey,
    signingKey: caKey,
    signingAlgorithm: alg,
    extensions: [
      new x509.SubjectAlternativeNameExtension([
        { type: 'dns', value: name },
        ...(opts.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
        ...(opts.ips ?? []).map((value) => ({ type: 'ip' as const, value })),
      ]),
    ],
  });
  const pk = Buffer.from(await crypto.subtle.exportKey('pkcs8', keys.privateKey)).toString('base64');
  return { cert: cert.toString('pem'), key: `-----BEGIN PRIVATE KEY-----\n${pk.replace(/(.{64})/g, '$1\n')}\n-----END PRIVATE KEY-----\n` };
}

/** One request to a node's admin endpoint; resolves with status and text (any status). */
export function adminHttp(
  port: number,
  path: string,
  o: { method?: string; token?: string } = {},
): Promise<{ status: number; text: string; json: () => unknown }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path, method: o.method ?? 'GET', headers: o.token ? { authorization: `Bearer ${o.token}` } : {} },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text, json: () => JSON.parse(text) as unknown }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** The value of one Prometheus sample (`name{labels}`) in an exposition text, or undefined. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have: Record<string, string> = {};
    for (const kv of (m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)) have[kv[1]!] = kv[2]!;
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return undefined;
}
