/**
 * Load and bookkeeping for fault-injection tests and the chaos run: concurrent SMTP clients
 * that each send uniquely tagged messages, a ledger of what every client was answered, and
 * the comparison with what reached the next hop.
 */
import nodemailer from 'nodemailer';
import type { SinkMessage } from '../../tools/sink.js';

export type Outcome = '250' | '4xx' | '5xx' | 'noreply' | 'noconnect';

export interface LedgerEntry {
  token: string;
  port: number;
  outcome: Outcome;
  response: string;
}

/** A small seeded PRNG (mulberry32): a failing run can be replayed from its printed seed. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function seedFromEnv(name: string): number {
  const v = process.env[name];
  return v ? Number(v) : Math.floor(Math.random() * 2 ** 31);
}

/** One message through one relay; the outcome as the client saw it. */
export async function sendTagged(port: number, token: string, timeoutMs = 30000): Promise<LedgerEntry> {
  const t = nodemailer.createTransport({
    host: '127.0.0.1',
    port,
    secure: false,
    ignoreTLS: true,
    connectionTimeout: timeoutMs,
    greetingTimeout: timeoutMs,
    socketTimeout: timeoutMs,
  });
  try {
    const info = (await t.sendMail({
      envelope: { from: 'load@example.test', to: ['sink@example.test'] },
      raw: `From: load@example.test\r\nTo: sink@example.test\r\nSubject: load ${token}\r\nMessage-ID: <${token}@load.test>\r\n\r\ntoken ${token}\r\n`,
    })) as { response: string };
    return { token, port, outcome: info.response.startsWith('250') ? '250' : 'noreply', response: info.response };
  } catch (e) {
    const err = e as { responseCode?: number; response?: string; message: string; code?: string };
    const text = err.response ?? err.message;
    if (err.responseCode && err.responseCode >= 500) return { token, port, outcome: '5xx', response: text };
    if (err.responseCode && err.responseCode >= 400) return { token, port, outcome: '4xx', response: text };
    // never connected: the message was certainly not handed over
    if (/ECONNREFUSED/.test(err.message)) return { token, port, outcome: 'noconnect', response: text };
    return { token, port, outcome: 'noreply', response: text };
  } finally {
    t.close();
  }
}

export const tokenOf = (m: SinkMessage): string | undefined => /^Subject: load (\S+)\r?$/m.exec(m.raw.toString('latin1'))?.[1];

export interface LoadOptions {
  clients: number;
  /** the SMTP ports a client may use right now (empty: wait) */
  ports: () => number[];
  rand: () => number;
  prefix?: string;
}

/** `clients` loops, each sending one message after another until stop(). */
export class Load {
  readonly ledger: LedgerEntry[] = [];
  private running = false;
  private loops: Promise<void>[] = [];
  private seq = 0;

  constructor(private readonly o: LoadOptions) {}

  start(): void {
    this.running = true;
    for (let i = 0; i < this.o.clients; i++) this.loops.push(this.loop());
  }

  private async loop(): Promise<void> {
    while (this.running) {
      const ports = this.o.ports();
      if (ports.length === 0) {
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      const port = ports[Math.floor(this.o.rand() * ports.length)]!;
      const token = `${this.o.prefix ?? 'm'}${++this.seq}`;
      const e = await sendTagged(port, token);
      this.ledger.push(e);
      // a refused client backs off a little, as an MTA would
      if (e.outcome !== '250') await new Promise((r) => setTimeout(r, 50));
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
    this.loops = [];
  }
}

export interface Figures {
  sent: number;
  ok250: number;
  refused4xx: number;
  refused5xx: number;
  noReply: number;
  noConnect: number;
  /** distinct tokens the next hop received */
  delivered: number;
  /** 250 but never delivered */
  lost: string[];
  /** 4xx/5xx but delivered: never allowed */
  refusedDelivered: string[];
  /** no reply but delivered: the reply was lost after the commit (DESIGN invariant 5) */
  noReplyDelivered: string[];
  /** tokens delivered more than once, with their count */
  duplicates: Array<[string, number]>;
  /** extra deliveries in all */
  duplicateDeliveries: number;
}

export function compare(ledger: LedgerEntry[], received: SinkMessage[]): Figures {
  const count = new Map<string, number>();
  for (const m of received) {
    const t = tokenOf(m);
    if (t) count.set(t, (count.get(t) ?? 0) + 1);
  }
  const by = (o: Outcome) => ledger.filter((e) => e.outcome === o);
  const duplicates = [...count].filter(([, n]) => n > 1);
  return {
    sent: ledger.length,
    ok250: by('250').length,
    refused4xx: by('4xx').length,
    refused5xx: by('5xx').length,
    noReply: by('noreply').length,
    noConnect: by('noconnect').length,
    delivered: count.size,
    lost: by('250')
      .filter((e) => !count.has(e.token))
      .map((e) => e.token),
    refusedDelivered: ledger.filter((e) => (e.outcome === '4xx' || e.outcome === '5xx' || e.outcome === 'noconnect') && count.has(e.token)).map((e) => e.token),
    noReplyDelivered: by('noreply')
      .filter((e) => count.has(e.token))
      .map((e) => e.token),
    duplicates,
    duplicateDeliveries: duplicates.reduce((n, [, c]) => n + c - 1, 0),
  };
}

export function formatFigures(f: Figures): string {
  return [
    `sent ${f.sent}`,
    `250 ${f.ok250}`,
    `4xx ${f.refused4xx}`,
    `5xx ${f.refused5xx}`,
    `no-reply ${f.noReply}`,
    `no-connect ${f.noConnect}`,
    `delivered ${f.delivered}`,
    `lost ${f.lost.length}`,
    `refused-but-delivered ${f.refusedDelivered.length}`,
    `no-reply-but-delivered ${f.noReplyDelivered.length}`,
    `duplicates ${f.duplicateDeliveries} (${f.duplicates.map(([t, n]) => `${t}×${n}`).join(' ') || 'none'})`,
  ].join(' | ');
}
