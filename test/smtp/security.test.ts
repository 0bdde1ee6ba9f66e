/**
 * Issue 4 — the edges: no open relay, STARTTLS + AUTH, limits and timeouts, secrets.
 * Clients outside allowedNetworks are played by binding the client socket to 127.0.0.2.
 */
import { describe, it, expect, afterEach } from 'vitest';
import path from 'node:path';
import tls from 'node:tls';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import YAML from 'yaml';
import { loadConfig } from '../../src/config/index.js';
import { hashPassword, verifyPassword, passwordHashProblem } from '../../src/passwords/index.js';
import { startPair, send, waitFor, RawSmtp, runCli, type Pair } from '../helpers/index.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function pairWith(a: Record<string, unknown>, all: Record<string, unknown> = {}): Promise<Pair> {
  const pair = await startPair(all, { 'relay-a': a });
  cleanups.push(() => pair.stop());
  return pair;
}

async function raw(port: number, localAddress?: string): Promise<RawSmtp> {
  const c = await RawSmtp.connect(port, localAddress);
  cleanups.push(() => c.close());
  return c;
}

/** greeting + EHLO; returns the EHLO reply */
async function hello(c: RawSmtp): Promise<string> {
  expect(await c.reply()).toMatch(/^220 /);
  return (await c.cmd('EHLO client.test'))!;
}

const plain = (user: string, pass: string) => Buffer.from(`\0${user}\0${pass}`).toString('base64');

describe('relay access', () => {
  const tricks = [
    'user%evil.test@relay.test', // percent hack
    '@relay.test:user@evil.test', // source route to a foreign domain
    '@evil.test:user@relay.test', // source route through a foreign host
    '"user@evil.test"@relay.test', // quoted local part with an @
    'evil.test!user@relay.test', // bang path
    'victim@evil.test', // plain foreign domain
  ];

  it('refuses every open-relay trick with 554 5.7.1 from outside allowedNetworks, accepts them from inside', async () => {
    const pair = await pairWith({ smtp: { allowedNetworks: ['127.0.0.1/32'], relayDomains: ['relay.test'] } });
    const port = pair.a.addresses.smtp.port;

    const outside = await raw(port, '127.0.0.2');
    await hello(outside);
    expect(await outside.cmd('MAIL FROM:<someone@elsewhere.test>')).toMatch(/^250 /);
    for (const t of tricks) {
      const r = await outside.cmd(`RCPT TO:<${t}>`);
      expect(r, t).toMatch(/^554 5\.7\.1 <[^>]*>: Relay access denied$/);
    }
    // the inbound-MX role: a plain recipient in relayDomains is fine from anyone
    expect(await outside.cmd('RCPT TO:<postmaster@relay.test>')).toMatch(/^250 /);
    expect(await outside.cmd('RCPT TO:<someone@RELAY.TEST>')).toMatch(/^250 /);
    expect(await outside.cmd('DATA')).toMatch(/^354/);
    expect(await outside.cmd('Subject: inbound\r\n\r\nhi\r\n.')).toMatch(/^250 2\.0\.0 Ok: queued as /);

    const inside = await raw(port, '127.0.0.1');
    await hello(inside);
    expect(await inside.cmd('MAIL FROM:<app@inside.test>')).toMatch(/^250 /);
    for (const t of tricks) expect(await inside.cmd(`RCPT TO:<${t}>`), t).toMatch(/^250 /);
    expect(await inside.cmd('DATA')).toMatch(/^354/);
    expect(await inside.cmd('Subject: outbound\r\n\r\nhi\r\n.')).toMatch(/^250 2\.0\.0 Ok: queued as /);

    // the next hop refuses the quoted recipient, so a bounce to app@inside.test may arrive too
    const bySubject = (subj: string) => pair.sink.messages.find((m) => m.raw.includes(`Subject: ${subj}`));
    await waitFor(() => !!bySubject('inbound') && !!bySubject('outbound'), 20000, 'both delivered');
    const inbound = bySubject('inbound')!;
    expect(inbound.to).toEqual(['postmaster@relay.test', 'someone@relay.test']); // smtp-server lower-cases domains
    const outbound = bySubject('outbound')!;
    // source routes are stripped (RFC 5321 appendix C), the rest is relayed as written
    expect(outbound.to).toEqual(['user%evil.test@relay.test', 'user@evil.test', 'user@relay.test', 'evil.test!user@relay.test', 'victim@evil.test']);
    // the quoted one was offered to the next hop as written; the sink (plain smtp-server) refuses it
    await waitFor(() => pair.logs['relay-a']!.some((l) => l.to === '"user@evil.test"@relay.test'), 20000, 'quoted rcpt judged');
    expect(pair.logs['relay-a']!.find((l) => l.to === '"user@evil.test"@relay.test')!.response).toMatch(/^501 .*Bad recipient address syntax/);
  });
});

describe('reload', () => {
  it('applies relayDomains and limits to new sessions on reload', async () => {
    const pair = await pairWith({ smtp: { allowedNetworks: ['127.0.0.1/32'] } });
    const port = pair.a.addresses.smtp.port;
    const before = await raw(port, '127.0.0.2');
    await hello(before);
    await before.cmd('MAIL FROM:<x@outside.test>');
    expect(await before.cmd('RCPT TO:<u@relay.test>')).toMatch(/^554 5\.7\.1 /);
    const file = pair.files.configs['relay-a']!;
    const doc = YAML.parse(readFileSync(file, 'utf8')) as { smtp: Record<string, unknown> };
    doc.smtp.relayDomains = ['relay.test'];
    doc.smtp.limits = { maxConnectionsPerAddress: 1 };
    writeFileSync(file, YAML.stringify(doc));
    expect(pair.a.reload(loadConfig(file))).toMatchObject({ ok: true });
    // the open session still counts against the new per-address limit…
    const second = await raw(port, '127.0.0.2');
    expect(await second.reply()).toBe('421 4.7.0 relay-a.example.test Error: too many connections from 127.0.0.2');
    // …and commands see the new relay domains
    expect(await before.cmd('RCPT TO:<u@relay.test>')).toMatch(/^250 /);
  });
});

describe('STARTTLS and AUTH', () => {
  const PASSWORD = 'c0rrect-h0rse-Battery';

  async function authPair(extra: Record<string, unknown> = {}): Promise<{ pair: Pair; ca: Buffer }> {
    const hash = await hashPassword(PASSWORD);
    const pair = await pairWith({
      smtp: {
        allowedNetworks: ['127.0.0.1/32'],
        tls: { cert: 'certs/relay-a.crt', key: 'certs/relay-a.key' },
        auth: { users: [{ username: 'alice', passwordHash: hash }], failureDelayMs: 300, maxFailures: 3, lockoutMs: 60000 },
        ...extra,
      },
    });
    return { pair, ca: readFileSync(path.join(pair.files.certDir, 'ca.crt')) };
  }

  it('hashes verify (scrypt and argon2id), wrong passwords do not, malformed hashes are named', async () => {
    for (const alg of ['scrypt', 'argon2id'] as const) {
      const h = await hashPassword('pw', alg);
      expect(passwordHashProblem(h)).toBeNull();
      expect(await verifyPassword('pw', h)).toBe(true);
      expect(await verifyPassword('pW', h)).toBe(false);
    }
    expect(passwordHashProblem('plaintext')).toMatch(/hash-password/);
    const cli = await runCli(['hash-password', '--algorithm', 'scrypt'], 30000);
    expect(cli.code).toBe(1); // empty stdin: no password
  });

  // swaks (STARTTLS + AUTH PLAIN from outside allowedNetworks) is in test/interop.test.ts
  it('offers AUTH only after STARTTLS outside allowedNetworks; a real client logs in and relays', async () => {
    const { pair, ca } = await authPair();
    const port = pair.a.addresses.smtp.port;
    const c = await raw(port, '127.0.0.2');
    const ehlo = await hello(c);
    expect(ehlo).toContain('STARTTLS');
    expect(ehlo).not.toMatch(/AUTH/);
    expect(await c.cmd(`AUTH PLAIN ${plain('alice', PASSWORD)}`)).toBe('530 5.7.0 Must issue a STARTTLS command first');
    await c.starttls({ ca, servername: 'relay-a', minVersion: 'TLSv1.2' });
    expect((c.sock as tls.TLSSocket).getProtocol()).toMatch(/^TLSv1\.[23]$/);
    expect(await c.cmd('EHLO client.test')).toMatch(/250[ -]AUTH PLAIN LOGIN/);
    expect(await c.cmd('MAIL FROM:<alice@outside.test>')).toMatch(/^250 /);
    expect(await c.cmd('RCPT TO:<bob@elsewhere.test>')).toMatch(/^554 5\.7\.1 /); // not logged in yet
    expect(await c.cmd('RSET')).toMatch(/^250 /);
    expect(await c.cmd(`AUTH PLAIN ${plain('alice', PASSWORD)}`)).toMatch(/^235 /);
    expect(await c.cmd('MAIL FROM:<alice@outside.test>')).toMatch(/^250 /);
    expect(await c.cmd('RCPT TO:<bob@elsewhere.test>')).toMatch(/^250 /);

    // nodemailer: STARTTLS (verifying our certificate) then AUTH LOGIN
    const r = await send(port, {
      localAddress: '127.0.0.2',
      to: ['carol@elsewhere.test'],
      transport: { ignoreTLS: false, requireTLS: true, tls: { ca, servername: 'relay-a' }, auth: { user: 'alice', pass: PASSWORD }, authMethod: 'LOGIN' },
    });
    expect(r.response).toMatch(/^250 2\.0\.0 Ok: queued as /);
    await waitFor(() => pair.sink.messages.some((m) => m.to.includes('carol@elsewhere.test')), 20000, 'delivered');
    const got = pair.sink.messages.find((m) => m.to.includes('carol@elsewhere.test'))!;
    expect(got.raw.toString()).toMatch(/with ESMTPSA id /);

    // inside allowedNetworks AUTH works without TLS (and is not needed to relay)
    const inside = await raw(port, '127.0.0.1');
    expect(await hello(inside)).toMatch(/AUTH PLAIN LOGIN/);
    expect(await inside.cmd(`AUTH PLAIN ${plain('alice', PASSWORD)}`)).toMatch(/^235 /);
  });

  it('slows wrong passwords down and locks the address out with 421 4.7.0 after maxFailures', async () => {
    const { pair, ca } = await authPair();
    const port = pair.a.addresses.smtp.port;
    const c = await raw(port, '127.0.0.2');
    await hello(c);
    await c.starttls({ ca, servername: 'relay-a' });
    await c.cmd('EHLO client.test');
    for (let i = 1; i <= 2; i++) {
      const t0 = Date.now();
      expect(await c.cmd(`AUTH PLAIN ${plain('alice', 'wrong' + i)}`)).toBe('535 5.7.8 Error: authentication failed');
      expect(Date.now() - t0).toBeGreaterThanOrEqual(280); // failureDelayMs 300, timer slack
    }
    // LOGIN counts too; unknown users fail the same way
    expect(await c.cmd('AUTH LOGIN')).toMatch(/^334 /);
    expect(await c.cmd(Buffer.from('mallory').toString('base64'))).toMatch(/^334 /);
    expect(await c.cmd(Buffer.from('guess').toString('base64'))).toMatch(/^421 4\.7\.0 relay-a\.example\.test Error: too many failed authentication attempts/);
    await c.closedP;
    // a new connection from the same address is turned away at once…
    const again = await raw(port, '127.0.0.2');
    expect(await again.reply()).toMatch(/^421 4\.7\.0 relay-a\.example\.test Error: too many failed authentication attempts/);
    await again.closedP;
    // the lockout is per address: another client address still logs in
    const inside = await raw(port, '127.0.0.1');
    await hello(inside);
    expect(await inside.cmd(`AUTH PLAIN ${plain('alice', PASSWORD)}`)).toMatch(/^235 /);
    const logs = pair.logs['relay-a']!.filter((l) => l.msg === 'smtp: authentication failed');
    expect(logs).toHaveLength(3);
  });

  it('requireTLS: 530 5.7.0 before STARTTLS; TLS below 1.2 is refused', async () => {
    const { pair, ca } = await authPair({ requireTLS: true });
    const port = pair.a.addresses.smtp.port;
    const c = await raw(port, '127.0.0.1');
    const ehlo = await hello(c);
    expect(ehlo).not.toMatch(/AUTH/);
    expect(await c.cmd('MAIL FROM:<a@inside.test>')).toBe('530 5.7.0 Must issue a STARTTLS command first');
    expect(await c.cmd('AUTH PLAIN xx')).toBe('530 5.7.0 Must issue a STARTTLS command first');
    expect(await c.cmd('NOOP')).toMatch(/^250 /);
    await c.starttls({ ca, servername: 'relay-a' });
    await c.cmd('EHLO client.test');
    expect(await c.cmd('MAIL FROM:<a@inside.test>')).toMatch(/^250 /);

    const old = await raw(port, '127.0.0.1');
    await hello(old);
    await expect(
      old.starttls({ ca, servername: 'relay-a', minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' }),
    ).rejects.toThrow(/protocol|version|alert/i);
  });
});

describe('limits', () => {
  const OUT = '127.0.0.2'; // outside allowedNetworks below: per-address limits apply

  it('per-address and total connection limits answer 421 4.7.0', async () => {
    const pair = await pairWith({
      smtp: { allowedNetworks: ['127.0.0.1/32'], limits: { maxConnectionsPerAddress: 2, maxConnections: 4, connectionRatePerMinute: 0 } },
    });
    const port = pair.a.addresses.smtp.port;
    const a1 = await raw(port, OUT);
    const a2 = await raw(port, OUT);
    expect(await a1.reply()).toMatch(/^220 /);
    expect(await a2.reply()).toMatch(/^220 /);
    const a3 = await raw(port, OUT);
    expect(await a3.reply()).toBe('421 4.7.0 relay-a.example.test Error: too many connections from 127.0.0.2');
    await a3.closedP;
    // allowed networks are exempt from the per-address limit, not from the total
    const i1 = await raw(port, '127.0.0.1');
    const i2 = await raw(port, '127.0.0.1');
    expect(await i1.reply()).toMatch(/^220 /);
    expect(await i2.reply()).toMatch(/^220 /);
    const i3 = await raw(port, '127.0.0.1');
    expect(await i3.reply()).toBe('421 4.7.0 relay-a.example.test Error: too many connections');
    // a slot that frees up is usable again
    a1.write('QUIT\r\n');
    await a1.closedP;
    const deadline = Date.now() + 10000;
    for (;;) {
      const n = await raw(port, OUT);
      const r = await n.reply();
      n.close();
      if (r?.startsWith('220')) break;
      expect(r).toMatch(/^421 4\.7\.0 /); // until the server has seen the QUIT through
      expect(Date.now()).toBeLessThan(deadline);
    }
  });

  it('connection rate per address answers 421 4.7.0', async () => {
    const pair = await pairWith({ smtp: { allowedNetworks: ['127.0.0.1/32'], limits: { connectionRatePerMinute: 3 } } });
    const port = pair.a.addresses.smtp.port;
    for (let i = 0; i < 3; i++) {
      const c = await raw(port, OUT);
      expect(await c.reply()).toMatch(/^220 /);
      c.write('QUIT\r\n');
      await c.closedP;
    }
    const c = await raw(port, OUT);
    expect(await c.reply()).toBe('421 4.7.0 relay-a.example.test Error: too many connections from 127.0.0.2');
    const inside = await raw(port, '127.0.0.1'); // exempt
    expect(await inside.reply()).toMatch(/^220 /);
  });

  it('disconnects after maxErrors 5xx replies, and on an over-long command line', async () => {
    const pair = await pairWith({ smtp: { limits: { maxErrors: 3, maxLineLength: 600 } } });
    const port = pair.a.addresses.smtp.port;
    const c = await raw(port);
    await hello(c);
    expect(await c.cmd('MAIL FROM:<bad')).toMatch(/^501 /);
    expect(await c.cmd('RCPT TO:<x@y.test>')).toMatch(/^503 /);
    c.write('FOO\r\n');
    expect(await c.reply()).toMatch(/^500 /);
    expect(await c.reply()).toBe('421 4.7.0 relay-a.example.test Error: too many errors');
    await c.closedP;

    const l = await raw(port);
    await hello(l);
    l.write(`NOOP ${'x'.repeat(700)}\r\n`);
    expect(await l.reply()).toBe('421 4.4.2 Error: Command line too long');
    await l.closedP;
  });

  it('refuses a message with more Received headers than maxReceivedHeaders: 554 5.4.6 Too many hops', async () => {
    const pair = await pairWith({ smtp: { limits: { maxReceivedHeaders: 3 } } });
    const port = pair.a.addresses.smtp.port;
    const hops = (n: number) => Array.from({ length: n }, (_, i) => `Received: from hop${i}.test by x; Thu, 1 Jan 2026 00:00:00 +0000\r\n`).join('');
    const loop = await send(port, { raw: `${hops(4)}Subject: loop\r\n\r\nx\r\n` });
    expect(loop.response).toBe('554 5.4.6 Too many hops');
    const ok = await send(port, { raw: `${hops(3)}Subject: fine\r\n\r\nReceived: in the body does not count\r\n` });
    expect(ok.code).toBe(250);
    await waitFor(() => pair.sink.messages.length === 1, 20000, 'delivery');
    expect(pair.sink.messages[0]!.raw.toString()).toContain('Subject: fine');
  });

  it('slowloris: one byte a second is cut off by the deadlines while normal clients are served', async () => {
    const pair = await pairWith({ smtp: { limits: { commandTimeoutMs: 3000, dataTimeoutMs: 3000 } } });
    const port = pair.a.addresses.smtp.port;
    // in the command phase: a line that never ends
    const cmdSlow = await raw(port);
    expect(await cmdSlow.reply()).toMatch(/^220 /);
    // in DATA: a message that never ends
    const dataSlow = await raw(port);
    await hello(dataSlow);
    await dataSlow.cmd('MAIL FROM:<slow@x.test>');
    await dataSlow.cmd('RCPT TO:<slow@x.test>');
    expect(await dataSlow.cmd('DATA')).toMatch(/^354/);
    const t0 = Date.now();
    const drip = setInterval(() => {
      if (!cmdSlow.closed) cmdSlow.write('E');
      if (!dataSlow.closed) dataSlow.write('x');
    }, 1000);
    cleanups.push(() => clearInterval(drip));
    // normal clients keep being served meanwhile
    let servedWhileSlowConnected = 0;
    while (!cmdSlow.closed || !dataSlow.closed) {
      const r = await send(port, { raw: 'Subject: normal\r\n\r\nhi\r\n' });
      expect(r.code).toBe(250);
      if (!cmdSlow.closed && !dataSlow.closed) servedWhileSlowConnected++;
      expect(Date.now() - t0).toBeLessThan(30000);
    }
    expect(servedWhileSlowConnected).toBeGreaterThan(0);
    expect(await cmdSlow.reply()).toBe('421 4.4.2 relay-a.example.test Error: timeout exceeded');
    expect(await dataSlow.reply()).toBe('421 4.4.2 relay-a.example.test Error: timeout exceeded');
    // the slow message was never accepted
    await waitFor(() => pair.sink.messages.length === servedWhileSlowConnected || pair.sink.messages.length > 0, 20000, 'deliveries');
    expect(pair.sink.messages.every((m) => !m.to.includes('slow@x.test'))).toBe(true);
  });
});

describe('secrets', () => {
  it('never logs passwords, AUTH blobs or bodies; warns about a key file others can read', async () => {
    const PASSWORD = 'Very-S3cret-Passw0rd';
    const hash = await hashPassword(PASSWORD);
    const pair = await startPair(
      {},
      {
        'relay-a': {
          smtp: {
            tls: { cert: 'certs/relay-a.crt', key: 'certs/relay-a.key' },
            auth: { users: [{ username: 'alice', passwordHash: hash }], failureDelayMs: 0 },
          },
        },
      },
    );
    cleanups.push(() => pair.stop());
    const port = pair.a.addresses.smtp.port;
    const c = await raw(port);
    await hello(c);
    expect(await c.cmd(`AUTH PLAIN ${plain('alice', PASSWORD + 'x')}`)).toMatch(/^535 /);
    expect(await c.cmd(`AUTH PLAIN ${plain('alice', PASSWORD)}`)).toMatch(/^235 /);
    await c.cmd('MAIL FROM:<alice@x.test>');
    await c.cmd('RCPT TO:<bob@x.test>');
    await c.cmd('DATA');
    expect(await c.cmd('Subject: s\r\n\r\nBODY-MARKER-7c1e\r\n.')).toMatch(/^250 /);
    await waitFor(() => pair.sink.messages.length === 1, 20000, 'delivery');
    const text = JSON.stringify(pair.logs['relay-a']);
    for (const secret of [PASSWORD, plain('alice', PASSWORD), plain('alice', PASSWORD + 'x'), 'BODY-MARKER-7c1e']) {
      expect(text).not.toContain(secret);
    }
    expect(text).toContain('smtp: authenticated');

    // restart relay-a with its key readable by others
    c.close();
    await pair.a.stop();
    chmodSync(path.join(pair.files.certDir, 'relay-a.key'), 0o644);
    await pair.start('relay-a');
    const warn = pair.logs['relay-a']!.filter((l) => /secret file is readable/.test(String(l.msg)));
    expect(warn.map((w) => w.key).sort()).toEqual(['shadow.tls.key', 'smtp.tls.key']);
    expect(warn[0]!.mode).toBe('0644');
  });
});
