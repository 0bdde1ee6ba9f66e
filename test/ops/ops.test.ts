/**
 * Operations (issue 5): metrics, admin token, queue tools through the admin endpoint (and on
 * the spool file when the daemon is down), log lines per lifecycle step, spool backup, health.
 */
import { describe, it, expect, afterEach } from 'vitest';
import path from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import YAML from 'yaml';
import { formatHostPort } from '../../src/base/net.js';
import {
  startPair,
  send,
  queueIdOf,
  waitFor,
  waitForMetric,
  runCli,
  adminHttp,
  metricValue,
  freePort,
  tmpDir,
  type Pair,
} from '../helpers/index.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A pair whose admin endpoints listen on known ports (the CLI finds them in the config files). */
async function pairWithAdmin(
  overrides: Record<string, unknown> = {},
  nodeOverrides: Record<string, Record<string, unknown>> = {},
): Promise<Pair> {
  const ports = { 'relay-a': await freePort(), 'relay-b': await freePort() };
  const own: Record<string, Record<string, unknown>> = {};
  for (const n of ['relay-a', 'relay-b'] as const) {
    own[n] = { ...(nodeOverrides[n] ?? {}), admin: { ...((nodeOverrides[n]?.admin as object) ?? {}), ...((overrides.admin as object) ?? {}), listen: `127.0.0.1:${ports[n]}` } };
  }
  const pair = await startPair(overrides, own);
  cleanups.push(() => pair.stop());
  return pair;
}

const DEFER = () => ({ code: 451, message: '4.2.0 Mailbox busy, try later' });
// long enough that only an operator's action triggers a second attempt during a test
const SLOW_RETRY = { delivery: { retry: { initialMs: 600000, maxMs: 600000 } } };

async function metrics(port: number, token?: string): Promise<string> {
  const r = await adminHttp(port, '/metrics', { token });
  expect(r.status).toBe(200);
  return r.text;
}

describe('metrics', () => {
  it('counts accepted, shadowed, delivered, deferred, refused by reason; reads queue, peers, discards, spool size', async () => {
    const pair = await pairWithAdmin(SLOW_RETRY, { 'relay-a': { smtp: { allowedNetworks: ['127.0.0.1/32'] } } });
    const A = pair.a.addresses.admin.port;
    const B = pair.b.addresses.admin.port;

    const ok = await send(pair.a.addresses.smtp.port);
    expect(ok.code).toBe(250);
    // delivered, purged on A, and its shadow discarded on B (discards travel in batches)
    await waitFor(
      () => pair.sink.messages.length === 1 && pair.a.spool.list().length === 0 && pair.b.spool.counts().shadow === 0,
      20000,
      'delivery and discard',
    );
    let m = await metrics(A);
    expect(metricValue(m, 'shadowrelay_messages_accepted_total', { node: 'relay-a' })).toBe(1);
    expect(metricValue(m, 'shadowrelay_messages_degraded_total')).toBe(0);
    expect(metricValue(m, 'shadowrelay_shadow_seconds_count')).toBe(1);
    expect(metricValue(m, 'shadowrelay_deliveries_total', { outcome: 'delivered' })).toBe(1);
    expect(metricValue(m, 'shadowrelay_delivery_delay_seconds_count', { outcome: 'delivered' })).toBe(1);
    expect(metricValue(m, 'shadowrelay_delivery_attempt_seconds_count')).toBe(1);
    expect(metricValue(m, 'shadowrelay_peer_up', { peer: 'relay-b' })).toBe(1);
    expect(metricValue(m, 'shadowrelay_peer_heartbeat_age_seconds', { peer: 'relay-b' })).toBeGreaterThanOrEqual(0);
    expect(metricValue(m, 'shadowrelay_spool_bytes')).toBeGreaterThan(0);
    expect(metricValue(m, 'shadowrelay_promotions_total')).toBeUndefined(); // no promotion yet: no series
    expect(m).toContain('# TYPE shadowrelay_duplicate_risk_total counter');
    expect(m).toContain('process_resident_memory_bytes');

    // relay denied: 127.0.0.2 is outside relay-a's allowedNetworks here
    const denied = await send(pair.a.addresses.smtp.port, { localAddress: '127.0.0.2' });
    expect(denied.code).toBe(554);
    // a deferred delivery: queued on A, its shadow on B
    pair.sink.rcptPolicy = DEFER;
    const deferred = await send(pair.a.addresses.smtp.port);
    const id = queueIdOf(deferred.response);
    await waitFor(() => pair.a.spool.get(id)?.attempts === 1, 20000, 'first attempt');
    m = await metrics(A);
    expect(metricValue(m, 'shadowrelay_messages_refused_total', { reason: 'relay_denied' })).toBe(1);
    expect(metricValue(m, 'shadowrelay_deliveries_total', { outcome: 'deferred' })).toBe(1);
    expect(metricValue(m, 'shadowrelay_queue_messages', { role: 'primary', state: 'queued' })).toBe(1);
    expect(metricValue(m, 'shadowrelay_queue_oldest_age_seconds', { role: 'primary' })).toBeGreaterThan(0);
    const mb = await metrics(B);
    expect(metricValue(mb, 'shadowrelay_queue_messages', { role: 'shadow', state: 'shadow' })).toBe(1);
    expect(metricValue(mb, 'shadowrelay_queue_messages', { role: 'primary', state: 'queued' })).toBe(0);

    // the operator deletes it: a discard is owed to B until B confirms
    await pair.b.stop();
    const del = await runCli(['queue', 'delete', id, '--config', pair.files.configs['relay-a']!]);
    expect(del.code).toBe(0);
    m = await metrics(A);
    expect(metricValue(m, 'shadowrelay_discards_pending')).toBe(1);
    // peer down: the next message is refused with 451 and counted by reason
    const refused = await send(pair.a.addresses.smtp.port);
    expect(refused.code).toBe(451);
    m = await metrics(A);
    expect(metricValue(m, 'shadowrelay_messages_refused_total', { reason: 'shadow_unconfirmed' })).toBe(1);
    expect(metricValue(m, 'shadowrelay_peer_up', { peer: 'relay-b' })).toBe(0);
    expect(metricValue(m, 'shadowrelay_messages_accepted_total')).toBe(2);
  });

  it('degraded acceptance (onFailure: accept, peer down) is counted apart from shadowed messages', async () => {
    const pair = await pairWithAdmin({ shadow: { onFailure: 'accept' } });
    await pair.b.stop();
    const r = await send(pair.a.addresses.smtp.port);
    expect(r.code).toBe(250);
    const m = await metrics(pair.a.addresses.admin.port);
    expect(metricValue(m, 'shadowrelay_messages_accepted_total')).toBe(1);
    expect(metricValue(m, 'shadowrelay_messages_degraded_total')).toBe(1);
    expect(metricValue(m, 'shadowrelay_shadow_seconds_count')).toBe(0);
    expect(metricValue(m, 'shadowrelay_messages_refused_total', { reason: 'shadow_unconfirmed' })).toBe(0);
  });

  it('the promotion and duplicate-risk hooks reach /metrics', async () => {
    const pair = await pairWithAdmin();
    pair.a.metrics.promoted('relay-b', 3);
    pair.a.metrics.duplicateRisk('delivered_without_reconcile');
    const m = await metrics(pair.a.addresses.admin.port);
    expect(metricValue(m, 'shadowrelay_promotions_total', { peer: 'relay-b' })).toBe(1);
    expect(metricValue(m, 'shadowrelay_promoted_messages_total', { peer: 'relay-b' })).toBe(3);
    expect(metricValue(m, 'shadowrelay_duplicate_risk_total', { kind: 'delivered_without_reconcile' })).toBe(1);
    // each node has its own registry
    const mb = await metrics(pair.b.addresses.admin.port);
    expect(metricValue(mb, 'shadowrelay_promotions_total', { peer: 'relay-b' })).toBeUndefined();
  });
});

describe('admin endpoint', () => {
  it('with admin.token: /metrics and /queue need the bearer token, the probes do not; the CLI sends it', async () => {
    const token = 'tok-' + 'x'.repeat(20);
    const pair = await pairWithAdmin({ admin: { token } });
    const A = pair.a.addresses.admin.port;
    expect((await adminHttp(A, '/healthz')).status).toBe(200);
    expect((await adminHttp(A, '/readyz')).status).toBe(200);
    for (const p of ['/metrics', '/queue']) {
      const no = await adminHttp(A, p);
      expect(no.status).toBe(401);
      expect((await adminHttp(A, p, { token: 'wrong-' + token })).status).toBe(401);
      expect((await adminHttp(A, p, { token })).status).toBe(200);
    }
    expect((await adminHttp(A, '/queue/flush', { method: 'GET', token })).status).toBe(405);
    expect((await adminHttp(A, '/nope', { token })).status).toBe(404);
    const list = await runCli(['queue', 'list', '--config', pair.files.configs['relay-a']!]);
    expect(list.stderr).toBe('');
    expect(list.stdout).toContain('Mail queue is empty');
    // a config with the wrong token: the CLI says so and exits 2
    const doc = YAML.parse(readFileSync(pair.files.configs['relay-a']!, 'utf8')) as { admin: Record<string, unknown> };
    const tokenFile = path.join(pair.dir, 'token');
    writeFileSync(tokenFile, 'not-the-right-token-at-all\n');
    doc.admin = { listen: doc.admin.listen, tokenFile };
    const wrong = path.join(pair.dir, 'wrong-token.yaml');
    writeFileSync(wrong, YAML.stringify(doc));
    const r = await runCli(['queue', 'flush', '--config', wrong]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/wrong bearer token/);
  });
});

describe('queue tools', () => {
  it('list, show, hold, flush, release, retry, delete, delete --all-failed; refusals name the reason', async () => {
    const pair = await pairWithAdmin(SLOW_RETRY);
    const cfgA = pair.files.configs['relay-a']!;
    const cfgB = pair.files.configs['relay-b']!;
    const cli = (...args: string[]) => runCli(['queue', ...args]);
    pair.sink.rcptPolicy = DEFER;

    const r1 = await send(pair.a.addresses.smtp.port, {
      raw: 'From: alice@example.test\r\nTo: bob@example.test\r\nSubject: queue tools\r\n\r\nthe body line\r\n',
    });
    const id1 = queueIdOf(r1.response);
    await waitFor(() => pair.a.spool.get(id1)?.attempts === 1, 20000, 'first attempt');

    const list = await cli('list', '--config', cfgA);
    expect(list.code).toBe(0);
    expect(list.stderr).toBe('');
    expect(list.stdout).toMatch(new RegExp(`^${id1} +primary/queued .* alice@example\\.test$`, 'm'));
    expect(list.stdout).toContain('bob@example.test [pending] (451 4.2.0 Mailbox busy, try later)');
    expect(list.stdout).toMatch(/in 1 Request\./);
    const json = JSON.parse((await cli('list', '--config', cfgA, '--json')).stdout) as Array<{ id: string; attempts: number }>;
    expect(json.map((m) => m.id)).toEqual([id1]);
    // B lists the shadow copy
    expect((await cli('list', '--config', cfgB)).stdout).toMatch(new RegExp(`^${id1} +shadow/shadow`, 'm'));

    const show = await cli('show', id1, '--config', cfgA);
    expect(show.code).toBe(0);
    expect(show.stdout).toContain(`queue_id: ${id1}`);
    expect(show.stdout).toContain('sender: alice@example.test');
    expect(show.stdout).toContain('recipient: bob@example.test [pending] (451 4.2.0 Mailbox busy, try later)');
    expect(show.stdout).toContain('client: 127.0.0.1');
    expect(show.stdout).toContain('accepted: shadow copy on relay-b');
    expect(show.stdout).toContain('1 delivery attempt(s), last: 451 4.2.0 Mailbox busy, try later');
    expect(show.stdout).toMatch(/^Received: from .* by relay-a\.example\.test|^Received: from /m);
    expect(show.stdout).toContain('Subject: queue tools');
    expect(show.stdout).not.toContain('the body line');
    const body = await cli('show', id1, '--config', cfgA, '--body');
    expect(body.stdout).toContain('the body line');
    const showJson = JSON.parse((await cli('show', id1, '--config', cfgA, '--json')).stdout) as { history: unknown[]; headers: string };
    expect(showJson.headers).toContain('Subject: queue tools');
    expect(showJson.history.length).toBeGreaterThan(2);

    // hold: flush does not touch it, a second hold is refused
    const hold = await cli('hold', id1, '--config', cfgA);
    expect(hold.stdout).toBe(`${id1}: held\n`);
    expect(pair.a.spool.get(id1)?.state).toBe('held');
    expect((await cli('list', '--config', cfgA)).stdout).toMatch(new RegExp(`^${id1} +primary/held`, 'm'));
    const again = await cli('hold', id1, '--config', cfgA);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain(`${id1}: is already on hold`);
    const flush = await cli('flush', '--config', cfgA);
    expect(flush.stdout).toBe('0 messages due now\n');
    expect(pair.a.spool.due(Date.now() + 1000, 10)).not.toContain(id1);
    const retryHeld = await cli('retry', id1, '--config', cfgA);
    expect(retryHeld.code).toBe(1);
    expect(retryHeld.stderr).toContain('is on hold; release it instead');

    // release: due at once and delivered now that the next hop accepts
    pair.sink.rcptPolicy = null;
    const rel = await cli('release', id1, '--config', cfgA);
    expect(rel.stdout).toBe(`${id1}: released\n`);
    await waitFor(() => pair.sink.messages.length === 1, 20000, 'delivery after release');
    await waitFor(() => !pair.a.spool.get(id1) && !pair.b.spool.get(id1), 20000, 'purge on both');
    expect((await cli('release', id1, '--config', cfgA)).stderr).toContain(`${id1}: no such message in the queue`);

    // retry: one more attempt at once (the backoff would wait 10 minutes)
    pair.sink.rcptPolicy = DEFER;
    const id2 = queueIdOf((await send(pair.a.addresses.smtp.port)).response);
    await waitFor(() => pair.a.spool.get(id2)?.attempts === 1, 20000, 'first attempt');
    expect((await cli('retry', id2, '--config', cfgA)).stdout).toBe(`${id2}: due now\n`);
    await waitFor(() => pair.a.spool.get(id2)?.attempts === 2, 20000, 'the retried attempt');
    // flush: every queued message is due now
    expect((await cli('flush', '--config', cfgA)).stdout).toBe('1 message due now\n');
    await waitFor(() => pair.a.spool.get(id2)?.attempts === 3, 20000, 'the flushed attempt');

    // a shadow copy is acted on at its primary
    const onB = await cli('retry', id2, '--config', cfgB);
    expect(onB.code).toBe(1);
    expect(onB.stderr).toContain(`${id2}: is a shadow copy held for relay-a; act on it there`);

    // delete: gone here, and the peer's shadow copy is discarded; never delivered
    const del = await cli('delete', id2, '--config', cfgA);
    expect(del.code).toBe(0);
    expect(del.stdout).toBe(`${id2}: deleted; discard of the shadow copy owed to relay-b\n`);
    expect(pair.a.spool.get(id2)).toBeUndefined();
    await waitFor(() => !pair.b.spool.get(id2), 20000, 'shadow copy discarded on relay-b');
    expect(pair.sink.messages.length).toBe(1);

    // delete --all-failed takes the deferred ones, not a fresh one with no attempt yet
    const id3 = queueIdOf((await send(pair.a.addresses.smtp.port)).response);
    await waitFor(() => pair.a.spool.get(id3)?.attempts === 1, 20000, 'first attempt');
    const all = await cli('delete', '--all-failed', '--config', cfgA);
    expect(all.stdout).toBe(`${id3}: deleted\n1 message deleted\n`);
    await waitFor(() => !pair.b.spool.get(id3), 20000, 'shadow copy discarded on relay-b');

    const usage = await cli('delete', '--config', cfgA);
    expect(usage.code).toBe(1);
    expect(usage.stderr).toContain('needs a queue id or --all-failed');
    const unknown = await cli('show', 'NOSUCHID', '--config', cfgA);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('NOSUCHID: no such message in the queue');
  });

  it('a held message is not attempted even when due; release makes it due again', async () => {
    const pair = await pairWithAdmin({ delivery: { retry: { initialMs: 300, maxMs: 300 } } });
    const cfgA = pair.files.configs['relay-a']!;
    pair.sink.rcptPolicy = DEFER;
    const id = queueIdOf((await send(pair.a.addresses.smtp.port)).response);
    await waitFor(() => (pair.a.spool.get(id)?.attempts ?? 0) >= 1, 20000, 'first attempt');
    expect((await runCli(['queue', 'hold', id, '--config', cfgA])).code).toBe(0);
    // an attempt already under way when the hold landed still records its outcome (one every
    // 300 ms here): the count to hold against is the one with every started attempt recorded
    const started = 'shadowrelay_delivery_attempts_total';
    await waitForMetric(pair.a, started, (n) => n === pair.a.spool.get(id)!.attempts, 10000, 'the attempt under way at the hold to be recorded');
    const held = pair.a.spool.get(id)!;
    // past its next attempt plus more than one scan period of the worker (1 s)
    await waitFor(() => Date.now() > held.nextAttemptAt + 2500, 10000, 'the due time to pass');
    expect(pair.a.spool.get(id)).toMatchObject({ state: 'held', attempts: held.attempts });
    expect((await pair.a.metrics.snapshot()).value(started)).toBe(held.attempts);
    expect((await runCli(['queue', 'release', id, '--config', cfgA])).code).toBe(0);
    await waitFor(() => (pair.a.spool.get(id)?.attempts ?? 0) > held.attempts, 20000, 'an attempt after release');
  });

  it('when the daemon is down: list and show read the spool file and say so; actions refuse clearly', async () => {
    const pair = await pairWithAdmin(SLOW_RETRY);
    const cfgA = pair.files.configs['relay-a']!;
    pair.sink.rcptPolicy = DEFER;
    const id = queueIdOf((await send(pair.a.addresses.smtp.port)).response);
    await waitFor(() => pair.a.spool.get(id)?.attempts === 1, 20000, 'first attempt');
    const listen = formatHostPort(pair.a.config.admin.listen);
    await pair.a.stop();

    const list = await runCli(['queue', 'list', '--config', cfgA]);
    expect(list.code).toBe(0);
    expect(list.stderr).toContain(`shadowrelay does not answer on ${listen}: is it running?`);
    expect(list.stderr).toContain('reading the spool file directly');
    expect(list.stdout).toMatch(new RegExp(`^${id} +primary/queued`, 'm'));
    const show = await runCli(['queue', 'show', id, '--config', cfgA]);
    expect(show.code).toBe(0);
    expect(show.stdout).toContain(`queue_id: ${id}`);
    for (const args of [['flush'], ['retry', id], ['hold', id], ['release', id], ['delete', id], ['delete', '--all-failed']]) {
      const r = await runCli(['queue', ...args, '--config', cfgA]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toContain(`shadowrelay does not answer on ${listen}: is it running?`);
    }
    const health = await runCli(['health', '--config', cfgA]);
    expect(health.code).toBe(1);
    expect(health.stderr).toContain('does not answer');
  });
});

describe('logs', () => {
  it('grep <id> tells the whole story on both nodes', async () => {
    const pair = await pairWithAdmin();
    const id = queueIdOf((await send(pair.a.addresses.smtp.port)).response);
    await waitFor(() => !pair.a.spool.get(id) && !pair.b.spool.get(id), 20000, 'purge on both');
    await waitFor(() => pair.logs['relay-b']!.some((l) => l.id === id && l.msg === 'shadow discarded'), 20000, 'discard logged');
    await waitFor(() => pair.logs['relay-a']!.some((l) => l.id === id && l.msg === 'discard confirmed by peer'), 20000, 'discard confirmation logged');
    const a = pair.logs['relay-a']!.filter((l) => l.id === id);
    const b = pair.logs['relay-b']!.filter((l) => l.id === id);
    expect(a.map((l) => l.msg)).toEqual(['client', 'spooled', 'accepted', 'delivered', 'removed', 'discard confirmed by peer']);
    const session = a[0]!.session;
    expect(pair.logs['relay-a']!.find((l) => l.msg === 'connect' && l.session === session)?.client).toBe('127.0.0.1');
    expect(a[2]).toMatchObject({ client: '127.0.0.1', from: 'alice@example.test', nrcpt: 1, shadowPeer: 'relay-b' });
    expect(typeof a[2]!.shadowMs).toBe('number');
    expect(typeof a[2]!.size).toBe('number');
    expect(a[3]).toMatchObject({ to: 'bob@example.test', relay: `127.0.0.1:${pair.sink.port}`, dsn: '2.0.0', status: 'sent' });
    expect(typeof a[3]!.delay).toBe('number');
    expect(b.map((l) => l.msg)).toEqual(['shadow stored', 'shadow discarded']);
    // how long the copy took on the peer: its write, and the whole request
    const stored = b[0]! as { storeMs?: unknown; requestMs?: unknown };
    expect(typeof stored.storeMs).toBe('number');
    expect(typeof stored.requestMs).toBe('number');
    expect(stored.requestMs as number).toBeGreaterThanOrEqual(stored.storeMs as number);
    for (const l of [...a, ...b]) expect(typeof l.node).toBe('string');
  });

  it('log.format: pretty prints human lines (JSON lines otherwise, see startNodeProcess)', async () => {
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    const { writePairConfigs, deepMerge } = await import('../../tools/pair.js');
    const files = await writePairConfigs({ dir, sinkPort: await freePort() });
    const file = files.configs['relay-a']!;
    const doc = deepMerge(YAML.parse(readFileSync(file, 'utf8')) as Record<string, unknown>, { log: { format: 'pretty' } });
    writeFileSync(file, YAML.stringify(doc));
    const { spawn } = await import('node:child_process');
    const { CLI } = await import('../helpers/index.js');
    const p = spawn(process.execPath, [CLI, 'start', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    cleanups.push(() => void p.kill('SIGKILL'));
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    await waitFor(() => out.includes('shadowrelay started'), 20000, 'start line');
    const line = out.split('\n').find((l) => l.includes('shadowrelay started'))!;
    expect(() => JSON.parse(line)).toThrow();
    expect(line).toMatch(/INFO.*shadowrelay started/);
  });
});

describe('spool backup and health', () => {
  it('spool backup copies a live spool consistently; health answers while running', async () => {
    const pair = await pairWithAdmin(SLOW_RETRY);
    const cfgA = pair.files.configs['relay-a']!;
    pair.sink.rcptPolicy = DEFER;
    const id = queueIdOf((await send(pair.a.addresses.smtp.port)).response);
    await waitFor(() => pair.a.spool.get(id)?.attempts === 1, 20000, 'first attempt');
    const out = path.join(pair.dir, 'backup.db');
    const r = await runCli(['spool', 'backup', '--config', cfgA, '--out', out]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('1 messages');
    const db = new Database(out, { readonly: true });
    const row = db.prepare('SELECT id, role, state FROM messages').get() as { id: string; role: string; state: string };
    const v = db.prepare(`SELECT value FROM meta WHERE key='schema_version'`).get() as { value: string };
    db.close();
    expect(row).toEqual({ id, role: 'primary', state: 'queued' });
    expect(Number(v.value)).toBeGreaterThanOrEqual(1);

    const alive = await runCli(['health', '--config', cfgA]);
    expect(alive.stdout).toBe('relay-a: alive\n');
    expect(alive.code).toBe(0);
    expect((await runCli(['health', '--ready', '--config', cfgA])).code).toBe(0);
    await pair.b.stop();
    await waitFor(() => !pair.a.shadow.anyPeerUp(), 20000, 'relay-a sees relay-b down');
    const notReady = await runCli(['health', '--ready', '--config', cfgA]);
    expect(notReady.code).toBe(1);
    expect(notReady.stderr).toContain('not ready');
  });
});

describe('CLI helpers for deployments', () => {
  it('certs init is idempotent (keeps an existing CA) unless --force', async () => {
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    const out = path.join(dir, 'certs');
    const first = await runCli(['certs', 'init', '--out', out, '--nodes', 'relay-a,relay-b']);
    expect(first.code).toBe(0);
    const ca = readFileSync(path.join(out, 'ca.crt'), 'utf8');
    const second = await runCli(['certs', 'init', '--out', out, '--nodes', 'relay-a,relay-b']);
    expect(second.code).toBe(0);
    expect(second.stdout).toContain('already exist');
    expect(readFileSync(path.join(out, 'ca.crt'), 'utf8')).toBe(ca);
    const partial = await runCli(['certs', 'init', '--out', out, '--nodes', 'relay-a,relay-c']);
    expect(partial.code).toBe(1);
    expect(partial.stderr).toContain('relay-c.crt');
    const forced = await runCli(['certs', 'init', '--out', out, '--nodes', 'relay-a,relay-b', '--force']);
    expect(forced.code).toBe(0);
    expect(readFileSync(path.join(out, 'ca.crt'), 'utf8')).not.toBe(ca);
  });

  it('the tools\' sink prints one JSON line per message received', async () => {
    const port = await freePort();
    const { spawn } = await import('node:child_process');
    const { TOOLS_CLI } = await import('../helpers/index.js');
    const p = spawn(process.execPath, [TOOLS_CLI, 'sink', '--listen', `127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    cleanups.push(() => void p.kill('SIGKILL'));
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    await waitFor(() => out.includes('sink listening'), 20000, 'sink to listen');
    const r = await send(port, { raw: 'From: a@example.test\r\nSubject: to the sink\r\n\r\nx\r\n' });
    expect(r.code).toBe(250);
    await waitFor(() => out.includes('to the sink'), 20000, 'sink line');
    const line = JSON.parse(out.trim().split('\n').at(-1)!) as Record<string, unknown>;
    expect(line).toMatchObject({ from: 'alice@example.test', to: ['bob@example.test'], subject: 'to the sink' });
  });
});
