/**
 * Interop with a second real MTA: Debian's Exim (exim4-daemon-light) as a throwaway instance
 * (own `-C` config, spool and logs in a temp folder, a loopback high port; never the system
 * Exim, never port 25). Exim as the upstream client using the pair as its smarthosts —
 * including a 451 from the pair (peer stopped) that Exim keeps and delivers on a later queue
 * run once the peer is back — and Exim as the next hop the pair delivers to, whose 550 for
 * an unknown recipient becomes a bounce delivered back into Exim. Skipped, with the reason,
 * where Exim cannot run (.ci/run provides it).
 */
import { describe, it, expect, afterEach } from 'vitest';
import { startPair, waitFor, RawSmtp, queueIdOf, send, type Pair } from '../helpers/index.js';
import { startExim, eximUnavailable, type EximInstance } from '../helpers/exim.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const noExim = eximUnavailable();
if (noExim) console.warn(`exim.test: Exim scenarios skipped: ${noExim}`);

/** Hands Exim one message over SMTP; resolves with its final reply. */
async function submit(port: number, o: { from: string; to: string; subject: string }): Promise<string> {
  const c = await RawSmtp.connect(port);
  try {
    expect(await c.reply()).toMatch(/^220/);
    expect(await c.cmd('EHLO submitter.example.test')).toMatch(/^250/);
    expect(await c.cmd(`MAIL FROM:<${o.from}>`)).toMatch(/^250/);
    expect(await c.cmd(`RCPT TO:<${o.to}>`)).toMatch(/^250/);
    expect(await c.cmd('DATA')).toMatch(/^354/);
    c.write(Buffer.from(`From: ${o.from}\r\nTo: ${o.to}\r\nSubject: ${o.subject}\r\n\r\nvia exim\r\n.\r\n`));
    const r = (await c.reply())!;
    expect(r).toMatch(/^250/);
    await c.cmd('QUIT');
    return r;
  } finally {
    c.close();
  }
}

async function eximClient(pair: Pair): Promise<EximInstance> {
  const ex = await startExim({
    name: 'exim-client.example.test',
    smarthosts: [
      { host: '127.0.0.1', port: pair.a.addresses.smtp.port },
      { host: '127.0.0.1', port: pair.b.addresses.smtp.port },
    ],
  });
  // before the pair: the relays must outlive Exim's last attempt
  cleanups.push(() => ex.stop());
  return ex;
}

describe('Exim → shadowrelay pair → next hop', () => {
  it.skipIf(!!noExim)('a real Exim relays through the pair as its smarthost; both spools end empty', async () => {
    const pair = await startPair();
    cleanups.push(() => pair.stop());
    const ex = await eximClient(pair);
    await submit(ex.port, { from: 'alice@example.test', to: 'bob@example.test', subject: 'exim interop' });
    await waitFor(() => pair.sink.messages.length === 1, 30000, `the sink to get the message; exim log:\n${ex.mainlog()}\nrelay-a: ${JSON.stringify(pair.logs["relay-a"]!.slice(-12))}`);
    const m = pair.sink.messages[0]!;
    expect(m.from).toBe('alice@example.test');
    expect(m.to).toEqual(['bob@example.test']);
    const text = m.raw.toString('utf8');
    // our Received line on top (Exim reached relay-a), Exim's below it
    expect(text).toMatch(/^Received: from exim-client\.example\.test .*\r\n\tby relay-a\.example\.test \(shadowrelay\)/);
    expect(text).toMatch(/Received: from submitter\.example\.test \(\[127\.0\.0\.1\]\) by exim-client\.example\.test \(Exim [\d.]+\)/);
    expect(ex.mainlog()).toMatch(/=> bob@example\.test R=smarthost T=remote_smtp H=127\.0\.0\.1 \[127\.0\.0\.1\] .*C="250 2\.0\.0 Ok: queued as /);
    // one copy: Exim saw the 250 of the first smarthost and did not try the second
    expect(pair.sink.messages).toHaveLength(1);
    await waitFor(() => pair.a.spool.list().length === 0 && pair.b.spool.list().length === 0, 20000, 'both spools empty');
  });

  it.skipIf(!!noExim)('a 451 from the pair (peer stopped) stays in Exim\'s queue and is delivered on a queue run once the peer is back', async () => {
    const pair = await startPair();
    cleanups.push(() => pair.stop());
    const ex = await eximClient(pair);
    await pair.b.stop();
    await waitFor(() => !pair.a.shadow.anyPeerUp(), 20000, 'relay-b down as seen from relay-a');
    await submit(ex.port, { from: 'alice@example.test', to: 'bob@example.test', subject: 'exim retry' });
    // relay-a answers 451 4.4.1 (no shadow copy), relay-b is not there: Exim defers
    await waitFor(() => /SMTP error from remote mail server after end of data: 451 4\.4\.1 /.test(ex.mainlog()), 30000, `Exim to log the 451; log:\n${ex.mainlog()}`);
    await waitFor(() => /== bob@example\.test R=smarthost .*defer/.test(ex.mainlog()), 30000, `Exim to defer; log:\n${ex.mainlog()}`);
    expect(ex.queueCount()).toBe(1);
    expect(pair.sink.messages).toHaveLength(0);
    expect(pair.a.spool.list()).toHaveLength(0); // nothing accepted
    await pair.start('relay-b');
    await waitFor(() => pair.a.shadow.anyPeerUp(), 20000, 'relay-b back');
    const run = await ex.runQueue();
    expect(run.code, run.stderr).toBe(0);
    await waitFor(() => pair.sink.messages.length === 1, 30000, `delivery after the queue run; exim log:\n${ex.mainlog()}`);
    expect(pair.sink.messages[0]!.raw.toString('utf8')).toContain('Subject: exim retry');
    await waitFor(() => ex.queueCount() === 0, 20000, "Exim's queue empty");
    expect(ex.mainlog()).toMatch(/=> bob@example\.test R=smarthost .*C="250 2\.0\.0 Ok: queued as /);
  });
});

describe('shadowrelay pair → Exim as the next hop', () => {
  it.skipIf(!!noExim)('the pair delivers into Exim\'s mailboxes; a recipient Exim refuses (550) is bounced to the sender, into Exim too', async () => {
    const ex = await startExim({ name: 'mx.exim.test', local: { domain: 'exim.test', localParts: ['alice', 'bob', 'carol'] } });
    const pair = await startPair({ delivery: { nextHop: { host: '127.0.0.1', port: ex.port, tls: 'none' } } });
    cleanups.push(() => pair.stop());
    // Exim stops before the pair (cleanups run in reverse)
    cleanups.push(() => ex.stop());
    const r = await send(pair.a.addresses.smtp.port, { from: 'alice@exim.test', to: ['bob@exim.test', 'carol@exim.test', 'nobody@exim.test'] });
    expect(r.code).toBe(250);
    const id = queueIdOf(r.response);
    await waitFor(() => ex.mailbox('bob').includes('Subject: test') && ex.mailbox('carol').includes('Subject: test'), 30000, `delivery into Exim; log:\n${ex.mainlog()}`);
    expect(ex.mailbox('bob')).toMatch(/Received: from relay-a\.example\.test \(\[127\.0\.0\.1\]\) by mx\.exim\.test \(Exim/);
    // the 550 for nobody@ becomes a bounce from <> to alice@, which the pair delivers to Exim
    await waitFor(() => /Undelivered Mail Returned to Sender/.test(ex.mailbox('alice')), 30000, `the bounce in alice's mailbox; log:\n${ex.mainlog()}`);
    const bounce = ex.mailbox('alice');
    expect(bounce).toMatch(/^From MAILER-DAEMON /m);
    expect(bounce).toMatch(/Final-Recipient: rfc822; nobody@exim\.test/);
    expect(bounce).toMatch(/Status: 5\.\d\.\d/);
    expect(bounce).toMatch(/Diagnostic-Code: smtp; 550/);
    expect(bounce).toContain(`X-Shadowrelay-Queue-ID: ${id}`);
    await waitFor(() => pair.a.spool.list().length === 0 && pair.b.spool.list().length === 0, 20000, 'both spools empty');
  });
});
