/**
 * Reload (issue 5): SIGHUP re-reads the configuration; live settings change without a restart,
 * certificates are re-read, and a bad or restart-only change is refused with the old one kept.
 */
import { describe, it, expect, afterEach } from 'vitest';
import path from 'node:path';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import YAML from 'yaml';
import { deepMerge } from '../../tools/pair.js';
import { writeCertSet } from '../../src/certs/index.js';
import { startPair, send, waitFor, RawSmtp, tmpDir, startNodeProcess, freePort, Sink, adminHttp, metricValue } from '../helpers/index.js';
import { writePairConfigs } from '../../tools/pair.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function edit(file: string, change: Record<string, unknown>): void {
  const doc = YAML.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  writeFileSync(file, YAML.stringify(deepMerge(doc, change)));
}

async function ehlo(port: number): Promise<string> {
  const c = await RawSmtp.connect(port);
  await c.reply();
  const r = (await c.cmd('EHLO client.test'))!;
  c.close();
  return r;
}

/** Fingerprint of the certificate a TLS server presents (direct TLS, or after STARTTLS). */
async function presentedCert(port: number, o: { starttls?: boolean; ca?: Buffer; cert?: Buffer; key?: Buffer; servername?: string } = {}): Promise<string> {
  let socket: import('node:net').Socket | undefined;
  if (o.starttls) {
    const c = await RawSmtp.connect(port);
    await c.reply();
    await c.cmd('EHLO client.test');
    expect(await c.cmd('STARTTLS')).toMatch(/^220/);
    socket = c.sock;
  }
  return new Promise((resolve, reject) => {
    const s = tls.connect(
      {
        host: '127.0.0.1',
        port,
        socket,
        ca: o.ca,
        cert: o.cert,
        key: o.key,
        servername: o.servername ?? 'localhost',
        rejectUnauthorized: !!o.ca,
        ALPNProtocols: o.starttls ? undefined : ['h2'],
      },
      () => {
        const fp = s.getPeerX509Certificate()?.fingerprint256 ?? '';
        s.destroy();
        socket?.destroy();
        resolve(fp);
      },
    );
    s.on('error', reject);
  });
}

describe('reload', () => {
  it('applies live settings (size limit, allowed networks, next hop) and refuses bad or restart-only changes', async () => {
    const pair = await startPair();
    cleanups.push(() => pair.stop());
    const file = pair.files.configs['relay-a']!;
    const port = pair.a.addresses.smtp.port;
    const big = 'From: a@example.test\r\nSubject: big\r\n\r\n' + 'x'.repeat(5000) + '\r\n';
    expect((await send(port, { raw: big })).code).toBe(250);

    edit(file, { smtp: { maxMessageSize: 2000, allowedNetworks: ['127.0.0.1/32'] } });
    const r = pair.a.reloadFromFile();
    expect(r).toEqual({ ok: true, changed: ['smtp'] });
    expect(await ehlo(port)).toMatch(/^250[ -]SIZE 2000$/m);
    const tooBig = await send(port, { raw: big });
    expect(tooBig.code).toBe(552);
    expect((await send(port, { localAddress: '127.0.0.2' })).code).toBe(554);
    expect((await send(port)).code).toBe(250);
    expect(pair.logs['relay-a']!.some((l) => l.msg === 'configuration reloaded')).toBe(true);

    // a broken file: refused, the running configuration stays (limit 2000, 127.0.0.2 denied)
    const good = readFileSync(file, 'utf8');
    writeFileSync(file, good.replace('maxMessageSize: 2000', 'maxMessageSize: lots'));
    const bad = pair.a.reloadFromFile();
    expect(bad.ok).toBe(false);
    expect(!bad.ok && bad.reason).toMatch(/smtp\.maxMessageSize/);
    expect(pair.logs['relay-a']!.find((l) => l.msg === 'reload refused; the running configuration stays')?.reason).toMatch(/smtp\.maxMessageSize/);
    expect(await ehlo(port)).toMatch(/^250[ -]SIZE 2000$/m);
    expect(pair.a.config.smtp.maxMessageSize).toBe(2000);

    // a restart-only key: refused whole, even with a live change next to it
    writeFileSync(file, good);
    edit(file, { smtp: { listen: '127.0.0.1:1', maxMessageSize: 3000 } });
    const restart = pair.a.reloadFromFile();
    expect(restart).toEqual({ ok: false, reason: 'smtp.listen changed: needs a restart' });
    expect(await ehlo(port)).toMatch(/^250[ -]SIZE 2000$/m);

    // a certificate that does not match its key: refused before anything applies
    writeFileSync(file, good);
    edit(file, { smtp: { maxMessageSize: 3000 }, shadow: { tls: { key: 'certs/relay-b.key' } } });
    const mismatch = pair.a.reloadFromFile();
    expect(mismatch.ok).toBe(false);
    expect(!mismatch.ok && mismatch.reason).toMatch(/^shadow\.tls: /);
    expect(await ehlo(port)).toMatch(/^250[ -]SIZE 2000$/m);

    // the next hop changes live: new deliveries go to the new sink
    const sink2 = new Sink();
    const port2 = await sink2.listen();
    cleanups.unshift(() => sink2.close()); // after the relays: their pooled connections would hold close() open
    writeFileSync(file, good);
    edit(file, { delivery: { nextHop: { port: port2 } } });
    expect(pair.a.reloadFromFile()).toEqual({ ok: true, changed: ['delivery'] });
    expect((await send(port)).code).toBe(250);
    await waitFor(() => sink2.messages.length === 1, 20000, 'delivery to the new next hop');

    const m = await adminHttp(pair.a.addresses.admin.port, '/metrics');
    expect(metricValue(m.text, 'shadowrelay_config_reloads_total', { result: 'applied' })).toBe(2);
    expect(metricValue(m.text, 'shadowrelay_config_reloads_total', { result: 'refused' })).toBe(3);
  });

  it('re-reads rotated certificates: the shadow link and STARTTLS present the new ones, and replication works', async () => {
    const pair = await startPair({}, {
      'relay-a': { smtp: { tls: { cert: 'certs/relay-a.crt', key: 'certs/relay-a.key' } } },
    });
    cleanups.push(() => pair.stop());
    const certDir = pair.files.certDir;
    const oldA = new X509Certificate(readFileSync(path.join(certDir, 'relay-a.crt'))).fingerprint256;
    expect(await presentedCert(pair.a.addresses.smtp.port, { starttls: true })).toBe(oldA);

    // a new CA and node certificates, written over the files the configs name
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    await writeCertSet(dir, ['relay-a', 'relay-b']);
    for (const f of ['ca.crt', 'relay-a.crt', 'relay-a.key', 'relay-b.crt', 'relay-b.key']) copyFileSync(path.join(dir, f), path.join(certDir, f));
    const newA = new X509Certificate(readFileSync(path.join(dir, 'relay-a.crt'))).fingerprint256;
    const newB = new X509Certificate(readFileSync(path.join(dir, 'relay-b.crt'))).fingerprint256;

    expect(pair.b.reloadFromFile().ok).toBe(true);
    expect(pair.a.reloadFromFile().ok).toBe(true);
    const creds = { ca: readFileSync(path.join(dir, 'ca.crt')), cert: readFileSync(path.join(dir, 'relay-a.crt')), key: readFileSync(path.join(dir, 'relay-a.key')) };
    expect(await presentedCert(pair.b.addresses.shadow.port, { ...creds, servername: 'relay-b' })).toBe(newB);
    expect(await presentedCert(pair.a.addresses.smtp.port, { starttls: true })).toBe(newA);
    // A's client reconnects with its new certificate; B accepts only the new CA now
    const r = await send(pair.a.addresses.smtp.port);
    expect(r.code).toBe(250);
    await waitFor(() => pair.sink.messages.length === 1, 20000, 'delivery');
  });

  it('SIGHUP reloads a running daemon; a bad file is refused and the daemon keeps serving', async () => {
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    const sink = new Sink();
    const sinkPort = await sink.listen();
    cleanups.push(() => sink.close());
    const files = await writePairConfigs({ dir, sinkPort });
    const smtpPorts = { 'relay-a': await freePort(), 'relay-b': await freePort() };
    for (const n of ['relay-a', 'relay-b'] as const) edit(files.configs[n]!, { smtp: { listen: `127.0.0.1:${smtpPorts[n]}` } });
    const b = await startNodeProcess(files.configs['relay-b']!, 'relay-b');
    cleanups.push(() => void b.kill());
    const a = await startNodeProcess(files.configs['relay-a']!, 'relay-a');
    cleanups.push(() => void a.kill());
    const fileA = files.configs['relay-a']!;

    edit(fileA, { smtp: { maxMessageSize: 1234 } });
    a.proc.kill('SIGHUP');
    await waitFor(() => a.lines.some((l) => l.msg === 'configuration reloaded'), 20000, 'reload line');
    expect(await ehlo(a.addresses.smtp.port)).toMatch(/^250[ -]SIZE 1234$/m);

    writeFileSync(fileA, 'node: [');
    a.proc.kill('SIGHUP');
    await waitFor(() => a.lines.some((l) => l.msg === 'reload refused; the running configuration stays'), 20000, 'refusal line');
    expect(String(a.lines.find((l) => l.msg === 'reload refused; the running configuration stays')!.reason)).toContain('YAML syntax');
    expect(a.proc.exitCode).toBeNull();
    expect(await ehlo(a.addresses.smtp.port)).toMatch(/^250[ -]SIZE 1234$/m);
    await waitFor(() => a.lines.some((l) => l.msg === 'shadow peer up'), 20000, 'peer up');
    expect((await send(a.addresses.smtp.port)).code).toBe(250);
    await waitFor(() => sink.messages.length === 1, 20000, 'delivery');
  });
});
