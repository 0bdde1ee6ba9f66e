/**
 * SMTP smuggling: a body that one hop reads as "end of DATA + another message" must never
 * become a second message anywhere. Each variant is sent over a raw socket; the next hop is
 * either a deliberately *lenient* SMTP server (it ends DATA at any of <CR>/<LF>/<CRLF> "."
 * <CR>/<LF>/<CRLF>, as vulnerable servers do) or the normal sink.
 */
import { describe, it, expect, afterEach } from 'vitest';
import net from 'node:net';
import { startPair, waitFor, RawSmtp, type Pair } from '../helpers/index.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A next hop that is vulnerable to smuggling: bare line ends count as line ends everywhere. */
class LenientSink {
  readonly messages: Array<{ from: string; to: string[]; body: string }> = [];
  private readonly server: net.Server;
  port = 0;

  constructor() {
    this.server = net.createServer((sock) => {
      sock.on('error', () => {});
      sock.write('220 lenient ESMTP\r\n');
      let buf = '';
      let inData = false;
      let env = { from: '', to: [] as string[] };
      sock.on('data', (d) => {
        buf += d.toString('latin1');
        for (;;) {
          if (inData) {
            const m = /(^|\r\n|\n|\r)\.(\r\n|\n|\r)/.exec(buf);
            if (!m) return;
            this.messages.push({ ...env, body: buf.slice(0, m.index) });
            buf = buf.slice(m.index + m[0].length);
            inData = false;
            env = { from: '', to: [] };
            sock.write('250 2.0.0 ok\r\n');
            continue;
          }
          const m = /\r\n|\n|\r/.exec(buf);
          if (!m) return;
          const line = buf.slice(0, m.index);
          buf = buf.slice(m.index + m[0].length);
          const verb = line.slice(0, 4).toUpperCase();
          if (verb === 'EHLO') sock.write('250-lenient\r\n250 8BITMIME\r\n');
          else if (verb === 'MAIL') (env.from = /<([^>]*)>/.exec(line)?.[1] ?? ''), sock.write('250 2.1.0 ok\r\n');
          else if (verb === 'RCPT') env.to.push(/<([^>]*)>/.exec(line)?.[1] ?? ''), sock.write('250 2.1.5 ok\r\n');
          else if (verb === 'DATA') (inData = true), sock.write('354 go\r\n');
          else if (verb === 'QUIT') sock.end('221 bye\r\n');
          else sock.write('250 ok\r\n');
        }
      });
    });
  }

  async listen(): Promise<number> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  close(): Promise<void> {
    this.server.close();
    return Promise.resolve();
  }
}

const SMUGGLED = 'MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@x.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n';

// [name, the message the client sends (DATA ends at the final CRLF.CRLF), reply in normalize mode]
const VARIANTS: Array<[string, string, RegExp]> = [
  ['<LF>.<LF>', `Subject: v1\r\n\r\nhello\n.\n${SMUGGLED}`, /^250 /],
  ['<LF>.<CR><LF>', `Subject: v2\r\n\r\nhello\n.\r\n${SMUGGLED}`, /^250 /],
  ['<CR>.<CR><LF>', `Subject: v3\r\n\r\nhello\r.\r\n${SMUGGLED}`, /^250 /],
  ['<CR><LF>.<CR>', `Subject: v4\r\n\r\nhello\r\n.\r${SMUGGLED}`, /^250 /],
  ['<CR>.<CR>', `Subject: v5\r\n\r\nhello\r.\r${SMUGGLED}`, /^250 /],
  ['NUL in a header', `Subject: v6\0\r\n\r\nhello\r\n.\0\r\n${SMUGGLED}`, /^554 5\.6\.0 /],
  ['bare CR in a header', `Subject: v7\r.\rX-Y: z\r\n\r\nhello\r\n${SMUGGLED}`, /^250 /],
];

async function sendRaw(port: number, payload: string): Promise<{ reply: string | null; closed: boolean; after: string | null }> {
  const c = await RawSmtp.openData(port, { from: 'alice@x.test', to: 'bob@x.test' });
  cleanups.push(() => c.close());
  c.write(Buffer.from(payload + '.\r\n', 'latin1'));
  const reply = await c.reply();
  // one more command: a smuggled transaction must not have been read as commands
  const after = c.closed ? null : await c.cmd('NOOP');
  c.close();
  return { reply, closed: after === null, after };
}

async function pairTo(port: number | null, smtp: Record<string, unknown> = {}): Promise<Pair> {
  const pair = await startPair({}, { 'relay-a': { smtp, ...(port ? { delivery: { nextHop: { host: '127.0.0.1', port, tls: 'none' } } } : {}) } });
  cleanups.push(() => pair.stop());
  return pair;
}

describe('SMTP smuggling', () => {
  it('normalize (default): one message per transaction at a lenient next hop, never the smuggled one', async () => {
    const lenient = new LenientSink();
    cleanups.push(() => lenient.close());
    const pair = await pairTo(await lenient.listen());
    let accepted = 0;
    for (const [name, payload, want] of VARIANTS) {
      const r = await sendRaw(pair.a.addresses.smtp.port, payload);
      expect(r.reply, name).toMatch(want);
      expect(r.after, name).toMatch(/^250 /); // the connection is in command mode, nothing pending
      if (r.reply!.startsWith('250')) accepted++;
    }
    await waitFor(() => lenient.messages.length >= accepted && pair.a.spool.list().length === 0, 20000, 'deliveries');
    expect(lenient.messages).toHaveLength(accepted);
    for (const m of lenient.messages) {
      expect(m.to).toEqual(['bob@x.test']);
      expect(m.from).toBe('alice@x.test');
      // the "smuggled" text is there, as body lines of the one message
      expect(m.body).toContain('Subject: smuggled');
      expect(m.body).not.toMatch(/\r(?!\n)|(?<!\r)\n/);
    }
  });

  it('normalize: what is stored (and so what any next hop gets) has no bare CR or LF', async () => {
    const pair = await pairTo(null);
    let release!: () => void;
    pair.sink.replyAfter = new Promise((r) => (release = r));
    cleanups.push(() => release());
    for (const [name, payload] of VARIANTS.filter(([, , w]) => w.source.startsWith('^250'))) {
      const r = await sendRaw(pair.a.addresses.smtp.port, payload);
      const id = /queued as ([A-Z0-9]+)/.exec(r.reply ?? '')?.[1];
      expect(id, name).toBeTruthy();
      const stored = pair.a.spool.getWithBody(id!)!.body.toString('latin1');
      expect(stored, name).not.toMatch(/\r(?!\n)|(?<!\r)\n/);
      expect(stored, name).toMatch(/\r\n\.\r\nMAIL FROM:<evil@attacker\.test>\r\n|\r\n\.\r\nX-Y: z/);
    }
    release();
    await waitFor(() => pair.sink.messages.length === 6, 20000, 'deliveries');
    expect(pair.sink.messages.every((m) => m.to.length === 1 && m.to[0] === 'bob@x.test')).toBe(true);
  });

  it('reject: bare <LF>/<CR> get 521 5.5.2 and a disconnect; nothing is delivered', async () => {
    const pair = await pairTo(null, { bareLineEndings: 'reject' });
    for (const [name, payload] of VARIANTS) {
      const r = await sendRaw(pair.a.addresses.smtp.port, payload);
      if (name.startsWith('NUL')) {
        expect(r.reply).toMatch(/^554 5\.6\.0 /);
        continue;
      }
      expect(r.reply, name).toMatch(/^521 5\.5\.2 relay-a\.example\.test Error: bare <(LF|CR)> received$/);
      expect(r.closed, name).toBe(true);
    }
    // the smuggled commands were never read: nothing queued, nothing delivered
    expect(pair.a.spool.list()).toHaveLength(0);
    const ok = await sendRaw(pair.a.addresses.smtp.port, 'Subject: clean\r\n\r\nclean\r\n');
    expect(ok.reply).toMatch(/^250 /);
    await waitFor(() => pair.sink.messages.length === 1, 20000, 'the clean message');
    expect(pair.sink.messages[0]!.raw.toString()).toContain('Subject: clean');
  });
});
