/**
 * A Node SMTP load generator that behaves like a sending MTA: C concurrent sessions, EHLO,
 * then MAIL/RCPT/DATA sent as one pipelined group (RFC 2920) when the server offers
 * PIPELINING, the message, and the final reply. It times each message from the moment the
 * last byte of DATA (`.\r\n`) is written to the moment its final reply arrives — the accept
 * latency smtp-source cannot report. By default a new connection per message (like
 * smtp-source without -d); `reuse` keeps sessions open like a caching MTA.
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';

export interface LoadOptions {
  port: number;
  host?: string;
  sessions: number;
  /** total messages; ignored when durationMs is set */
  messages: number;
  /** keep sending until this much time has passed (the leak check) */
  durationMs?: number;
  /** payload bytes (headers not counted, like smtp-source -l) */
  size: number;
  reuse?: boolean;
  from?: string;
  to?: string;
  /** per reply */
  timeoutMs?: number;
}

export interface LoadResult {
  ok: number;
  failed: number;
  wallMs: number;
  /** accept latency of each accepted message, ms */
  latencies: number[];
  firstError: string | null;
}

const HEADERS = Buffer.from('From: <bench@loadgen.test>\r\nTo: <sink@sink.test>\r\nSubject: bench\r\nMessage-Id: <bench@loadgen.test>\r\n\r\n');

/** The payload, as smtp-source makes it: a header section, an empty line, then lines of 76 characters + CRLF, never starting with a dot. */
export function payload(size: number): Buffer {
  const line = Buffer.from('x'.repeat(76) + '\r\n');
  const buf = Buffer.alloc(size);
  for (let o = 0; o < size; o += line.length) line.copy(buf, o, 0, Math.min(line.length, size - o));
  buf.write(HEADERS.subarray(0, Math.max(0, size - 2)).toString('latin1'), 0, 'latin1');
  if (size >= 2) buf.write('\r\n', size - 2);
  return buf;
}

class Conn {
  private buf = '';
  private waiter: ((r: string | Error) => void) | null = null;
  private ended: Error | null = null;
  private timer: NodeJS.Timeout | undefined;

  private constructor(readonly sock: net.Socket, private readonly timeoutMs: number) {
    sock.setNoDelay(true);
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      this.buf += d;
      this.pump();
    });
    sock.on('error', (e) => this.fail(e));
    sock.on('close', () => this.fail(new Error('connection closed')));
  }

  static open(host: string, port: number, timeoutMs: number): Promise<Conn> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host, port }, () => {
        s.off('error', reject);
        resolve(new Conn(s, timeoutMs));
      });
      s.once('error', reject);
    });
  }

  private fail(e: Error): void {
    this.ended ??= e;
    this.pump();
  }

  private pump(): void {
    if (!this.waiter) return;
    // a complete reply: any "NNN-" lines, then one "NNN " (or bare "NNN") line
    const m = /^(?:\d{3}-[^\n]*\n)*\d{3}(?: [^\n]*)?\r?\n/.exec(this.buf);
    const w = this.waiter;
    if (m) {
      this.buf = this.buf.slice(m[0].length);
      this.waiter = null;
      clearTimeout(this.timer);
      w(m[0]);
    } else if (this.ended) {
      this.waiter = null;
      clearTimeout(this.timer);
      w(this.ended);
    }
  }

  reply(): Promise<string> {
    return new Promise((resolve, reject) => {
      this.waiter = (r) => (r instanceof Error ? reject(r) : resolve(r));
      this.timer = setTimeout(() => this.fail(new Error(`no reply within ${this.timeoutMs} ms`)), this.timeoutMs);
      this.pump();
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

const code = (r: string): number => Number(r.slice(0, 3));
const firstLine = (r: string): string => r.split('\r\n')[0] ?? r;

export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const host = o.host ?? '127.0.0.1';
  const from = o.from ?? 'sender@bench.test';
  const to = o.to ?? 'rcpt@dest.bench.test';
  const timeoutMs = o.timeoutMs ?? 60000;
  const body = payload(o.size);
  const envelope = `MAIL FROM:<${from}>\r\nRCPT TO:<${to}>\r\nDATA\r\n`;
  const res: LoadResult = { ok: 0, failed: 0, wallMs: 0, latencies: [], firstError: null };
  const t0 = performance.now();
  const deadline = o.durationMs !== undefined ? t0 + o.durationMs : Infinity;
  let next = 0;
  const claim = (): number | null => {
    if (o.durationMs !== undefined) return performance.now() < deadline ? next++ : null;
    return next < o.messages ? next++ : null;
  };
  const failed = (why: string) => {
    res.failed++;
    res.firstError ??= why;
  };

  const session = async (sid: number): Promise<void> => {
    let c: Conn | null = null;
    let pipelining = false;
    for (let n = claim(); n !== null; n = claim()) {
      try {
        if (!c) {
          c = await Conn.open(host, o.port, timeoutMs);
          const banner = await c.reply();
          if (code(banner) !== 220) throw new Error(`banner: ${firstLine(banner)}`);
          c.sock.write(`EHLO client${sid}.bench.test\r\n`);
          const ehlo = await c.reply();
          if (code(ehlo) !== 250) throw new Error(`EHLO: ${firstLine(ehlo)}`);
          pipelining = /^250[- ]PIPELINING/im.test(ehlo);
        }
        let replies: string[];
        if (pipelining) {
          c.sock.write(envelope);
          replies = [await c.reply(), await c.reply(), await c.reply()];
        } else {
          replies = [];
          for (const cmd of envelope.split('\r\n').slice(0, 3)) {
            c.sock.write(cmd + '\r\n');
            replies.push(await c.reply());
          }
        }
        if (code(replies[0]!) !== 250 || code(replies[1]!) !== 250 || code(replies[2]!) !== 354) {
          failed(`envelope: ${replies.map(firstLine).join(' | ')}`);
          c.sock.write('RSET\r\n');
          await c.reply();
          continue;
        }
        const head = `From: <${from}>\r\nTo: <${to}>\r\nSubject: bench ${n}\r\nMessage-ID: <${n}.${sid}.${Date.now()}@bench.test>\r\n\r\n`;
        c.sock.cork();
        c.sock.write(head);
        c.sock.write(body);
        c.sock.write('.\r\n');
        c.sock.uncork();
        const sent = performance.now();
        const final = await c.reply();
        const lat = performance.now() - sent;
        if (code(final) >= 200 && code(final) < 300) {
          res.ok++;
          res.latencies.push(lat);
        } else {
          failed(`DATA: ${firstLine(final)}`);
        }
        if (!o.reuse) {
          c.sock.write('QUIT\r\n');
          await c.reply().catch(() => '');
          c.close();
          c = null;
        }
      } catch (e) {
        failed((e as Error).message);
        c?.close();
        c = null;
      }
    }
    if (c) {
      c.sock.write('QUIT\r\n');
      await c.reply().catch(() => '');
      c.close();
    }
  };

  await Promise.all(Array.from({ length: o.sessions }, (_, i) => session(i)));
  res.wallMs = performance.now() - t0;
  return res;
}

/** p-th percentile (0..100) by nearest rank; null for no samples. */
export function percentile(xs: number[], p: number): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[i]!;
}
