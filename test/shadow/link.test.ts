/**
 * The replication link's liveness, seen from the primary: a session that stops answering is
 * replaced (the wedge after a peer restart), and a peer counts as "up" for replication only
 * while this node's own requests reach it. relay-a reaches relay-b through a TCP proxy
 * (test/proxy.ts) that can go silent; relay-b reaches relay-a directly.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { startPair, send, waitFor, freePort, adminHttp, metricValue, type Pair } from '../helpers/index.js';
import { TcpProxy } from '../helpers/proxy.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const HEARTBEAT_MS = 500;
const TIMEOUT_MS = 1500;

/** A pair whose A→B link runs through a proxy. */
async function proxiedPair(): Promise<{ pair: Pair; proxy: TcpProxy }> {
  const bShadow = await freePort();
  const proxy = new TcpProxy(bShadow);
  await proxy.listen();
  cleanups.push(() => proxy.close());
  const pair = await startPair(
    { shadow: { heartbeatMs: HEARTBEAT_MS, timeoutMs: TIMEOUT_MS } },
    {
      'relay-a': { shadow: { peers: [{ name: 'relay-b', address: `127.0.0.1:${proxy.port}` }] } },
      'relay-b': { shadow: { listen: `127.0.0.1:${bShadow}` } },
    },
  );
  cleanups.push(() => pair.stop());
  return { pair, proxy };
}

/** Sends until a 250 (each attempt is one message); resolves with the time it took and the replies. */
async function sendUntil250(port: number, deadlineMs: number): Promise<{ ms: number; codes: number[] }> {
  const t0 = performance.now();
  const codes: number[] = [];
  for (;;) {
    const r = await send(port);
    codes.push(r.code);
    if (r.code === 250) return { ms: Math.round(performance.now() - t0), codes };
    if (performance.now() - t0 > deadlineMs) throw new Error(`no 250 within ${deadlineMs} ms: ${codes.join(' ')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('replication link liveness', () => {
  it('a session that stops answering (its connection silent, the peer up) is replaced: 250 again within heartbeat + timeout', async () => {
    const { pair, proxy } = await proxiedPair();
    const port = pair.a.addresses.smtp.port;
    expect((await send(port)).code).toBe(250);
    const before = proxy.connections;
    expect(before).toBeGreaterThan(0);
    // the wedge: relay-a's session keeps a connection that will never deliver again
    proxy.freezeExisting();
    const t0 = performance.now();
    // before the fix every message from here on got 451, forever
    const { codes } = await sendUntil250(port, 30000);
    const recoveredMs = Math.round(performance.now() - t0);
    console.log(`[link] frozen session: replies ${codes.join(' ')} | recovery ${recoveredMs} ms (target heartbeat + timeout = ${HEARTBEAT_MS + TIMEOUT_MS} ms)`);
    // a new TCP connection carried it
    expect(proxy.connections).toBeGreaterThan(before);
    expect(pair.logs['relay-a']!.some((l) => l.msg === 'shadow peer down')).toBe(true);
    const metrics = await adminHttp(pair.a.addresses.admin.port, '/metrics');
    expect(metricValue(metrics.text, 'shadowrelay_peer_reconnects_total', { peer: 'relay-b' })).toBeGreaterThanOrEqual(1);
    expect(metricValue(metrics.text, 'shadowrelay_replication_seconds_count', { peer: 'relay-b' })).toBeGreaterThanOrEqual(2);
  }, 60000);

  it('an idle session that goes silent is noticed by the link\'s own probes (heartbeat, PING) and replaced before the next message', async () => {
    const { pair, proxy } = await proxiedPair();
    const port = pair.a.addresses.smtp.port;
    expect((await send(port)).code).toBe(250);
    proxy.freezeExisting();
    // no message is sent: only the link's own probes can find out
    await waitFor(() => pair.logs['relay-a']!.some((l) => l.msg === 'shadow peer down'), 20000, 'relay-a notices the silent session');
    await waitFor(() => pair.a.shadow.anyPeerUp(), 20000, 'relay-a reconnects on its own');
    const r = await send(port);
    expect(r.code, r.response).toBe(250);
  }, 60000);

  it("one-way loss (relay-a → relay-b dropped): relay-a is down and not ready although relay-b's requests still reach it", async () => {
    const { pair, proxy } = await proxiedPair();
    const A = pair.a.addresses.admin.port;
    expect((await adminHttp(A, '/readyz')).status).toBe(200);
    proxy.drop('up');
    await waitFor(() => !pair.a.shadow.anyPeerUp(), 20000, 'relay-a sees its link down');
    const ups = () => pair.logs['relay-a']!.filter((l) => l.msg === 'shadow peer up').length;
    const upsBefore = ups();
    const contactBefore = pair.a.shadow.peers()[0]!.lastSeen!;
    // several of relay-b's heartbeats reach relay-a meanwhile; none may count as "up"
    const watchUntil = performance.now() + 4 * HEARTBEAT_MS;
    const statuses = new Set<number>();
    let reasons = '';
    while (performance.now() < watchUntil) {
      const r = await adminHttp(A, '/readyz');
      statuses.add(r.status);
      if (r.status === 503) reasons = r.text;
      await new Promise((res) => setTimeout(res, 100));
    }
    expect([...statuses]).toEqual([503]);
    expect(reasons).toMatch(/no shadow peer can take a copy: relay-b/);
    expect(ups()).toBe(upsBefore);
    // relay-b's requests still arrive: contact (for promotion timing) goes on
    expect(pair.a.shadow.peers()[0]!.lastSeen!).toBeGreaterThan(contactBefore);
    const r = await send(pair.a.addresses.smtp.port);
    expect(r.response).toMatch(/^451 4\.4\.1 /);
    const metrics = await adminHttp(A, '/metrics');
    expect(metricValue(metrics.text, 'shadowrelay_peer_up', { peer: 'relay-b' })).toBe(0);
    expect(metricValue(metrics.text, 'shadowrelay_peer_link_state', { peer: 'relay-b', state: 'up' })).toBe(0);
    // heal: back within heartbeat + timeout
    proxy.heal();
    const t0 = performance.now();
    await waitFor(() => pair.a.shadow.anyPeerUp(), 20000, 'relay-a up again');
    console.log(`[link] one-way loss healed: link up after ${Math.round(performance.now() - t0)} ms`);
    expect((await adminHttp(A, '/readyz')).status).toBe(200);
    expect((await send(pair.a.addresses.smtp.port)).code).toBe(250);
  }, 60000);
});
