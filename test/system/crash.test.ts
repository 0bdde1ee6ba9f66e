/**
 * Issue 3 — node crashes, proved with real child processes killed with SIGKILL: crash
 * recovery under load, promotion of a dead primary's copies, reconcile when it comes back,
 * a primary that lost its disk (new incarnation).
 */
import { describe, it, expect, afterEach } from 'vitest';
import { rmSync } from 'node:fs';
import { waitFor, send, queueIdOf, waitForLine } from '../helpers/index.js';
import { startCluster, type Cluster } from '../helpers/cluster.js';
import { Load, compare, formatFigures, seeded, seedFromEnv, tokenOf } from '../helpers/load.js';
import { Spool } from '../../src/spool/index.js';
import { newQueueId } from '../../src/base/ids.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const FAST = {
  shadow: { heartbeatMs: 300, timeoutMs: 5000, reconcileIntervalMs: 1000 },
  delivery: { retry: { initialMs: 200, maxMs: 1000, maxAgeMs: 432000000 } },
};

async function cluster(o: Record<string, unknown> = {}, nodes: Record<string, Record<string, unknown>> = {}, opts = {}): Promise<Cluster> {
  const { deepMerge } = await import('../../tools/pair.js');
  const c = await startCluster(deepMerge(FAST, o), nodes, opts);
  cleanups.push(() => c.stop());
  return c;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Sends `n` tagged messages through a node; all must be answered 250. */
async function sendTokens(port: number, prefix: string, n: number): Promise<Map<string, string>> {
  const ids = new Map<string, string>();
  for (let i = 1; i <= n; i++) {
    const token = `${prefix}${i}`;
    const r = await send(port, {
      from: 'load@example.test',
      to: ['sink@example.test'],
      raw: `From: load@example.test\r\nTo: sink@example.test\r\nSubject: load ${token}\r\nMessage-ID: <${token}@t>\r\n\r\nx\r\n`,
    });
    expect(r.code, r.response).toBe(250);
    ids.set(token, queueIdOf(r.response));
  }
  return ids;
}

function deliveries(c: Cluster): Map<string, number> {
  const n = new Map<string, number>();
  for (const m of c.received) {
    const t = tokenOf(m);
    if (t) n.set(t, (n.get(t) ?? 0) + 1);
  }
  return n;
}

describe('crash recovery', () => {
  it('kill -9 of the primary at random points while 4 clients send (10 rounds): every 250 delivered, nothing refused delivered', async () => {
    const seed = seedFromEnv('CRASH_SEED');
    const rand = seeded(seed);
    console.log(`[crash] seed ${seed} (replay with CRASH_SEED=${seed})`);
    const c = await cluster();
    await c.start('relay-b');
    const load = new Load({ clients: 4, rand, ports: () => (c.up('relay-a') ? [c.smtpPorts['relay-a']] : []) });
    cleanups.push(() => load.stop());
    load.start();
    const rounds = 10;
    for (let round = 1; round <= rounds; round++) {
      await c.start('relay-a');
      // the random kill point: somewhere in 0.2–1.5 s of load
      await sleep(200 + Math.floor(rand() * 1300));
      await c.kill('relay-a', 'SIGKILL');
    }
    await c.start('relay-a');
    await sleep(300);
    await load.stop();
    await waitFor(
      () => compare(load.ledger, c.received).lost.length === 0 && c.spoolTotal('relay-a') === 0 && c.spoolTotal('relay-b') === 0,
      90000,
      'every 250 delivered and both spools empty',
    );
    const f = compare(load.ledger, c.received);
    console.log(`[crash] rounds ${rounds} | ${formatFigures(f)}`);
    if (f.noReplyDelivered.length) {
      console.log(`[crash] no reply but delivered (reply lost after the commit, a counted duplicate window): ${f.noReplyDelivered.join(' ')}`);
    }
    expect(f.ok250).toBeGreaterThan(rounds);
    expect(f.lost).toEqual([]);
    expect(f.refusedDelivered).toEqual([]);
  }, 180000);
});

describe('promotion and reconcile', () => {
  it('kill -9 of the primary with messages queued (next hop down), never restarted → the peer promotes after promoteAfterMs and delivers them all', async () => {
    const c = await cluster({}, { 'relay-b': { shadow: { promoteAfterMs: 3000 } } }, { sinkUp: false });
    const b = await c.start('relay-b');
    const a = await c.start('relay-a');
    const ids = await sendTokens(a.addresses.smtp.port, 'p', 5);
    await waitFor(() => c.spoolIds('relay-b', 'shadow').length === 5, 20000, 'five copies on B');
    const killedAt = Date.now();
    await c.kill('relay-a', 'SIGKILL');
    await waitFor(() => b.lines.filter((l) => l.msg === 'promoted').length === 5, 30000, 'five promotions on B');
    expect(Date.now() - killedAt).toBeGreaterThanOrEqual(3000 - 500); // not before promoteAfterMs (one tick of slack)
    for (const id of ids.values()) expect(b.lines.some((l) => l.msg === 'promoted' && l.id === id && l.reason === 'origin unreachable')).toBe(true);
    await c.sinkUp();
    await waitFor(() => deliveries(c).size === 5, 30000, 'five deliveries');
    await waitFor(() => c.spoolIds('relay-b').length === 0, 20000, 'B delivered everything');
    expect([...deliveries(c).values()].every((n) => n === 1)).toBe(true);
  }, 90000);

  it('the primary comes back after its peer promoted → it drops what was promoted: no message is delivered twice', async () => {
    const c = await cluster({}, { 'relay-b': { shadow: { promoteAfterMs: 3000 } } }, { sinkUp: false });
    const b = await c.start('relay-b');
    let a = await c.start('relay-a');
    const ids = await sendTokens(a.addresses.smtp.port, 'r', 5);
    await waitFor(() => c.spoolIds('relay-b', 'shadow').length === 5, 20000, 'five copies on B');
    await c.kill('relay-a', 'SIGKILL');
    await waitFor(() => b.lines.filter((l) => l.msg === 'promoted').length === 5, 30000, 'five promotions on B');
    await c.sinkUp();
    await waitFor(() => deliveries(c).size === 5, 30000, 'B delivered the five');
    // A comes back with its five queued copies and a next hop that works, while B is
    // unresponsive for a while: A must hold its delivery until it could ask B
    b.proc.kill('SIGSTOP');
    a = await c.start('relay-a');
    await sleep(1500); // an A that did not hold would deliver now
    b.proc.kill('SIGCONT');
    const rec = await waitForLine(a, (l) => l.msg === 'reconciled with peer', 20000, 'A reconciled');
    // a message whose accepted mark the kill caught in flight is in doubt: B promoted it, so
    // B answers that it holds it, and the reconcile drops it like the others
    expect(rec).toMatchObject({ promotedByPeer: 5, dropped: 5 });
    for (const id of ids.values()) expect(a.lines.some((l) => l.msg === 'dropped: the peer promoted and delivers this message' && l.id === id)).toBe(true);
    await waitFor(() => c.spoolTotal('relay-a') === 0 && c.spoolTotal('relay-b') === 0, 30000, 'both spools empty, promotion records forgotten');
    expect([...deliveries(c).entries()].filter(([, n]) => n > 1)).toEqual([]);
    expect(c.received).toHaveLength(5);
    expect(a.lines.some((l) => l.msg === 'delivered')).toBe(false);
  }, 90000);

  it('the primary comes back after a promotion while the next hop is still down → only one of the two copies is ever delivered', async () => {
    const c = await cluster({}, { 'relay-b': { shadow: { promoteAfterMs: 3000 } } }, { sinkUp: false });
    const b = await c.start('relay-b');
    let a = await c.start('relay-a');
    await sendTokens(a.addresses.smtp.port, 'q', 5);
    await waitFor(() => c.spoolIds('relay-b', 'shadow').length === 5, 20000, 'five copies on B');
    await c.kill('relay-a', 'SIGKILL');
    await waitFor(() => b.lines.filter((l) => l.msg === 'promoted').length === 5, 30000, 'five promotions on B');
    // both nodes now hold the five as their own primaries
    a = await c.start('relay-a');
    expect(await waitForLine(a, (l) => l.msg === 'reconciled with peer', 20000, 'A reconciled')).toMatchObject({ dropped: 5 });
    await c.sinkUp();
    await waitFor(() => deliveries(c).size === 5, 30000, 'five deliveries');
    await waitFor(() => c.spoolTotal('relay-a') === 0 && c.spoolTotal('relay-b') === 0, 30000, 'both spools empty');
    expect(c.received).toHaveLength(5);
  }, 90000);

  it('the primary comes back with a new, empty spool (lost disk) → the peer promotes its copies at once', async () => {
    // promoteAfterMs is long: only the incarnation change can explain a prompt promotion
    const c = await cluster({}, { 'relay-b': { shadow: { promoteAfterMs: 120000 } } }, { sinkUp: false });
    const b = await c.start('relay-b');
    const a = await c.start('relay-a');
    const oldInc = (a.lines.find((l) => l.msg === 'spool opened') as { incarnation: string }).incarnation;
    await sendTokens(a.addresses.smtp.port, 'd', 3);
    await waitFor(() => c.spoolIds('relay-b', 'shadow').length === 3, 20000, 'three copies on B');
    await c.kill('relay-a', 'SIGKILL');
    rmSync(c.dataDir('relay-a'), { recursive: true, force: true });
    const a2 = await c.start('relay-a');
    const newInc = (a2.lines.find((l) => l.msg === 'spool opened') as { incarnation: string }).incarnation;
    expect(newInc).not.toBe(oldInc);
    await waitFor(() => b.lines.filter((l) => l.msg === 'promoted' && l.reason === 'origin lost its spool').length === 3, 20000, 'prompt promotion');
    await c.sinkUp();
    await waitFor(() => deliveries(c).size === 3, 30000, 'three deliveries');
    await waitFor(() => c.spoolIds('relay-b').length === 0, 20000, 'B done');
    expect(c.received).toHaveLength(3);
  }, 90000);
});

describe('orphans and peer crashes', () => {
  it('an orphan shadow (the peer stored it, the primary gave no 250) is never delivered', async () => {
    const c = await cluster({ shadow: { timeoutMs: 1500, reconcileIntervalMs: 500 } });
    const b = await c.start('relay-b');
    const a = await c.start('relay-a');
    const port = a.addresses.smtp.port;
    expect((await send(port, { raw: 'Subject: load ok1\r\n\r\nx\r\n' })).code).toBe(250);

    // 1. the real path: B frozen → A gets no answer and cannot ask B either, so it closes
    // the connection without a reply (not 451: B may hold the copy); B may store it late
    b.proc.kill('SIGSTOP');
    const late = await send(port, { raw: 'Subject: load late1\r\n\r\nx\r\n' });
    b.proc.kill('SIGCONT');
    expect(late.code, late.response).toBe(0);
    const lateId = (await waitForLine(a, (l) => /^closed without a reply/.test(String(l.msg)), 5000, 'A hung up')).id as string;

    // 2. a copy A never had (as if A's discard had been lost): only the orphan check can drop it
    const { PeerClient } = await import('../../src/shadow/client.js');
    const { newQueueId } = await import('../../src/base/ids.js');
    const { readFileSync } = await import('node:fs');
    const path = await import('node:path');
    const cert = (f: string) => readFileSync(path.join(c.files.certDir, f));
    const asA = new PeerClient({ name: 'relay-b', host: '127.0.0.1', port: c.files.shadowPorts['relay-b']!, tls: { ca: cert('ca.crt'), cert: cert('relay-a.crt'), key: cert('relay-a.key') } });
    cleanups.push(() => asA.close());
    const incarnation = (a.lines.find((l) => l.msg === 'spool opened') as { incarnation: string }).incarnation;
    const orphanId = newQueueId();
    const raw = Buffer.from('Subject: load orphan1\r\n\r\nx\r\n');
    expect(await asA.put(orphanId, { sender: 'x@example.test', recipients: ['sink@example.test'], receivedAt: Date.now() - 60000, incarnation }, raw, 5000)).toBe('stored');

    await waitForLine(b, (l) => l.msg === 'orphan shadow dropped: its primary does not hold the message' && l.id === orphanId, 20000, 'orphan dropped by B');
    await waitFor(() => !c.spoolIds('relay-b').includes(lateId) && c.spoolTotal('relay-a') === 0, 20000, 'late copy gone, A owes nothing');
    const lateStored = b.lines.some((l) => l.msg === 'shadow stored' && l.id === lateId);
    console.log(`[orphan] late copy of the 451'd message ${lateStored ? 'was stored by B, then dropped' : 'never reached B\'s disk'}`);
    // neither exists on any node any more, so neither can ever be delivered
    expect(c.spoolIds('relay-b')).not.toContain(orphanId);
    expect(c.spoolIds('relay-a')).toEqual([]);
    await waitFor(() => c.received.length === 1, 10000, 'ok1 delivered');
    expect(c.received.map(tokenOf)).toEqual(['ok1']);
  }, 90000);

  it('kill -9 of the peer during load → no 250 without a shadow; after it restarts its copies are there and are discarded as the primary delivers', async () => {
    const seed = seedFromEnv('CRASH_SEED');
    const rand = seeded(seed);
    console.log(`[peer-crash] seed ${seed}`);
    const c = await cluster({}, {}, { sinkUp: false });
    await c.start('relay-b');
    await c.start('relay-a');
    const load = new Load({ clients: 3, rand, ports: () => [c.smtpPorts['relay-a']] });
    cleanups.push(() => load.stop());
    load.start();
    await sleep(500 + Math.floor(rand() * 1000));
    await c.kill('relay-b', 'SIGKILL');
    await waitFor(() => load.ledger.some((e) => e.outcome === '4xx'), 20000, 'a 451 while B is down');
    await load.stop();
    await c.start('relay-b');
    const ok = load.ledger.filter((e) => e.outcome === '250');
    expect(ok.length).toBeGreaterThan(0);
    const held = new Set(c.spoolIds('relay-b', 'shadow'));
    const missing = ok.map((e) => queueIdOf(e.response)).filter((id) => !held.has(id));
    expect(missing, 'every 250 has its copy on the restarted peer').toEqual([]);
    await c.sinkUp();
    await waitFor(() => compare(load.ledger, c.received).lost.length === 0, 60000, 'every 250 delivered');
    await waitFor(() => c.spoolTotal('relay-a') === 0 && c.spoolTotal('relay-b') === 0, 30000, 'copies discarded on B, A empty');
    const f = compare(load.ledger, c.received);
    console.log(`[peer-crash] ${formatFigures(f)}`);
    expect(f.refusedDelivered).toEqual([]);
    expect(f.noReplyDelivered).toEqual([]);
    expect(f.duplicateDeliveries).toBe(0);
  }, 120000);
});

describe('graceful stop', () => {
  it('SIGTERM during load → new clients get 421 4.3.2, the transaction in progress finishes, exit within the deadline, nothing accepted is lost', async () => {
    const c = await cluster({}, { 'relay-a': { node: { shutdownTimeoutMs: 8000 } } }, { sinkUp: false });
    await c.start('relay-b');
    let a = await c.start('relay-a');
    const port = a.addresses.smtp.port;
    const load = new Load({ clients: 3, rand: seeded(1), ports: () => (c.up('relay-a') ? [port] : []) });
    cleanups.push(() => load.stop());
    load.start();
    await waitFor(() => load.ledger.filter((e) => e.outcome === '250').length >= 10, 30000, 'some load accepted');

    const { RawSmtp } = await import('../helpers/index.js');
    const inflight = await RawSmtp.openData(port, { from: 'load@example.test', to: 'sink@example.test' });
    cleanups.push(() => inflight.close());
    inflight.write('Subject: load inflight1\r\n\r\nhalf of the body\r\n');

    const t0 = Date.now();
    a.proc.kill('SIGTERM');
    await waitForLine(a, (l) => l.msg === 'stopping', 10000, 'A stopping');
    const late = await RawSmtp.connect(port);
    cleanups.push(() => late.close());
    expect(await late.reply()).toBe('421 4.3.2 Service shutting down');
    // the transaction that was in progress still gets its answer
    inflight.write('the other half\r\n.\r\n');
    const end = await inflight.reply();
    expect(end).toMatch(/^250 2\.0\.0 Ok: queued as /);
    const code = await a.exited;
    const took = Date.now() - t0;
    console.log(`[sigterm] exit ${code} after ${took} ms`);
    expect(code).toBe(0);
    expect(took).toBeLessThan(8000 + 5000);
    delete c.nodes['relay-a'];
    await load.stop();

    // every 250 is in A's spool (the next hop was down) and is delivered after a restart
    const ok = [...load.ledger.filter((e) => e.outcome === '250').map((e) => queueIdOf(e.response)), queueIdOf(end!)];
    const queued = new Set(c.spoolIds('relay-a', 'primary'));
    expect(ok.filter((id) => !queued.has(id))).toEqual([]);
    a = await c.start('relay-a');
    await c.sinkUp();
    const tokens = [...load.ledger.filter((e) => e.outcome === '250').map((e) => e.token), 'inflight1'];
    await waitFor(() => tokens.every((t) => deliveries(c).has(t)), 60000, 'all accepted delivered');
    const f = compare(load.ledger, c.received);
    expect(f.refusedDelivered).toEqual([]);
    expect(f.duplicateDeliveries).toBe(0);
    // SIGINT stops a node the same way
    expect(await c.kill('relay-a', 'SIGINT')).toBe(0);
  }, 120000);
});

describe('restart with copies in doubt (the accepted mark is off the reply path)', () => {
  /** A message as the spool holds it, tagged with a token the sink can see. */
  const message = (token: string) => ({
    id: newQueueId(),
    sender: 'load@example.test',
    recipients: ['sink@example.test'],
    body: Buffer.from(`From: load@example.test\r\nSubject: load ${token}\r\nMessage-ID: <${token}@t>\r\n\r\nx\r\n`),
    receivedAt: Date.now(),
    client: '127.0.0.1',
  });

  /**
   * Leaves in A's stopped spool what a kill -9 between the 250 and its mark leaves: rows
   * still `spooled`; `onB` of them also stored on B as A's shadow copies.
   */
  async function crashState(c: Cluster, tokens: string[], onB: string[]): Promise<Map<string, string>> {
    const a = Spool.open(c.dataDir('relay-a'), { node: 'relay-a', busyTimeoutMs: 1000 });
    const b = Spool.open(c.dataDir('relay-b'), { node: 'relay-b', busyTimeoutMs: 1000 });
    const ids = new Map<string, string>();
    try {
      for (const t of tokens) {
        const m = message(t);
        ids.set(t, m.id);
        await a.spoolPrimary(m);
        if (onB.includes(t)) await b.storeShadow({ ...m, origin: 'relay-a', originIncarnation: a.incarnation });
      }
    } finally {
      await a.close();
      await b.close();
    }
    return ids;
  }

  it('a copy the peer holds is delivered once; a copy no peer holds is dropped, never delivered', async () => {
    const c = await cluster();
    // both spools exist (A's incarnation is made on its first start)
    await c.start('relay-b');
    await c.start('relay-a');
    await c.kill('relay-a', 'SIGTERM');
    await c.kill('relay-b', 'SIGTERM');
    const ids = await crashState(c, ['held1', 'held2', 'gone1'], ['held1', 'held2']);
    await c.start('relay-b');
    const a = await c.start('relay-a');
    await waitFor(() => deliveries(c).size === 2 && c.spoolTotal('relay-a') === 0 && c.spoolTotal('relay-b') === 0, 30000, 'the two held copies delivered, both spools empty');
    await sleep(500);
    expect(Object.fromEntries(deliveries(c))).toEqual({ held1: 1, held2: 1 });
    for (const t of ['held1', 'held2']) {
      expect(a.lines.some((l) => l.msg === 'queued: in doubt after a restart, and the peer holds the shadow copy' && l.id === ids.get(t))).toBe(true);
    }
    expect(a.lines.some((l) => l.msg === 'dropped: in doubt after a restart, and no peer holds the shadow copy (no 250 was sent)' && l.id === ids.get('gone1'))).toBe(true);
  }, 90000);

  it('no peer to ask: the copy waits promoteAfterMs, then is delivered and counted as a duplicate risk', async () => {
    const c = await cluster({}, { 'relay-a': { shadow: { promoteAfterMs: 3000 } } });
    await c.start('relay-b');
    await c.start('relay-a');
    await c.kill('relay-a', 'SIGTERM');
    await c.kill('relay-b', 'SIGTERM');
    await crashState(c, ['lone1'], []);
    const startedAt = Date.now();
    const a = await c.start('relay-a');
    await sleep(1500);
    expect(deliveries(c).size, 'not delivered while it waits for a peer').toBe(0);
    await waitFor(() => deliveries(c).get('lone1') === 1, 30000, 'delivered after promoteAfterMs');
    expect(Date.now() - startedAt).toBeGreaterThanOrEqual(3000 - 500);
    expect(a.lines.some((l) => String(l.msg).startsWith('queued without an answer: in doubt after a restart'))).toBe(true);
    // a discard is owed to the peer in case it held a copy; it goes once B is back
    await c.start('relay-b');
    await waitFor(() => c.spoolTotal('relay-a') === 0, 30000, "A's owed discard confirmed");
  }, 90000);
});
