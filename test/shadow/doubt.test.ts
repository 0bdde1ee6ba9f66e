/**
 * A shadow copy whose put got no answer: the peer stored it, its reply was lost. Before the
 * fix the primary answered 451 at once; a partition longer than promoteAfterMs then made
 * the peer promote and deliver that copy — a message refused to its client was delivered
 * (seen in test/system/netfaults.test.ts: "refused-but-delivered 2"). Now the primary asks the peer
 * first (`POST /v1/resolve`): held → 250, not held → 451 (and the peer refuses a late copy),
 * no answer in time → the connection is closed without a reply.
 * Both directions of the link run through TCP proxies on loopback (test/helpers/proxy.ts), so this
 * runs everywhere.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { startPair, send, waitFor, freePort, queueIdOf, adminHttp, metricValue, type Pair } from '../helpers/index.js';
import { TcpProxy } from '../helpers/proxy.js';
import http2 from 'node:http2';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { tmpDir, countTurns } from '../helpers/index.js';
import { writeCertSet } from '../../src/certs/index.js';
import { PeerClient, PeerError } from '../../src/shadow/client.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A fresh CA with relay-a and relay-b certificates (removed after the test); reads one of its files. */
async function certFiles(prefix: string): Promise<(name: string) => Buffer> {
  const { dir, cleanup } = tmpDir(prefix);
  cleanups.push(cleanup);
  await writeCertSet(dir, ['relay-a', 'relay-b']);
  return (n: string) => readFileSync(path.join(dir, n));
}

const TIMEOUT_MS = 1000;
const PROMOTE_MS = 4000;

/** A pair whose link runs through one proxy per direction (a → b and b → a). */
async function proxiedPair(): Promise<{ pair: Pair; ab: TcpProxy; ba: TcpProxy }> {
  const [aShadow, bShadow] = [await freePort(), await freePort()];
  const ab = new TcpProxy(bShadow);
  const ba = new TcpProxy(aShadow);
  await ab.listen();
  await ba.listen();
  cleanups.push(() => ab.close(), () => ba.close());
  const pair = await startPair(
    { shadow: { heartbeatMs: 300, timeoutMs: TIMEOUT_MS, promoteAfterMs: PROMOTE_MS, reconcileIntervalMs: 60000 }, delivery: { retry: { initialMs: 200, maxMs: 500, maxAgeMs: 432000000 } } },
    {
      'relay-a': { shadow: { listen: `127.0.0.1:${aShadow}`, peers: [{ name: 'relay-b', address: `127.0.0.1:${ab.port}` }] } },
      'relay-b': { shadow: { listen: `127.0.0.1:${bShadow}`, peers: [{ name: 'relay-a', address: `127.0.0.1:${ba.port}` }] } },
    },
  );
  cleanups.push(() => pair.stop());
  return { pair, ab, ba };
}

const storedOnB = (pair: Pair) => pair.logs['relay-b']!.filter((l) => l.msg === 'shadow stored').map((l) => String(l.id));

describe('a shadow copy in doubt (stored by the peer, its answer lost)', () => {
  it('the link comes back in time → the primary learns the peer holds it and answers 250 (delivered once)', async () => {
    const { pair, ab } = await proxiedPair();
    const port = pair.a.addresses.smtp.port;
    expect((await send(port)).code).toBe(250);
    const before = storedOnB(pair).length;
    // relay-b's answers to relay-a's requests are lost from now on
    ab.drop('down');
    const sent = send(port, { raw: 'Subject: doubt held\r\n\r\nx\r\n' });
    await waitFor(() => storedOnB(pair).length > before, 10000, 'relay-b stored the copy');
    await waitFor(() => pair.logs['relay-a']!.some((l) => l.msg === 'shadow copy in doubt (no answer from the peer): asking whether it stored it'), 10000, 'relay-a in doubt');
    ab.heal();
    const r = await sent;
    expect(r.code, r.response).toBe(250);
    const id = queueIdOf(r.response);
    expect(storedOnB(pair)).toContain(id);
    await waitFor(() => pair.sink.messages.filter((m) => m.raw.toString().includes('doubt held')).length === 1, 20000, 'delivered');
    expect(pair.logs['relay-a']!.filter((l) => l.msg === 'shadow copy confirmed after a doubt: the peer holds it')).toHaveLength(1);
  }, 60000);

  it('the peer answers it does not hold it → 451, and a late copy is refused', async () => {
    const { pair, ab } = await proxiedPair();
    const port = pair.a.addresses.smtp.port;
    expect((await send(port)).code).toBe(250);
    // the put never reaches relay-b: relay-a cannot tell (no answer), relay-b holds nothing
    ab.drop('up');
    const sent = send(port, { raw: 'Subject: doubt absent\r\n\r\nx\r\n' });
    await waitFor(() => pair.logs['relay-a']!.some((l) => l.msg === 'shadow copy in doubt (no answer from the peer): asking whether it stored it'), 10000, 'relay-a in doubt');
    ab.heal();
    const r = await sent;
    expect(r.response).toMatch(/^451 4\.4\.1 /);
    const id = String(pair.logs['relay-a']!.find((l) => l.msg === 'refused: shadow copy not confirmed')!.id);
    expect(pair.logs['relay-b']!.some((l) => l.msg === 'resolve: told the primary which doubtful copies are held' && (l.held as string[]).length === 0)).toBe(true);
    // a late copy of it (as if the lost put arrived now) is refused
    const { PeerClient } = await import('../../src/shadow/client.js');
    const { readFileSync } = await import('node:fs');
    const path = await import('node:path');
    const cert = (f: string) => readFileSync(path.join(pair.files.certDir, f));
    const asA = new PeerClient({ name: 'relay-b', host: '127.0.0.1', port: pair.b.addresses.shadow.port, tls: { ca: cert('ca.crt'), cert: cert('relay-a.crt'), key: cert('relay-a.key') } });
    cleanups.push(() => asA.close());
    await expect(asA.put(id, { sender: 'x@example.test', recipients: ['bob@example.test'], receivedAt: Date.now(), incarnation: pair.a.spool.incarnation }, Buffer.from('Subject: late\r\n\r\nx\r\n'), 5000)).rejects.toMatchObject({ status: 409 });
    expect(pair.b.spool.get(id)).toBeUndefined();
  }, 60000);

  it('then a partition longer than promoteAfterMs → no 451 for the copy the peer promotes and delivers (the client gets no reply and retries)', async () => {
    const { pair, ab, ba } = await proxiedPair();
    const port = pair.a.addresses.smtp.port;
    expect((await send(port)).code).toBe(250);
    const before = storedOnB(pair).length;
    ab.drop('down');
    const sent = send(port, { raw: 'Subject: doubt partition\r\n\r\nx\r\n' });
    await waitFor(() => storedOnB(pair).length > before, 10000, 'relay-b stored the copy');
    // now nothing passes either way: relay-b promotes relay-a's copies after promoteAfterMs
    ab.partition();
    ba.partition();
    await waitFor(() => pair.logs['relay-b']!.some((l) => l.msg === 'promoted'), PROMOTE_MS + 10000, 'relay-b promoted');
    const r = await sent;
    await waitFor(() => pair.sink.messages.some((m) => m.raw.toString().includes('doubt partition')), 20000, 'relay-b delivered the promoted copy');
    // before the fix: "451 4.4.1 …" here, for a message that was delivered
    expect(r.code, r.response).not.toBeGreaterThanOrEqual(400);
    expect(r.code).toBe(0);
    expect(pair.logs['relay-a']!.filter((l) => /^closed without a reply/.test(String(l.msg)))).toHaveLength(1);
    expect(metricValue((await adminHttp(pair.a.addresses.admin.port, '/metrics')).text, 'shadowrelay_messages_refused_total', { reason: 'shadow_unknown' })).toBe(1);
    ab.heal();
    ba.heal();
  }, 60000);
});

describe('the link client: a request whose session is destroyed under it', () => {
  it('rejects as unanswered (the peer may have acted on it) — never resolves as an answer with status 0', async () => {
    const f = await certFiles('sr-doubt-');
    // a peer that takes requests and never answers (frozen after reading them)
    const server = http2.createSecureServer({ ca: f('ca.crt'), cert: f('relay-b.crt'), key: f('relay-b.key'), requestCert: true });
    const seen: string[] = [];
    server.on('stream', (_s, h) => seen.push(String(h[':path'])));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
    const port = (server.address() as { port: number }).port;
    const c = new PeerClient({ name: 'relay-b', host: '127.0.0.1', port, tls: { ca: f('ca.crt'), cert: f('relay-a.crt'), key: f('relay-a.key') } });
    cleanups.push(() => c.close());
    const put = c.request('PUT', '/v1/messages/ABCDEFGH12', Buffer.from('x'), 10000);
    await waitFor(() => seen.length === 1, 5000, 'the peer got the put');
    // another request times out first: its session, the put's too, is destroyed
    await expect(c.request('POST', '/v1/heartbeat', Buffer.from('{}'), 200)).rejects.toBeInstanceOf(PeerError);
    const err = await put.then(
      (r) => new Error(`resolved as an answer: status ${r.status}`),
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PeerError);
    expect((err as PeerError).maybeDone).toBe(true);
    expect(c.state).not.toBe('up');
  }, 30000);
});

describe('the link client: reconnecting after a silent connect', () => {
  it('a connect that timed out (nothing answers) is followed at once by a new one, not after a backoff', async () => {
    const f = await certFiles('sr-doubt-');
    // a black hole: the TCP handshake completes, the TLS one never does
    const net = await import('node:net');
    const conns: import('node:net').Socket[] = [];
    const hole = net.createServer((sock) => conns.push(sock));
    await new Promise<void>((r) => hole.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise<void>((r) => (conns.forEach((x) => x.destroy()), hole.close(() => r()))));
    const port = (hole.address() as { port: number }).port;
    const c = new PeerClient({
      name: 'relay-b',
      host: '127.0.0.1',
      port,
      tls: { ca: f('ca.crt'), cert: f('relay-a.crt'), key: f('relay-a.key') },
      connectTimeoutMs: 200,
      backoffMs: { initialMs: 5000, maxMs: 5000 },
    });
    cleanups.push(() => c.close());
    // requests keep coming (as a link's do); each connect times out after 200 ms. Before:
    // after the first, "reconnecting in 2.5–5 s" without trying; now the next starts at once
    const t0 = Date.now();
    const ask = setInterval(() => void c.request('POST', '/v1/heartbeat', Buffer.from('{}'), 2000).catch(() => undefined), 20);
    await waitFor(() => conns.length >= 3, 2000, 'three connection attempts').finally(() => clearInterval(ask));
    expect(Date.now() - t0).toBeLessThan(2000);
  }, 30000);
});

describe('the link client: one flush per request', () => {
  it("a request's parts reach the peer in one flush: its body ends in the turn its headers arrive", async () => {
    const f = await certFiles('sr-flush-');
    // turns of this loop, shared by the client and the server
    const turn = countTurns();
    cleanups.push(() => turn.stop());
    const server = http2.createSecureServer({ ca: f('ca.crt'), cert: f('relay-b.crt'), key: f('relay-b.key'), requestCert: true });
    const turns: Array<{ headers: number; end: number }> = [];
    server.on('stream', (s) => {
      const headers = turn.now();
      s.on('data', () => undefined);
      s.on('end', () => {
        turns.push({ headers, end: turn.now() });
        s.respond({ ':status': 201 });
        s.end('{}');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
    const port = (server.address() as { port: number }).port;
    const c = new PeerClient({ name: 'relay-b', host: '127.0.0.1', port, tls: { ca: f('ca.crt'), cert: f('relay-a.crt'), key: f('relay-a.key') } });
    cleanups.push(() => c.close());
    // as a put goes: a small part (the metadata) and the message
    const parts = () => [Buffer.from('{"meta":1}\n'), Buffer.alloc(10_240, 120)];
    await c.request('PUT', '/v1/messages/ABCDEFGH12', parts(), 5000); // the session's handshake
    for (let i = 0; i < 5; i++) await c.request('PUT', '/v1/messages/ABCDEFGH12', parts(), 5000);
    expect(turns).toHaveLength(6);
    for (const t of turns.slice(1)) expect(t.end, 'the body came with its headers').toBe(t.headers);
  }, 30000);
});
