/**
 * A client that half-closes (sends its FIN right after its last command) still gets every
 * reply it is owed. Exim's default smtp transport does exactly this: it pipelines QUIT behind
 * the final dot and shuts its side down. Before, the relay accepted the message but the 250
 * never went out, so Exim sent the message again through the other relay: a duplicate.
 */
import { describe, it, expect, afterEach } from 'vitest';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { startPair, RawSmtp, waitFor, type Pair } from '../helpers/index.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function pair(o: Record<string, unknown> = {}): Promise<Pair> {
  const p = await startPair({}, { 'relay-a': o });
  cleanups.push(() => p.stop());
  return p;
}

const MESSAGE = 'Subject: half-close\r\n\r\nbody\r\n.\r\n';

describe('a client that half-closes', () => {
  it('QUIT pipelined behind the final dot, then FIN: 250 with the queue id, 221, and the relay closes', async () => {
    const p = await pair();
    const c = await RawSmtp.openData(p.a.addresses.smtp.port, { from: 'a@example.test', to: 'b@example.test' });
    cleanups.push(() => c.close());
    c.sock.end(MESSAGE + 'QUIT\r\n');
    expect(await c.reply()).toMatch(/^250 2\.0\.0 Ok: queued as [0-9A-F]+$/);
    expect(await c.reply()).toBe('221 2.0.0 Bye');
    await c.closedP;
    await waitFor(() => p.sink.messages.length === 1, 20000, 'the message delivered once');
  });

  it('FIN right after the final dot (no QUIT): the 250 still goes out, then the relay closes', async () => {
    const p = await pair();
    const c = await RawSmtp.openData(p.a.addresses.smtp.port, { from: 'a@example.test', to: 'b@example.test' });
    cleanups.push(() => c.close());
    c.sock.end(MESSAGE);
    expect(await c.reply()).toMatch(/^250 2\.0\.0 Ok: queued as /);
    // nothing more can come: the connection does not wait for the idle timeout
    await c.closedP;
  });

  it('the same inside STARTTLS', async () => {
    const p = await pair({ smtp: { tls: { cert: 'certs/relay-a.crt', key: 'certs/relay-a.key' } } });
    const ca = readFileSync(path.join(p.files.certDir, 'ca.crt'));
    const c = await RawSmtp.connect(p.a.addresses.smtp.port);
    cleanups.push(() => c.close());
    expect(await c.reply()).toMatch(/^220 /);
    expect(await c.cmd('EHLO client.test')).toMatch(/^250/);
    await c.starttls({ ca, servername: 'relay-a' });
    expect(await c.cmd('EHLO client.test')).toMatch(/^250/);
    expect(await c.cmd('MAIL FROM:<a@example.test>')).toMatch(/^250 /);
    expect(await c.cmd('RCPT TO:<b@example.test>')).toMatch(/^250 /);
    expect(await c.cmd('DATA')).toMatch(/^354/);
    c.sock.end(MESSAGE + 'QUIT\r\n');
    expect(await c.reply()).toMatch(/^250 2\.0\.0 Ok: queued as /);
    expect(await c.reply()).toBe('221 2.0.0 Bye');
    await c.closedP;
  });

  it('FIN in the middle of a command sequence: what was sent is answered, the rest is not waited for', async () => {
    const p = await pair();
    const c = await RawSmtp.connect(p.a.addresses.smtp.port);
    cleanups.push(() => c.close());
    expect(await c.reply()).toMatch(/^220 /);
    c.sock.end('EHLO client.test\r\nMAIL FROM:<a@example.test>\r\nNOOP\r\n');
    expect(await c.reply()).toMatch(/^250[- ]/);
    expect(await c.reply()).toMatch(/^250 2\.1\.0 /);
    expect(await c.reply()).toMatch(/^250 2\.0\.0 /);
    await c.closedP;
  });
});
