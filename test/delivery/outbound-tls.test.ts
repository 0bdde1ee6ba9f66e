/** Outbound TLS to the next hop: none / opportunistic / required, custom CA, next-hop AUTH. */
import { describe, it, expect, afterEach } from 'vitest';
import path from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import { makeCertSet } from '../../src/certs/index.js';
import { freePort } from '../../tools/net.js';
import { startPair, send, waitFor, Sink, queueIdOf, tmpDir, type Pair } from '../helpers/index.js';
import type { SinkOptions } from '../../tools/sink.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A pair whose relay-a delivers to a sink made (after the pair's certificates exist) by `sinkOf`. */
async function setup(
  nextHop: Record<string, unknown>,
  sinkOf: (certDir: string) => Promise<SinkOptions> | SinkOptions,
): Promise<{ pair: Pair; sink: Sink }> {
  const port = await freePort();
  const pair: Pair = await startPair({}, { 'relay-a': { delivery: { nextHop: { host: '127.0.0.1', port, ...nextHop } } } });
  const sink = new Sink(await sinkOf(pair.files.certDir));
  try {
    await sink.listen(port);
  } catch (e) {
    await pair.stop();
    throw e;
  }
  cleanups.push(async () => {
    await pair.stop(); // first: its pooled connection would hold the sink's close for 30 s
    await sink.close();
  });
  return { pair, sink };
}

const pairCert = (certDir: string, name: string) => ({
  cert: readFileSync(path.join(certDir, `${name}.crt`)),
  key: readFileSync(path.join(certDir, `${name}.key`)),
});

async function otherCaCert() {
  const other = await makeCertSet(['relay-b']); // the right name, the wrong CA
  return other.nodes['relay-b']!;
}

describe('outbound TLS', () => {
  it('required, next hop without STARTTLS: nothing is sent, the message stays queued with the reason', async () => {
    const { pair, sink } = await setup({ tls: 'required' }, () => ({}));
    const r = await send(pair.a.addresses.smtp.port);
    expect(r.code).toBe(250);
    const id = queueIdOf(r.response);
    await waitFor(() => (pair.a.spool.get(id)?.attempts ?? 0) >= 2, 20000, 'two attempts');
    const m = pair.a.spool.get(id)!;
    expect(m.state).toBe('queued');
    expect(m.recipients.map((x) => x.state)).toEqual(['pending']);
    expect(m.lastError).toMatch(/^TLS required \(delivery\.nextHop\.tls=required\) but not established with 127\.0\.0\.1:\d+: STARTTLS refused: .*; not sent$/);
    expect(sink.messages).toHaveLength(0);
    // and the shadow copy is still held on B
    expect(pair.b.spool.list().map((x) => x.id)).toContain(id);
  });

  it('required, certificate from another CA: not sent, stays queued', async () => {
    const other = await otherCaCert();
    const { pair, sink } = await setup({ tls: 'required', ca: 'certs/ca.crt', tlsServerName: 'relay-b' }, () => ({ tls: other }));
    const id = queueIdOf((await send(pair.a.addresses.smtp.port)).response);
    await waitFor(() => (pair.a.spool.get(id)?.attempts ?? 0) >= 1, 20000, 'an attempt');
    expect(pair.a.spool.get(id)!.lastError).toMatch(/^TLS required .*certificate.*; not sent$/i);
    expect(sink.messages).toHaveLength(0);
  });

  it('required with a custom CA and next-hop AUTH: delivered over verified TLS, logged in', async () => {
    const secrets = tmpDir();
    cleanups.push(secrets.cleanup);
    const passFile = path.join(secrets.dir, 'nexthop.pass');
    writeFileSync(passFile, 'hop-secret\n', { mode: 0o600 });
    const { pair, sink } = await setup(
      { tls: 'required', ca: 'certs/ca.crt', tlsServerName: 'relay-b', auth: { user: 'relay', passFile } },
      (certDir) => ({ tls: pairCert(certDir, 'relay-b'), auth: { user: 'relay', pass: 'hop-secret' } }),
    );
    const r = await send(pair.a.addresses.smtp.port);
    expect(r.code).toBe(250);
    await waitFor(() => sink.messages.length === 1, 20000, 'delivery');
    expect(sink.messages[0]!.secure).toBe(true);
    expect(sink.messages[0]!.user).toBe('relay');
  });

  it('opportunistic: STARTTLS without verification; none: clear text', async () => {
    const other = await otherCaCert();
    const opp = await setup({ tls: 'opportunistic' }, () => ({ tls: other }));
    expect((await send(opp.pair.a.addresses.smtp.port)).code).toBe(250);
    await waitFor(() => opp.sink.messages.length === 1, 20000, 'opportunistic delivery');
    expect(opp.sink.messages[0]!.secure).toBe(true);

    const none = await setup({ tls: 'none' }, () => ({ tls: other }));
    expect((await send(none.pair.a.addresses.smtp.port)).code).toBe(250);
    await waitFor(() => none.sink.messages.length === 1, 20000, 'clear-text delivery');
    expect(none.sink.messages[0]!.secure).toBe(false);
  });
});
