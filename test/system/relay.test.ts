/**
 * The core relay path (issue 2): accept → spool → shadow copy → 250/451 → deliver → purge both.
 */
import { describe, it, expect, afterEach } from 'vitest';
import path from 'node:path';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { loadConfig } from '../../src/config/index.js';
import { Relay } from '../../src/relay.js';
import { makeCertSet } from '../../src/certs/index.js';
import { writePairConfigs } from '../../tools/pair.js';
import {
  startPair,
  send,
  queueIdOf,
  peekSpool,
  waitFor,
  Sink,
  tmpDir,
  memoryLogger,
  startNodeProcess,
  signedByPairCa,
  type Pair,
  type NodeProcess,
} from '../helpers/index.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const RAW =
  'From: alice@example.test\r\nTo: bob@example.test\r\nSubject: bytes\r\nMessage-ID: <core-1@test>\r\n\r\n' +
  'line one\r\n.leading dot\r\n\r\n8bit: caf\u00e9\r\n' +
  'x'.repeat(2000) +
  '\r\n';

describe('core relay path', () => {
  let pair: Pair;

  it('delivers byte-identical apart from the Received header, then both spools are empty', async () => {
    pair = await startPair();
    cleanups.push(() => pair.stop());
    const r = await send(pair.a.addresses.smtp.port, { raw: Buffer.from(RAW, 'utf8') });
    expect(r.code).toBe(250);
    expect(r.response).toMatch(/^250 2\.0\.0 Ok: queued as [A-Z0-9]+$/);
    const id = queueIdOf(r.response);
    await waitFor(() => pair.sink.messages.length === 1, 20000, 'delivery');
    const got = pair.sink.messages[0]!;
    expect(got.from).toBe('alice@example.test');
    expect(got.to).toEqual(['bob@example.test']);
    const text = got.raw.toString('utf8');
    const m = /^Received: from [^\r\n]*\r\n\tby relay-a\.example\.test \(shadowrelay\) with ESMTP id ([A-Z0-9]+)\r\n\tfor <bob@example\.test>; [^\r\n]+\r\n/.exec(text);
    expect(m, text.slice(0, 300)).not.toBeNull();
    expect(m![1]).toBe(id);
    expect(got.raw.subarray(Buffer.byteLength(m![0])).equals(Buffer.from(RAW, 'utf8'))).toBe(true);
    await waitFor(() => pair.a.spool.list().length === 0 && pair.b.spool.list().length === 0, 20000, 'purge on both');
    // relay-a deletes its owed discard only after relay-b's answer, a moment after relay-b purged
    await waitFor(() => pair.a.spool.counts().outbox === 0, 20000, 'the discard to be confirmed');
    expect(pair.a.spool.counts()).toEqual({ primary: 0, shadow: 0, outbox: 0 });
    expect(pair.b.spool.counts()).toEqual({ primary: 0, shadow: 0, outbox: 0 });
  });

  it('holds the shadow copy on B at the moment the client receives 250', async () => {
    pair = await startPair();
    cleanups.push(() => pair.stop());
    let release!: () => void;
    pair.sink.replyAfter = new Promise((r) => (release = r)); // delivery cannot finish before we look
    cleanups.push(() => release());
    const peek = peekSpool(pair.b.config.node.dataDir);
    cleanups.push(() => peek.close());
    const r = await send(pair.a.addresses.smtp.port);
    const shadowIds = peek.ids('shadow'); // B's database, read right at the 250
    expect(r.code).toBe(250);
    expect(shadowIds).toContain(queueIdOf(r.response));
    release();
    await waitFor(() => peek.ids().length === 0, 20000, 'shadow purge after delivery');
  });

  it('answers 5.7.1 to a client outside allowedNetworks, 552 5.3.4 to an oversized message, 452 4.5.3 past maxRecipients', async () => {
    pair = await startPair(
      {},
      { 'relay-a': { smtp: { allowedNetworks: ['127.0.0.1/32'], maxMessageSize: 20000, maxRecipients: 3 } } },
    );
    cleanups.push(() => pair.stop());
    const port = pair.a.addresses.smtp.port;
    const denied = await send(port, { localAddress: '127.0.0.2' });
    expect(denied.code).toBe(554);
    expect(denied.response).toMatch(/^554 5\.7\.1 <bob@example\.test>: Relay access denied/);
    const allowed = await send(port, { localAddress: '127.0.0.1' });
    expect(allowed.code).toBe(250);
    const { RawSmtp } = await import('../helpers/index.js');
    const c = await RawSmtp.connect(port);
    cleanups.push(() => c.close());
    await c.reply();
    await c.cmd('EHLO test');
    // a client that ignores SIZE and sends too much anyway
    expect(await c.cmd('MAIL FROM:<a@x.test>')).toMatch(/^250/);
    expect(await c.cmd('RCPT TO:<big@x.test>')).toMatch(/^250/);
    expect(await c.cmd('DATA')).toMatch(/^354/);
    expect(await c.cmd('Subject: big\r\n\r\n' + 'y'.repeat(30000) + '\r\n.')).toMatch(/^552 5\.3\.4 /);
    // a client that declares it
    expect(await c.cmd('MAIL FROM:<a@x.test> SIZE=30000')).toMatch(/^552 5\.3\.4 /);
    expect(await c.cmd('MAIL FROM:<a@x.test>')).toMatch(/^250/);
    for (const n of [1, 2, 3]) expect(await c.cmd(`RCPT TO:<r${n}@x.test>`)).toMatch(/^250/);
    expect(await c.cmd('RCPT TO:<r4@x.test>')).toMatch(/^452 4\.5\.3 /);
    expect(await c.cmd('DATA')).toMatch(/^354/);
    expect(await c.cmd('Subject: three\r\n\r\nx\r\n.')).toMatch(/^250 2\.0\.0 Ok: queued as /);
    await waitFor(() => pair.sink.messages.length === 2, 20000, 'two deliveries');
    expect(pair.sink.messages[1]!.to).toEqual(['r1@x.test', 'r2@x.test', 'r3@x.test']);
    expect(pair.sink.messages.some((m) => m.to.includes('big@x.test'))).toBe(false);
  });

  it('advertises the required EHLO extensions', async () => {
    pair = await startPair();
    cleanups.push(() => pair.stop());
    const { RawSmtp } = await import('../helpers/index.js');
    const c = await RawSmtp.connect(pair.a.addresses.smtp.port);
    cleanups.push(() => c.close());
    expect(await c.reply()).toMatch(/^220 relay-a\.example\.test ESMTP/);
    const ehlo = (await c.cmd('EHLO client.test'))!;
    for (const ext of ['SIZE', '8BITMIME', 'PIPELINING', 'ENHANCEDSTATUSCODES', 'SMTPUTF8']) expect(ehlo).toContain(ext);
    expect(ehlo).not.toContain('STARTTLS'); // no smtp.tls configured
  });
});

describe('shadow failures answer 451 and deliver nothing', () => {
  it('B stopped → 451; B paused past timeoutMs → no reply (the copy may be on B); B back → 250; the refused messages are never delivered', async () => {
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    const sink = new Sink();
    const sinkPort = await sink.listen();
    cleanups.push(() => sink.close());
    const files = await writePairConfigs({
      dir,
      sinkPort,
      overrides: { shadow: { timeoutMs: 1500, heartbeatMs: 500 }, log: { level: 'info' } },
    });
    // B is a real child process so that it can be frozen (SIGSTOP) to play a slow peer
    let b: NodeProcess = await startNodeProcess(files.configs['relay-b']!, 'relay-b');
    cleanups.push(() => void b.kill('SIGKILL'));
    const { log, lines } = memoryLogger('relay-a');
    const a = await Relay.start(loadConfig(files.configs['relay-a']!), { log });
    cleanups.push(() => a.stop());
    await waitFor(() => a.shadow.anyPeerUp(), 10000, 'A sees B');
    const port = a.addresses.smtp.port;

    const ok1 = await send(port);
    expect(ok1.code).toBe(250);
    await waitFor(() => sink.messages.length === 1, 20000, 'first delivery');

    // 1. B stopped
    await b.kill('SIGTERM');
    const down = await send(port, { raw: 'Subject: while-down\r\n\r\nx\r\n' });
    expect(down.code).toBe(451);
    expect(down.response).toMatch(/^451 4\.4\.1 /);

    // 2. B frozen: it accepts the TCP connection but never answers in time. The copy went
    // out, so B may hold it: while B cannot be asked, neither 250 nor 451 would be true and
    // the connection is closed without a reply (the client retries)
    b = await startNodeProcess(files.configs['relay-b']!, 'relay-b');
    await waitFor(() => a.shadow.anyPeerUp(), 10000, 'A sees B again');
    b.proc.kill('SIGSTOP');
    const slow = await send(port, { raw: 'Subject: while-slow\r\n\r\nx\r\n' });
    expect(slow.code, slow.response).toBe(0);
    b.proc.kill('SIGCONT');

    // 3. B back → 250 again
    await waitFor(() => a.shadow.anyPeerUp(), 10000, 'A sees B after SIGCONT');
    const ok2 = await send(port, { raw: 'Subject: after\r\n\r\nx\r\n' });
    expect(ok2.code).toBe(250);
    await waitFor(() => sink.messages.length === 2, 20000, 'second delivery');

    // the late copy B may have stored while frozen is discarded, never delivered
    await waitFor(() => a.spool.counts().outbox === 0, 20000, 'owed discards confirmed');
    await waitFor(() => a.spool.list().length === 0, 20000, 'A empty');
    const peekB = peekSpool(path.join(dir, 'data', 'relay-b'));
    cleanups.push(() => peekB.close());
    await waitFor(() => peekB.ids().length === 0, 20000, 'B empty');
    const subjects = sink.messages.map((m) => /Subject: ([^\r\n]*)/.exec(m.raw.toString())?.[1]);
    expect(subjects).not.toContain('while-down');
    expect(subjects).not.toContain('while-slow');
    expect(lines.filter((l) => l.msg === 'refused: shadow copy not confirmed')).toHaveLength(1);
    expect(lines.filter((l) => /^closed without a reply/.test(String(l.msg)))).toHaveLength(1);
  }, 90000);
});

describe('shadow endpoint refuses clients without the right certificate', () => {
  async function tryConnect(port: number, opts: tls.ConnectionOptions): Promise<'refused' | 'open'> {
    return new Promise((resolve) => {
      const s = tls.connect({ host: '127.0.0.1', port, ALPNProtocols: ['h2'], rejectUnauthorized: false, ...opts });
      let settled = false;
      const done = (v: 'refused' | 'open') => {
        if (!settled) {
          settled = true;
          s.destroy();
          resolve(v);
        }
      };
      s.on('error', () => done('refused'));
      s.on('close', () => done('refused'));
      // TLS 1.3 reports a refused client certificate after the handshake: write, then wait
      s.on('secureConnect', () => {
        s.write(Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'));
        s.once('data', () => done('open'));
      });
    });
  }

  it('refuses no certificate, another CA, and a right-CA certificate that names no peer', async () => {
    const pair = await startPair();
    cleanups.push(() => pair.stop());
    const port = pair.b.addresses.shadow.port;
    const own = pair.files.certDir;
    const ca = readFileSync(path.join(own, 'ca.crt'));
    const good = { ca, cert: readFileSync(path.join(own, 'relay-a.crt')), key: readFileSync(path.join(own, 'relay-a.key')) };
    expect(await tryConnect(port, good)).toBe('open');
    expect(await tryConnect(port, { ca })).toBe('refused');
    const other = await makeCertSet(['relay-a']);
    expect(await tryConnect(port, { ca, cert: other.nodes['relay-a']!.cert, key: other.nodes['relay-a']!.key })).toBe('refused');
    // signed by the right CA but for a node B does not know: refused by name
    const stranger = await signedByPairCa(own, 'mallory');
    expect(await tryConnect(port, { ca, ...stranger })).toBe('refused');
  });

  it('the client side refuses a server whose certificate (right CA) names another node', async () => {
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    const files = await writePairConfigs({ dir, sinkPort: 1 });
    const own = files.certDir;
    const read = (f: string) => readFileSync(path.join(own, f));
    const http2 = await import('node:http2');
    const { PeerClient } = await import('../../src/shadow/client.js');
    // a TLS endpoint that answers every request; only its certificate differs between runs
    const serve = async (cert: { cert: string | Buffer; key: string | Buffer }) => {
      const srv = http2.createSecureServer({ ...cert, ca: read('ca.crt'), requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' });
      srv.on('stream', (st) => {
        st.on('error', () => {});
        st.respond({ ':status': 200 });
        st.end(JSON.stringify({ name: 'relay-b', incarnation: 'x' }));
      });
      await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
      cleanups.push(() => new Promise<void>((r) => srv.close(() => r())));
      return (srv.address() as { port: number }).port;
    };
    const client = (port: number) => {
      const c = new PeerClient({ name: 'relay-b', host: '127.0.0.1', port, tls: { ca: read('ca.crt'), cert: read('relay-a.crt'), key: read('relay-a.key') } });
      cleanups.push(() => c.close());
      return c;
    };
    // control: the real relay-b certificate is accepted
    const good = await serve({ cert: read('relay-b.crt'), key: read('relay-b.key') });
    await expect(client(good).heartbeat({ name: 'relay-a', incarnation: 'i' }, 5000)).resolves.toMatchObject({ name: 'relay-b' });
    // mallory's certificate also names 127.0.0.1 and localhost: only the peer-name check can refuse it
    const mallory = await signedByPairCa(own, 'mallory', { ips: ['127.0.0.1'], dnsNames: ['localhost'] });
    const bad = await serve(mallory);
    await expect(client(bad).heartbeat({ name: 'relay-a', incarnation: 'i' }, 5000)).rejects.toThrow(/relay-b/);
  });
});
