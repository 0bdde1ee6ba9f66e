/**
 * Our next-hop SMTP client (src/delivery/smtp-client.ts) against scripted servers: the body's
 * dots doubled exactly where a line starts with one, HELO when EHLO is refused, AUTH LOGIN,
 * pipelined MAIL/RCPT, and the error shapes delivery judges recipients by (greeting, 421,
 * silence, a server that closes).
 */
import { describe, it, expect, afterEach } from 'vitest';
import net from 'node:net';
import { SmtpSession, dataBytes, type SessionOptions, type SmtpError } from '../../src/delivery/smtp-client.js';
import { Parts } from '../../src/base/buffers.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A server that answers each line with `answer(line)` (undefined: stay silent); `greeting` first. */
async function scripted(answer: (line: string, session: { data: boolean; body: string; lines: string[] }) => string | undefined | 'close', greeting = '220 hop ESMTP'): Promise<{ port: number; sessions: Array<{ data: boolean; body: string; lines: string[] }> }> {
  const sessions: Array<{ data: boolean; body: string; lines: string[] }> = [];
  const socks = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    socks.add(sock);
    sock.on('error', () => {});
    const st = { data: false, body: '', lines: [] as string[] };
    sessions.push(st);
    let buf = '';
    if (greeting) sock.write(greeting + '\r\n');
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      for (;;) {
        if (st.data) {
          const end = buf.indexOf('\r\n.\r\n');
          if (end < 0) return;
          st.body = buf.slice(0, end + 2);
          buf = buf.slice(end + 5);
          st.data = false;
          const r = answer('<body>', st);
          if (r === 'close') return void sock.destroy();
          if (r) sock.write(r + '\r\n');
          continue;
        }
        const nl = buf.indexOf('\r\n');
        if (nl < 0) return;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        st.lines.push(line);
        const r = answer(line, st);
        if (r === 'close') return void sock.destroy();
        if (line === 'DATA' && r?.startsWith('354')) st.data = true;
        if (r) sock.write(r + '\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => {
    for (const s of socks) s.destroy();
    return new Promise<void>((r) => server.close(() => r()));
  });
  return { port: (server.address() as net.AddressInfo).port, sessions };
}

function opts(port: number, o: Partial<SessionOptions> = {}): SessionOptions {
  return { host: '127.0.0.1', port, name: 'relay.test', ignoreTLS: true, requireTLS: false, opportunisticTLS: false, tls: {}, connectionTimeout: 2000, greetingTimeout: 2000, socketTimeout: 2000, ...o };
}

async function open(port: number, o: Partial<SessionOptions> = {}): Promise<SmtpSession> {
  const s = await SmtpSession.open(opts(port, o));
  cleanups.push(() => s.destroy());
  return s;
}

const ok = (line: string): string | undefined => {
  if (line.startsWith('EHLO')) return '250-hop\r\n250-PIPELINING\r\n250 8BITMIME';
  if (line.startsWith('MAIL') || line.startsWith('RCPT') || line === 'RSET') return '250 2.0.0 ok';
  if (line === 'DATA') return '354 go';
  if (line === '<body>') return '250 2.0.0 queued as X';
  return '502 5.5.2 what';
};

describe('next-hop SMTP client', () => {
  it('doubles a dot only at the start of a line, ends the body with CRLF and a dot line', () => {
    const out = (s: string) => Buffer.concat(dataBytes(Buffer.from(s))).toString();
    expect(out('.a\r\nb.\r\n.\r\n..c\r\n')).toBe('..a\r\nb.\r\n..\r\n...c\r\n.\r\n');
    expect(out('no final line break')).toBe('no final line break\r\n.\r\n');
    expect(out('x\r\n')).toBe('x\r\n.\r\n');
    expect(out('')).toBe('.\r\n');
  });

  it('dot-stuffs a body in pieces as it does the whole body, wherever the pieces are cut (a dot line split from its line break included)', () => {
    const text = '.a\r\nb.\r\n.\r\n..c\r\nd\r\n.\r\n.e\nx';
    const whole = Buffer.concat(dataBytes(Buffer.from(text))).toString();
    const b = Buffer.from(text);
    for (let i = 0; i <= b.length; i++) {
      for (let j = i; j <= b.length; j++) {
        const cut = new Parts([b.subarray(0, i), b.subarray(i, j), b.subarray(j)]);
        expect(Buffer.concat(dataBytes(cut)).toString(), `cut at ${i}, ${j}`).toBe(whole);
      }
    }
    expect(Buffer.concat(dataBytes(new Parts([Buffer.from('x\r'), Buffer.from('\n')]))).toString()).toBe('x\r\n.\r\n');
    expect(Buffer.concat(dataBytes(new Parts([]))).toString()).toBe('.\r\n');
  });

  it('pipelines MAIL, RCPT and DATA when offered and reports each refused recipient', async () => {
    const hop = await scripted((l) => (l === 'RCPT TO:<bad@example.test>' ? '550 5.1.1 no such user' : ok(l)));
    const s = await open(hop.port);
    const info = await s.send({ from: 'a@example.test', to: ['bad@example.test', 'good@example.test'] }, Buffer.from('Subject: x\r\n\r\n.dot\r\n'));
    expect(info.accepted).toEqual(['good@example.test']);
    expect(info.rejectedErrors?.map((e) => [e.recipient, e.responseCode, e.code])).toEqual([['bad@example.test', 550, 'EENVELOPE']]);
    expect(info.response).toBe('250 2.0.0 queued as X');
    expect(hop.sessions[0]!.body).toBe('Subject: x\r\n\r\n..dot\r\n');
    expect(hop.sessions[0]!.lines.slice(1, 5)).toEqual(['MAIL FROM:<a@example.test>', 'RCPT TO:<bad@example.test>', 'RCPT TO:<good@example.test>', 'DATA']);
  });

  it('says HELO when EHLO is refused, and logs in with AUTH LOGIN', async () => {
    const hopHelo = await scripted((l) => (l.startsWith('EHLO') ? '500 5.5.1 no ESMTP' : l.startsWith('HELO') ? '250 hop' : ok(l)));
    const s = await open(hopHelo.port);
    expect((await s.send({ from: '', to: ['b@example.test'] }, Buffer.from('x\r\n'))).accepted).toEqual(['b@example.test']);
    expect(hopHelo.sessions[0]!.lines).toContain('MAIL FROM:<>');

    const hopAuth = await scripted((l) => {
      if (l.startsWith('EHLO')) return '250-hop\r\n250 AUTH LOGIN';
      if (l === 'AUTH LOGIN') return '334 VXNlcm5hbWU6';
      if (l === Buffer.from('relay').toString('base64')) return '334 UGFzc3dvcmQ6';
      if (l === Buffer.from('secret').toString('base64')) return '235 2.7.0 ok';
      return ok(l);
    });
    await open(hopAuth.port, { auth: { user: 'relay', pass: 'secret' } });
    const refused = await SmtpSession.open(opts(hopAuth.port, { auth: { user: 'relay', pass: 'wrong' } })).catch((e: SmtpError) => e);
    // a refused login has no reply code: delivery retries it instead of bouncing
    expect([(refused as SmtpError).code, (refused as SmtpError).responseCode]).toEqual(['EAUTH', undefined]);
  });

  it('a 5xx greeting, a 421 in the middle, silence and a close each give the error delivery expects', async () => {
    const bad = await scripted(ok, '554 5.3.2 no service');
    const g = (await SmtpSession.open(opts(bad.port)).catch((e: SmtpError) => e)) as SmtpError;
    expect([g.code, g.responseCode]).toEqual(['EPROTOCOL', 554]);

    const busy = await scripted((l) => (l.startsWith('RCPT') ? '421 4.3.2 shutting down' : ok(l)));
    const s = await open(busy.port);
    const e421 = (await s.send({ from: 'a@example.test', to: ['b@example.test'] }, Buffer.from('x\r\n')).catch((e: SmtpError) => e)) as SmtpError;
    expect([e421.code, e421.responseCode]).toEqual(['EENVELOPE', 421]);
    expect(s.dead).toBe(true);

    const silent = await scripted((l) => (l === 'DATA' ? undefined : ok(l)));
    const q = await open(silent.port, { socketTimeout: 300 });
    const t = (await q.send({ from: 'a@example.test', to: ['b@example.test'] }, Buffer.from('x\r\n')).catch((e: SmtpError) => e)) as SmtpError;
    expect(t.code).toBe('ETIMEDOUT');
    expect(q.wroteMessage).toBe(false);

    const closing = await scripted((l) => (l === '<body>' ? 'close' : ok(l)));
    const c = await open(closing.port);
    const ce = (await c.send({ from: 'a@example.test', to: ['b@example.test'] }, Buffer.from('x\r\n')).catch((e: SmtpError) => e)) as SmtpError;
    expect([ce.code, c.wroteMessage]).toEqual(['ECONNECTION', true]);

    const none = (await SmtpSession.open(opts(1)).catch((e: SmtpError) => e)) as SmtpError;
    expect(none.code).toBe('ECONNECTION');
    expect(none.message).toMatch(/ECONNREFUSED/);
  });
});
