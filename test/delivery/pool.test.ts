/**
 * The delivery worker's SMTP pool (src/delivery/pool.ts) against a scripted next hop: sessions
 * are reused, a refused message keeps its session (RSET), a session the server dropped while
 * idle is replaced without sending the message twice, and the pool never opens more than
 * maxConnections sessions.
 */
import { describe, it, expect, afterEach } from 'vitest';
import net from 'node:net';
import { SmtpPool } from '../../src/delivery/pool.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface NextHop {
  port: number;
  connections: number;
  /** messages received completely (body ended with CRLF.CRLF), per connection index */
  messages: Array<{ conn: number; from: string; to: string[]; body: string }>;
  maxOpen: number;
}

/**
 * A line-based SMTP server. `onMail(conn, n)` may return 'drop' to close the connection
 * without a reply when the n-th MAIL FROM of a connection arrives; `rcpt` answers RCPT.
 */
async function nextHop(o: { onMail?: (n: number) => 'drop' | void; rcpt?: (addr: string) => string } = {}): Promise<NextHop> {
  const hop: NextHop = { port: 0, connections: 0, messages: [], maxOpen: 0 };
  let open = 0;
  const server = net.createServer((sock) => {
    const conn = hop.connections++;
    open++;
    hop.maxOpen = Math.max(hop.maxOpen, open);
    sock.on('close', () => open--);
    sock.on('error', () => {});
    let buf = '';
    let data = false;
    let mails = 0;
    let cur = { from: '', to: [] as string[], body: '' };
    sock.write('220 hop ESMTP\r\n');
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      for (;;) {
        if (data) {
          const end = buf.indexOf('\r\n.\r\n');
          if (end < 0) return;
          cur.body = buf.slice(0, end + 2);
          buf = buf.slice(end + 5);
          data = false;
          hop.messages.push({ conn, ...cur });
          sock.write('250 2.0.0 queued\r\n');
          continue;
        }
        const nl = buf.indexOf('\r\n');
        if (nl < 0) return;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        const cmd = line.slice(0, 4).toUpperCase();
        if (cmd === 'EHLO') sock.write('250-hop\r\n250 PIPELINING\r\n');
        else if (cmd === 'MAIL') {
          if (o.onMail?.(++mails) === 'drop') return void sock.destroy();
          cur = { from: /<(.*)>/.exec(line)![1]!, to: [], body: '' };
          sock.write('250 2.1.0 ok\r\n');
        } else if (cmd === 'RCPT') {
          const addr = /<(.*)>/.exec(line)![1]!;
          const r = o.rcpt?.(addr) ?? '250 2.1.5 ok';
          if (r.startsWith('2')) cur.to.push(addr);
          sock.write(r + '\r\n');
        } else if (cmd === 'DATA') {
          if (cur.to.length === 0) sock.write('554 5.5.1 no valid recipients\r\n');
          else {
            data = true;
            sock.write('354 go\r\n');
          }
        } else if (cmd === 'RSET') sock.write('250 2.0.0 ok\r\n');
        else if (cmd === 'QUIT') {
          sock.write('221 bye\r\n');
          sock.end();
        } else sock.write('502 5.5.2 what\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  hop.port = (server.address() as net.AddressInfo).port;
  cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
  // the pool's sessions keep the server's close() waiting: end them with the test
  const socks = new Set<net.Socket>();
  server.on('connection', (s) => {
    socks.add(s);
    s.on('close', () => socks.delete(s));
  });
  cleanups.push(() => {
    for (const s of socks) s.destroy();
  });
  return hop;
}

function pool(port: number, maxConnections = 2): SmtpPool {
  const p = new SmtpPool({ host: '127.0.0.1', port, secure: false, ignoreTLS: true, name: 'relay.test', maxConnections });
  cleanups.push(() => p.close());
  return p;
}

const raw = (n: number) => Buffer.from(`Subject: ${n}\r\n\r\n.leading dot\r\nbody ${n}\r\n`);

describe('delivery SMTP pool', () => {
  it('reuses sessions, sends the bytes dot-stuffed and the envelope normalised as nodemailer does', async () => {
    const hop = await nextHop();
    const p = pool(hop.port, 1);
    for (let n = 0; n < 3; n++) {
      const info = await p.sendMail({ envelope: { from: 'a@example.test', to: ['B@Example.TEST', 'b@example.test', 'c@bücher.example'] }, raw: raw(n) });
      expect(info.response).toMatch(/^250 /);
    }
    expect(hop.connections).toBe(1);
    expect(hop.messages.map((m) => m.to)).toEqual(Array(3).fill(['B@example.test', 'b@example.test', 'c@xn--bcher-kva.example']));
    // the receiving side still has the dot stuffing (it un-stuffs when it stores)
    expect(hop.messages[0]!.body).toBe('Subject: 0\r\n\r\n..leading dot\r\nbody 0\r\n');
  });

  it('a message refused at the envelope keeps its session usable (RSET), and the error carries the reply', async () => {
    const hop = await nextHop({ rcpt: (a) => (a.startsWith('bad') ? '550 5.1.1 no such user' : '250 2.1.5 ok') });
    const p = pool(hop.port, 1);
    const err = (await p.sendMail({ envelope: { from: 'a@example.test', to: ['bad@example.test'] }, raw: raw(1) }).catch((e: unknown) => e)) as {
      code?: string;
      rejectedErrors?: Array<{ responseCode?: number }>;
    };
    expect(err.code).toBe('EENVELOPE');
    expect(err.rejectedErrors?.[0]?.responseCode).toBe(550);
    const info = await p.sendMail({ envelope: { from: 'a@example.test', to: ['bad@example.test', 'good@example.test'] }, raw: raw(2) });
    expect(info.accepted).toEqual(['good@example.test']);
    expect(info.rejectedErrors?.[0]?.responseCode).toBe(550);
    expect(hop.connections).toBe(1);
  });

  it('a reused session the server dropped is replaced once, and the message is sent exactly once', async () => {
    // every connection drops its 2nd MAIL FROM without a reply (an idle-close race)
    const hop = await nextHop({ onMail: (n) => (n === 2 ? 'drop' : undefined) });
    const p = pool(hop.port, 1);
    await p.sendMail({ envelope: { from: 'a@example.test', to: ['b@example.test'] }, raw: raw(1) });
    const info = await p.sendMail({ envelope: { from: 'a@example.test', to: ['b@example.test'] }, raw: raw(2) });
    expect(info.response).toMatch(/^250 /);
    expect(hop.messages.map((m) => m.body.match(/body (\d)/)![1])).toEqual(['1', '2']);
    expect(hop.connections).toBe(2);
  });

  it('never opens more than maxConnections sessions; waiters get the freed ones', async () => {
    const hop = await nextHop();
    const p = pool(hop.port, 3);
    await Promise.all(Array.from({ length: 20 }, (_, n) => p.sendMail({ envelope: { from: 'a@example.test', to: ['b@example.test'] }, raw: raw(n) })));
    expect(hop.messages.length).toBe(20);
    expect(hop.maxOpen).toBeLessThanOrEqual(3);
    expect(hop.connections).toBeLessThanOrEqual(3);
  });
});
