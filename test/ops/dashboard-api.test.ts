/**
 * The dashboard's API and access rules on a real pair, and `shadowrelay status` against a
 * running node and a stopped one: paging parameters and bad input get a 4xx naming the
 * problem (never a crash), the token guards the data (not the static files), a tokenless
 * dashboard is served only on loopback and to loopback Host names, a cross-origin action is
 * refused, the live stream carries overviews, and delete-with-bounce bounces to the sender.
 */
import { describe, it, expect, afterEach } from 'vitest';
import http from 'node:http';
import { startPair, send, queueIdOf, waitFor, runCli, freePort, type Pair } from '../helpers/index.js';
import { loadConfig } from '../../src/config/index.js';
import { Relay } from '../../src/relay.js';
import { memoryLogger } from '../helpers/index.js';

const TOKEN = 'api-test-token-0123456789abcdef';
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  json: () => Record<string, unknown>;
}

function request(port: number, method: string, path: string, headers: Record<string, string> = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, json: () => JSON.parse(body) as Record<string, unknown> }));
    });
    req.on('error', reject);
    req.end();
  });
}

const auth = { authorization: `Bearer ${TOKEN}` };

async function pairWithToken(opts: { sinkDown?: boolean } = {}): Promise<{ pair: Pair; port: number }> {
  const port = await freePort();
  const pair = await startPair({}, { 'relay-a': { admin: { listen: `127.0.0.1:${port}`, token: TOKEN } } }, opts);
  cleanups.push(() => pair.stop());
  return { pair, port };
}

describe('dashboard API', () => {
  it('guards the data with the token, not the static files; refuses bad paging input with 400 naming the parameter', async () => {
    const { pair, port } = await pairWithToken({ sinkDown: true });
    const page = await request(port, 'GET', '/');
    expect(page.status).toBe(200);
    expect(page.headers['content-security-policy']).toMatch(/default-src 'self'; script-src 'self'/);
    expect(page.body).not.toMatch(/<script>|style=|https?:\/\//);
    expect((await request(port, 'GET', '/ui/app.js')).status).toBe(200);
    expect((await request(port, 'GET', '/ui/uPlot.iife.min.js')).headers['content-type']).toMatch(/javascript/);
    expect((await request(port, 'GET', '/ui/../../package.json', auth)).status).toBe(404);
    expect((await request(port, 'GET', '/ui/nothing.js')).status).toBe(404);
    expect((await request(port, 'GET', '/api/overview')).status).toBe(401);
    expect((await request(port, 'GET', '/api/events')).status).toBe(401);
    expect((await request(port, 'GET', '/queue?limit=10', { authorization: 'Bearer wrong-token-wrong-token' })).status).toBe(401);

    const o = (await request(port, 'GET', '/api/overview', auth)).json() as { node: string; peers: Array<{ name: string; link: string }>; certificates: Array<{ certificate: string; secondsLeft: number }> };
    expect(o.node).toBe('relay-a');
    expect(o.peers).toEqual([expect.objectContaining({ name: 'relay-b', link: 'up' })]);
    expect(o.certificates.map((c) => c.certificate).sort()).toEqual(['shadow_ca', 'shadow_cert']);
    expect(o.certificates.every((c) => c.secondsLeft > 86400)).toBe(true);

    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push(queueIdOf((await send(pair.a.addresses.smtp.port, { from: `s${i}@example.test` })).response));
    const p = (await request(port, 'GET', '/queue?limit=2&order=oldest', auth)).json() as { total: number; messages: Array<{ id: string }> };
    expect(p.total).toBe(3);
    expect(p.messages.map((m) => m.id)).toEqual(ids.slice(0, 2));
    const s = (await request(port, 'GET', '/queue?limit=10&q=s2%40', auth)).json() as { total: number; messages: Array<{ id: string }> };
    expect(s.messages.map((m) => m.id)).toEqual([ids[2]]);

    for (const [q, why] of [
      ['limit=100000', /limit must be an integer from 1 to 500/],
      ['limit=abc', /limit must be/],
      ['limit=0', /limit must be/],
      ['offset=-1', /offset must be/],
      ['offset=1e9', /offset must be/],
      ['state=bogus', /state must be one of all, queued, deferred, held, shadow, spooled/],
      ['order=sideways', /order must be oldest or newest/],
      [`q=${'x'.repeat(201)}`, /q must be at most 200/],
    ] as const) {
      const r = await request(port, 'GET', `/queue?${q}`, auth);
      expect(r.status, q).toBe(400);
      expect(String(r.json().error), q).toMatch(why);
    }
    expect((await request(port, 'GET', '/queue/not!an!id', auth)).status).toBe(404);
    expect((await request(port, 'GET', `/queue/${'A'.repeat(65)}`, auth)).status).toBe(404);
    expect((await request(port, 'DELETE', '/queue/ABCDEF0123?bounce=1', auth)).status).toBe(404);
    expect((await request(port, 'POST', '/api/overview', auth)).status).toBe(405);
    // a page on another site may not act on the queue through the operator's browser
    const csrf = await request(port, 'POST', `/queue/${ids[0]}/hold`, { ...auth, origin: 'http://evil.example' });
    expect(csrf.status).toBe(403);
    expect(pair.a.spool.get(ids[0]!)!.state).toBe('queued');
    // the daemon is still fine
    expect((await request(port, 'GET', '/healthz')).status).toBe(200);
  });

  it('streams overviews and a queue event when the queue changes (Server-Sent Events with the bearer header)', async () => {
    const { pair, port } = await pairWithToken({ sinkDown: true });
    const events: Array<{ event: string; data: string }> = [];
    const req = http.request({ host: '127.0.0.1', port, path: '/api/events', headers: auth });
    const done = new Promise<void>((resolve) => {
      req.on('response', (res) => {
        expect(res.headers['content-type']).toMatch(/^text\/event-stream/);
        let buf = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          buf += d;
          let end: number;
          while ((end = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, end);
            buf = buf.slice(end + 2);
            const ev = /^event: (.*)$/m.exec(block)?.[1];
            const data = /^data: (.*)$/m.exec(block)?.[1];
            if (ev && data) events.push({ event: ev, data });
          }
        });
        res.on('close', () => resolve());
      });
      req.on('error', () => resolve());
    });
    req.end();
    await waitFor(() => events.some((e) => e.event === 'overview'), 10000, 'a first overview');
    const before = events.filter((e) => e.event === 'queue').length;
    const id = queueIdOf((await send(pair.a.addresses.smtp.port)).response);
    await waitFor(() => events.filter((e) => e.event === 'queue').length > before, 10000, 'a queue event');
    const lastOverview = JSON.parse(events.filter((e) => e.event === 'overview').at(-1)!.data) as { queue: { queued: number; deferred: number } };
    expect(lastOverview.queue.queued + lastOverview.queue.deferred).toBe(1);
    expect(id).toBeTruthy();
    req.destroy();
    await done;
  });

  it('delete with a bounce: the pending recipients fail, the sender gets a DSN saying the operator deleted it, both copies go', async () => {
    const { pair, port } = await pairWithToken({ sinkDown: true });
    const id = queueIdOf((await send(pair.a.addresses.smtp.port, { from: 'alice@example.test', to: ['bob@example.test'] })).response);
    await waitFor(() => (pair.a.spool.get(id)?.attempts ?? 0) >= 1, 20000, 'a failed first attempt');
    expect((await request(port, 'POST', `/queue/${id}/hold`, auth)).status).toBe(200);
    const r = await request(port, 'DELETE', `/queue/${id}?bounce=1`, auth);
    expect(r.status).toBe(200);
    expect(String(r.json().result)).toMatch(/1 recipient\(s\) failed; bounce/);
    await waitFor(() => pair.a.spool.get(id) === undefined, 20000, 'the message to leave once its bounce is accepted');
    await waitFor(() => pair.b.spool.get(id) === undefined, 20000, "the peer's copy discarded");
    await pair.openSink();
    await waitFor(() => pair.sink.messages.length === 1, 30000, 'the bounce at the next hop');
    const dsn = pair.sink.messages[0]!;
    expect(dsn.from).toBe('');
    expect(dsn.to).toEqual(['alice@example.test']);
    const text = dsn.raw.toString('utf8');
    expect(text).toMatch(/Status: 5\.0\.0/);
    expect(text).toMatch(/deleted by the operator/);
    expect(pair.logs['relay-a']!.some((l) => l.msg === 'deleted by the operator with a bounce to the sender' && l.id === id)).toBe(true);
  });

  it('without a token: served on loopback to loopback Host names only; on another address refused, with a log line', async () => {
    const pair = await startPair();
    cleanups.push(() => pair.stop());
    const port = pair.a.addresses.admin.port;
    expect((await request(port, 'GET', '/')).status).toBe(200);
    expect((await request(port, 'GET', '/api/overview')).status).toBe(200);
    // a DNS-rebinding page reaches 127.0.0.1 under its own name
    const rebound = await request(port, 'GET', '/api/overview', { host: `evil.example:${port}` });
    expect(rebound.status).toBe(403);
    expect(String(rebound.json().error)).toMatch(/not a loopback name/);
    expect(pair.logs['relay-a']!.some((l) => l.msg === 'dashboard served')).toBe(true);

    // the same node listening on every address, without a token: no dashboard
    const { log, lines } = memoryLogger('relay-c');
    const cfg = loadConfig(pair.files.configs['relay-a']!);
    const wide = await Relay.start(
      {
        ...cfg,
        node: { ...cfg.node, name: 'relay-c', dataDir: `${cfg.node.dataDir}-c` },
        smtp: { ...cfg.smtp, listen: { host: '127.0.0.1', port: 0 } },
        // a peer nobody answers for: relay-b must not hear from a third node with relay-a's certificate
        shadow: { ...cfg.shadow, listen: { host: '127.0.0.1', port: 0 }, peers: [{ name: 'relay-b', address: { host: '127.0.0.1', port: await freePort() } }] },
        admin: { ...cfg.admin, listen: { host: '0.0.0.0', port: 0 } },
      },
      { log },
    );
    cleanups.push(() => wide.stop());
    const r = await request(wide.addresses.admin.port, 'GET', '/');
    expect(r.status).toBe(403);
    expect(String(r.json().error)).toMatch(/admin\.listen \(0\.0\.0\.0:\d+\) is not a loopback address and no admin\.token is set/);
    expect(lines.some((l) => l.msg === 'dashboard disabled: set admin.token (or admin.tokenFile) to serve it on this address')).toBe(true);
    // the probes are unaffected
    expect((await request(wide.addresses.admin.port, 'GET', '/healthz')).status).toBe(200);
  });
});

describe('shadowrelay status', () => {
  it('prints one screen (and --json) from the running node, and one line with a non-zero exit when it is stopped', async () => {
    const { pair } = await pairWithToken({ sinkDown: true });
    const cfg = pair.files.configs['relay-a']!;
    await send(pair.a.addresses.smtp.port);
    await waitFor(() => pair.a.spool.list().some((m) => m.attempts >= 1), 20000, 'a deferred message');
    const r = await runCli(['status', '--config', cfg]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^relay-a {2}shadowrelay \S+ {2}up \S+ {2}ready$/m);
    expect(r.stdout).toMatch(/^relay-b +up +[\d.]+ +\S+ ago/m);
    expect(r.stdout).toMatch(/^queue +queued 0 {2}deferred 1 {2}held 0/m);
    expect(r.stdout).toMatch(/^oldest +primary \d+s/m);
    expect(r.stdout).toMatch(/ECONNREFUSED/);
    expect(r.stdout).toMatch(/^ {2}shadow_cert +CN=relay-a +expires \d{4}-\d\d-\d\d .* UTC +\d+ days$/m);
    const j = await runCli(['status', '--config', cfg, '--json']);
    expect(j.code).toBe(0);
    const o = JSON.parse(j.stdout) as { node: string; peers: Array<{ name: string; link: string }>; queue: { deferred: number } };
    expect(o.node).toBe('relay-a');
    expect(o.peers[0]).toMatchObject({ name: 'relay-b', link: 'up' });
    expect(o.queue.deferred).toBe(1);

    await pair.b.stop();
    await waitFor(() => !pair.a.shadow.anyPeerUp(), 20000, 'relay-b down');
    const down = await runCli(['status', '--config', cfg]);
    expect(down.code).toBe(0);
    expect(down.stdout).toMatch(/NOT READY: no shadow peer can take a copy/);
    expect(down.stdout).toMatch(/^relay-b +DOWN/m);

    await pair.a.stop();
    const stopped = await runCli(['status', '--config', cfg]);
    expect(stopped.stdout).toBe('');
    expect(stopped.code).toBe(2);
    expect(stopped.stderr).toMatch(/^shadowrelay: relay-a is not running \(nothing answers on 127\.0\.0\.1:\d+: ECONNREFUSED\)\n$/);
  });
});
