/**
 * Issue 3 — next-hop failures: retry with backoff, 5xx per recipient, give-up after the queue
 * lifetime, RFC 3464 bounces (parsed back with mailparser), null sender, partial delivery.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { simpleParser, type ParsedMail } from 'mailparser';
import { startPair, send, queueIdOf, waitFor, type Pair } from '../helpers/index.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

// quick retries; the rest of the pair config is the shared default
const FAST = { delivery: { retry: { initialMs: 200, maxMs: 1000, maxAgeMs: 432000000 } }, shadow: { heartbeatMs: 300 } };

async function pairWith(o: Record<string, unknown> = {}, nodes: Record<string, Record<string, unknown>> = {}, opts = {}): Promise<Pair> {
  const { deepMerge } = await import('../../tools/pair.js');
  const pair = await startPair(deepMerge(FAST, o), nodes, opts);
  cleanups.push(() => pair.stop());
  return pair;
}

const empty = (p: Pair) => p.a.spool.counts().primary + p.a.spool.counts().shadow + p.b.spool.counts().primary + p.b.spool.counts().shadow === 0;

/** The delivery-status part of a parsed DSN, as per-recipient field maps plus the message fields. */
function deliveryStatus(mail: ParsedMail): { message: Record<string, string>; recipients: Array<Record<string, string>> } {
  const part = mail.attachments.find((a) => a.contentType === 'message/delivery-status');
  if (!part) throw new Error(`no message/delivery-status part; parts: ${mail.attachments.map((a) => a.contentType).join(', ')}`);
  const blocks = part.content
    .toString('utf8')
    .replace(/\r\n/g, '\n')
    .replace(/\n[ \t]+/g, ' ') // unfold
    .split(/\n\n+/)
    .filter((b) => b.trim());
  const fields = (b: string) =>
    Object.fromEntries(
      b
        .split('\n')
        .filter(Boolean)
        .map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]),
    );
  return { message: fields(blocks[0]!), recipients: blocks.slice(1).map(fields) };
}

describe('retry and give-up', () => {
  it('next hop answers 451 twice then 250 → delivered once, both spools empty', async () => {
    const pair = await pairWith();
    pair.sink.rcptPolicy = (_rcpt, attempt) => (attempt <= 2 ? { code: 451, message: '4.3.0 try again later' } : null);
    const r = await send(pair.a.addresses.smtp.port);
    expect(r.code).toBe(250);
    const id = queueIdOf(r.response);
    await waitFor(() => pair.sink.messages.length === 1, 30000, 'delivery after two deferrals');
    await waitFor(() => empty(pair) && pair.a.spool.counts().outbox === 0, 20000, 'both spools empty');
    expect(pair.sink.messages).toHaveLength(1);
    const deferred = pair.logs['relay-a']!.filter((l) => l.msg === 'deferred' && l.id === id);
    expect(deferred).toHaveLength(2);
    expect(deferred[0]!.dsn).toBe('4.3.0');
    const m = await pair.a.metrics.snapshot();
    expect(m.value('shadowrelay_deliveries_total', { outcome: 'delivered' })).toBe(1);
    expect(m.value('shadowrelay_deliveries_total', { outcome: 'deferred' })).toBe(2);
    expect(m.value('shadowrelay_deliveries_total', { outcome: 'bounced' })).toBe(0);
  });

  it('550 for one of three recipients → the other two delivered, one DSN to the sender (mailparser)', async () => {
    const pair = await pairWith();
    pair.sink.rcptPolicy = (rcpt) => (rcpt === 'carol@example.test' ? { code: 550, message: '5.1.1 <carol@example.test>: Recipient address rejected: User unknown' } : null);
    const to = ['bob@example.test', 'carol@example.test', 'dave@example.test'];
    const r = await send(pair.a.addresses.smtp.port, {
      from: 'alice@example.test',
      to,
      raw: 'From: alice@example.test\r\nTo: bob@example.test\r\nSubject: three recipients\r\nMessage-ID: <dsn-1@test>\r\n\r\nbody\r\n',
    });
    expect(r.code).toBe(250);
    const id = queueIdOf(r.response);
    await waitFor(() => pair.sink.messages.length === 2, 30000, 'delivery and DSN');
    const delivered = pair.sink.messages.find((m) => m.from === 'alice@example.test')!;
    expect(delivered.to).toEqual(['bob@example.test', 'dave@example.test']);
    const bounce = pair.sink.messages.find((m) => m.from === '')!;
    expect(bounce, 'a bounce from <>').toBeDefined();
    expect(bounce.to).toEqual(['alice@example.test']);

    const mail = await simpleParser(bounce.raw, { keepDeliveryStatus: true });
    expect(mail.headers.get('content-type')).toMatchObject({ value: 'multipart/report', params: { 'report-type': 'delivery-status' } });
    expect(mail.subject).toBe('Undelivered Mail Returned to Sender');
    expect(mail.headers.get('auto-submitted')).toBe('auto-replied');
    expect(mail.text).toContain('<carol@example.test>: host 127.0.0.1 said: 550 5.1.1');
    const ds = deliveryStatus(mail);
    expect(ds.message['reporting-mta']).toBe('dns; relay-a.example.test');
    expect(ds.message['arrival-date']).toMatch(/\d{4} \d\d:\d\d:\d\d \+0000$/);
    expect(ds.recipients).toHaveLength(1);
    expect(ds.recipients[0]).toMatchObject({
      'final-recipient': 'rfc822; carol@example.test',
      action: 'failed',
      status: '5.1.1',
      'remote-mta': 'dns; 127.0.0.1',
    });
    expect(ds.recipients[0]!['diagnostic-code']).toMatch(/^smtp; 550 5\.1\.1 <carol@example\.test>: Recipient address rejected/);
    const headers = mail.attachments.find((a) => a.contentType === 'text/rfc822-headers');
    expect(headers?.content.toString()).toContain('Subject: three recipients');
    expect(headers?.content.toString()).toContain(`with ESMTP id ${id}`);

    // the bounce went through the same shadowed path, and everything is gone afterwards
    const bounceLine = pair.logs['relay-a']!.find((l) => l.msg === 'bounce queued' && l.id === id)!;
    expect(bounceLine).toBeDefined();
    expect(pair.logs['relay-b']!.some((l) => l.msg === 'shadow stored' && l.id === bounceLine.bounce)).toBe(true);
    await waitFor(() => empty(pair), 20000, 'both spools empty');
    const m = await pair.a.metrics.snapshot();
    expect(m.value('shadowrelay_deliveries_total', { outcome: 'delivered' })).toBe(3);
    expect(m.value('shadowrelay_deliveries_total', { outcome: 'bounced' })).toBe(1);
    expect(m.value('shadowrelay_delivery_expired_total')).toBe(0);
    expect(m.value('shadowrelay_bounces_total', { result: 'queued' })).toBe(1);
  });

  it('tiny retry.maxAgeMs and a next hop that is down → DSN with Action: failed', async () => {
    const pair = await pairWith({ delivery: { retry: { initialMs: 200, maxMs: 500, maxAgeMs: 4000 } } }, {}, { sinkDown: true });
    const r = await send(pair.a.addresses.smtp.port, { to: ['bob@example.test'] });
    expect(r.code).toBe(250);
    const id = queueIdOf(r.response);
    // the next hop refuses connections until the message has expired and its bounce is queued
    await waitFor(() => pair.logs['relay-a']!.some((l) => l.msg === 'bounce queued' && l.id === id), 30000, 'bounce queued');
    expect(pair.logs['relay-a']!.some((l) => l.msg === 'expired' && l.id === id && l.to === 'bob@example.test')).toBe(true);
    await pair.openSink();
    await waitFor(() => pair.sink.messages.some((m) => m.from === ''), 30000, 'DSN delivered');
    expect(pair.sink.messages.filter((m) => m.from !== '')).toHaveLength(0); // the original never went out
    const mail = await simpleParser(pair.sink.messages.find((m) => m.from === '')!.raw, { keepDeliveryStatus: true });
    const ds = deliveryStatus(mail);
    expect(ds.recipients[0]).toMatchObject({ 'final-recipient': 'rfc822; bob@example.test', action: 'failed', status: '4.4.1' });
    expect(ds.recipients[0]!['diagnostic-code']).toMatch(/^X-Shadowrelay; .*ECONNREFUSED/);
    expect(ds.recipients[0]!['remote-mta']).toBeUndefined();
    expect(mail.text).toContain('delivery time expired');
    await waitFor(() => empty(pair), 20000, 'both spools empty');
  });

  it('a message from <> that fails permanently is logged and dropped, never bounced', async () => {
    const pair = await pairWith();
    pair.sink.rcptPolicy = () => ({ code: 550, message: '5.1.1 no such user' });
    const r = await send(pair.a.addresses.smtp.port, { from: '', to: ['nobody@example.test'] });
    expect(r.code).toBe(250);
    const id = queueIdOf(r.response);
    await waitFor(() => pair.logs['relay-a']!.some((l) => l.msg === 'bounce suppressed: the message has the null sender <>' && l.id === id), 20000, 'suppressed');
    await waitFor(() => empty(pair), 20000, 'both spools empty');
    expect(pair.sink.messages).toHaveLength(0);
    expect(pair.logs['relay-a']!.some((l) => l.msg === 'bounce queued')).toBe(false);
    expect((await pair.a.metrics.snapshot()).value('shadowrelay_bounces_total', { result: 'suppressed' })).toBe(1);
  });
});

describe('DSN composition', () => {
  it('types a non-ASCII recipient utf-8 (RFC 6533), folds long diagnostics, returns only the headers', async () => {
    const { buildDsn, recipientFailure } = await import('../../src/delivery/dsn.js');
    const long = `550 5.7.1 ${'policy '.repeat(40)}rejected`;
    const raw = await buildDsn({
      reportingMta: 'relay-a.example.test',
      queueId: 'ABCDEF0123',
      sender: 'alice@example.test',
      arrivalDate: new Date('2026-01-02T03:04:05Z'),
      recipients: [recipientFailure('jörg@exämple.test', long, '127.0.0.1'), recipientFailure('bob@example.test', 'ESOCKET: connect ECONNREFUSED 127.0.0.1:25', '127.0.0.1')],
      original: Buffer.from('Subject: hi\r\nFrom: alice@example.test\r\n\r\nsecret body\r\n'),
    });
    for (const line of raw.toString('utf8').split('\r\n')) expect(line.length).toBeLessThanOrEqual(998);
    const mail = await simpleParser(raw, { keepDeliveryStatus: true });
    const ds = deliveryStatus(mail);
    expect(ds.message['arrival-date']).toBe('Fri, 02 Jan 2026 03:04:05 +0000');
    expect(ds.recipients[0]).toMatchObject({ 'final-recipient': 'utf-8; jörg@exämple.test', status: '5.7.1', action: 'failed' });
    expect(ds.recipients[0]!['diagnostic-code']).toBe(`smtp; ${long}`);
    expect(ds.recipients[1]).toMatchObject({ 'final-recipient': 'rfc822; bob@example.test', status: '4.4.1' });
    const headers = mail.attachments.find((a) => a.contentType === 'text/rfc822-headers')!.content.toString();
    expect(headers).toContain('Subject: hi');
    expect(headers).not.toContain('secret body');
  });
});

describe('partial delivery', () => {
  it('the peer learns which recipients are done; a promotion delivers only the remaining one', async () => {
    const pair = await pairWith({}, { 'relay-b': { shadow: { promoteAfterMs: 3000 } } });
    let yDown = true;
    pair.sink.rcptPolicy = (rcpt) => (rcpt === 'y@example.test' && yDown ? { code: 451, message: '4.2.0 mailbox busy' } : null);
    const r = await send(pair.a.addresses.smtp.port, { to: ['x@example.test', 'y@example.test'] });
    expect(r.code).toBe(250);
    const id = queueIdOf(r.response);
    await waitFor(() => pair.sink.messages.length === 1, 20000, 'x delivered');
    expect(pair.sink.messages[0]!.to).toEqual(['x@example.test']);
    // B's copy knows x is done (a recipient-level discard), y still pending
    await waitFor(() => pair.b.spool.get(id)?.recipients[0]?.state === 'delivered', 20000, 'recipient discard on B');
    expect(pair.b.spool.get(id)!.recipients.map((x) => x.state)).toEqual(['delivered', 'pending']);

    // A goes away with y still pending; B promotes after promoteAfterMs and delivers y only
    await pair.a.stop();
    yDown = false;
    await waitFor(() => pair.sink.messages.length === 2, 30000, 'promoted delivery');
    expect(pair.sink.messages[1]!.to).toEqual(['y@example.test']);
    expect(pair.logs['relay-b']!.some((l) => l.msg === 'promoted' && l.id === id && l.pending === 1)).toBe(true);
    await waitFor(() => pair.b.spool.counts().primary === 0, 20000, 'B done');
    expect((await pair.b.metrics.snapshot()).value('shadowrelay_promoted_messages_total', { peer: 'relay-a' })).toBe(1);
  });
});
