/**
 * Bounded fuzzing of both listeners with fast-check generators and a fixed seed (printed, so a
 * failure reproduces: FUZZ_SEED=<n> npx vitest run test/fuzz.test.ts). Cases are sampled up
 * front and run a few at a time. Afterwards the daemon must still be up and a normal message
 * must go through intact.
 */
import { describe, it, expect, afterAll, beforeAll } from 'vitest';
import fc from 'fast-check';
import net from 'node:net';
import tls from 'node:tls';
import http2 from 'node:http2';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { hashPassword } from '../src/passwords/index.js';
import { encodePut } from '../src/shadow/protocol.js';
import { startPair, send, waitFor, queueIdOf, type Pair } from './helpers/index.js';

const SEED = Number(process.env.FUZZ_SEED ?? 20261126);
const SMTP_CASES = 2000;
const PEER_RAW_CASES = 400;
const PEER_H2_CASES = 1500;
const CONCURRENCY = 16;

let pair: Pair;
beforeAll(async () => {
  console.log(`fuzz seed ${SEED} (set FUZZ_SEED to reproduce another run)`);
  pair = await startPair(
    {},
    {
      'relay-a': {
        smtp: {
          tls: { cert: 'certs/relay-a.crt', key: 'certs/relay-a.key' },
          auth: { users: [{ username: 'alice', passwordHash: await hashPassword('pw') }], failureDelayMs: 0, maxFailures: 1000000 },
          relayDomains: ['relay.test'],
          maxMessageSize: 200000,
          limits: { commandTimeoutMs: 5000, dataTimeoutMs: 5000 },
        },
      },
    },
  );
});
afterAll(async () => {
  // also checks that a peer which keeps uploading cannot hold a node's stop (see the 413 case)
  await pair?.stop();
});

async function inBatches<T>(items: T[], run: (x: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      try {
        await run(items[i]!, i);
      } catch (e) {
        throw new Error(`case ${i} (seed ${SEED}): ${(e as Error).message}; input ${JSON.stringify(items[i]).slice(0, 500)}`);
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
}

/** Resolves when the socket closes; fails the case if that takes longer than `ms`. */
function closed(sock: net.Socket, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    if (sock.destroyed) return resolve();
    const t = setTimeout(() => {
      sock.destroy();
      reject(new Error(`socket still open after ${ms} ms`));
    }, ms);
    sock.once('close', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

// ---- generators ---------------------------------------------------------------------------

const eol = fc.constantFrom('\r\n', '\r\n', '\r\n', '\n', '\r', '');
const junk = fc.string({ maxLength: 40, unit: 'binary' });
const address = fc.oneof(
  fc.emailAddress(),
  junk,
  fc.constantFrom('', 'postmaster', '@a.test:u@b.test', '"x@y"@relay.test', 'a%b@relay.test', 'b!a@relay.test', 'u@relay.test', 'u@[127.0.0.1]', 'u@xn--bcher-kva.test'),
);
const param = fc.constantFrom('', ' SIZE=100', ' SIZE=x', ' BODY=8BITMIME', ' SMTPUTF8', ' NOTIFY=NEVER', ' RET=FULL', ' XYZ', ' SIZE=99999999999999999999');
const body = fc
  .array(fc.oneof(fc.constantFrom('.', '..', 'Received: x', 'Subject: s', '', '\0', '\r', '\n', '.\r\n', '\n.\n', '\r.\r'), junk), { maxLength: 30 })
  .map((xs) => xs.join('\r\n'));
const command = fc.oneof(
  fc.tuple(fc.constantFrom('EHLO', 'HELO', 'ehlo', 'LHLO'), junk).map(([v, h]) => `${v} ${h}`),
  fc.tuple(address, param).map(([a, p]) => `MAIL FROM:<${a}>${p}`),
  fc.tuple(address, param).map(([a, p]) => `RCPT TO:<${a}>${p}`),
  body.map((b) => `DATA\r\n${b}\r\n.`),
  fc.constantFrom('RSET', 'NOOP', 'HELP', 'VRFY root', 'EXPN staff', 'STARTTLS', 'AUTH LOGIN', 'AUTH CRAM-MD5', 'AUTH XOAUTH2 x', 'BDAT 10 LAST', 'XCLIENT ADDR=1.2.3.4', 'WIZ x', 'SHELL', 'GET / HTTP/1.1', 'MAIL FROM:', 'RCPT', 'DATA', '.', ''),
  fc.uint8Array({ maxLength: 24 }).map((b) => `AUTH PLAIN ${Buffer.from(b).toString('base64')}`),
  junk,
);
// a well-formed skeleton with fuzzed addresses, parameters and body: reaches the DATA path
const transaction = fc
  .tuple(address, param, fc.array(address, { minLength: 1, maxLength: 3 }), body, eol, fc.array(fc.tuple(command, eol), { maxLength: 4 }))
  .map(([from, p, rcpts, b, e, more]) =>
    Buffer.from(
      `EHLO fuzz.test\r\nMAIL FROM:<${from}>${p}\r\n${rcpts.map((r) => `RCPT TO:<${r}>\r\n`).join('')}RCPT TO:<ok@relay.test>\r\nDATA\r\n${b}${e}.\r\n` +
        more.map(([c, x]) => c + x).join(''),
      'latin1',
    ),
  );
const session = fc.oneof(
  { weight: 3, arbitrary: transaction },
  { weight: 3, arbitrary: fc.array(fc.tuple(command, eol), { maxLength: 14 }).map((cs) => Buffer.from(cs.map(([c, e]) => c + e).join(''), 'latin1')) },
  { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 600 }).map((b) => Buffer.from(b)) },
);

// ---- the SMTP listener -----------------------------------------------------------------

async function smtpCase(port: number, payload: Buffer): Promise<void> {
  const sock = net.connect({ host: '127.0.0.1', port });
  sock.on('error', () => {});
  sock.setNoDelay(true);
  const done = closed(sock, 20000);
  // wait for the greeting, so the payload is parsed as commands (not refused as "talk too soon")
  await new Promise<void>((resolve) => {
    sock.once('data', () => resolve());
    sock.once('close', () => resolve());
  });
  sock.resume();
  if (!sock.destroyed) {
    // in two pieces, so that line and DATA parsing also meets a segment boundary
    const cut = payload.length >> 1;
    sock.write(payload.subarray(0, cut));
    sock.write(payload.subarray(cut));
    sock.end('\r\n.\r\nQUIT\r\n');
  }
  await done;
}

async function normalMessageGetsThrough(subject: string): Promise<void> {
  const raw = Buffer.from(`From: a@x.test\r\nTo: b@x.test\r\nSubject: ${subject}\r\n\r\nline 1\r\n.dot\r\ncaf\u00e9\r\n`, 'utf8');
  const r = await send(pair.a.addresses.smtp.port, { raw });
  expect(r.response).toMatch(/^250 2\.0\.0 Ok: queued as /);
  const id = queueIdOf(r.response);
  await waitFor(() => pair.sink.messages.some((m) => m.raw.includes(`id ${id}`)), 30000, `delivery of ${subject}`);
  const got = pair.sink.messages.find((m) => m.raw.includes(`id ${id}`))!;
  const body = got.raw.subarray(got.raw.indexOf('From: a@x.test'));
  expect(body.equals(raw)).toBe(true);
}

describe(`fuzz (seed ${SEED})`, () => {
  it(`SMTP listener: ${SMTP_CASES} random sessions (command sequences and raw bytes)`, async () => {
    const cases = fc.sample(session, { seed: SEED, numRuns: SMTP_CASES });
    await inBatches(cases, (c) => smtpCase(pair.a.addresses.smtp.port, c));
    const accepted = (await pair.a.metrics.snapshot()).value('shadowrelay_messages_accepted_total');
    console.log(`smtp fuzz: ${accepted} messages accepted`);
    expect(accepted).toBeGreaterThan(SMTP_CASES / 10); // the generators do reach the DATA path
    await normalMessageGetsThrough('after smtp fuzz');
  }, 600000);

  it(`peer endpoint: ${PEER_RAW_CASES} raw-byte connections (no TLS, and TLS with a valid certificate)`, async () => {
    const port = pair.b.addresses.shadow.port;
    const certDir = pair.files.certDir;
    const good = { ca: readFileSync(path.join(certDir, 'ca.crt')), cert: readFileSync(path.join(certDir, 'relay-a.crt')), key: readFileSync(path.join(certDir, 'relay-a.key')) };
    const cases = fc.sample(fc.tuple(fc.boolean(), fc.uint8Array({ minLength: 1, maxLength: 800 })), { seed: SEED + 1, numRuns: PEER_RAW_CASES });
    await inBatches(cases, async ([withTls, bytes]) => {
      if (!withTls) {
        const sock = net.connect({ host: '127.0.0.1', port });
        sock.on('error', () => {});
        const done = closed(sock, 20000);
        sock.end(Buffer.from(bytes));
        sock.resume();
        return done;
      }
      const sock = tls.connect({ host: '127.0.0.1', port, servername: 'relay-b', ALPNProtocols: ['h2'], ...good });
      sock.on('error', () => {});
      const done = closed(sock, 20000);
      sock.once('secureConnect', () => sock.end(Buffer.from(bytes)));
      sock.resume();
      return done;
    });
  }, 600000);

  it(`peer endpoint: ${PEER_H2_CASES} malformed HTTP/2 requests from a valid peer get 4xx, never a crash`, async () => {
    const port = pair.b.addresses.shadow.port;
    const certDir = pair.files.certDir;
    const session = http2.connect(`https://127.0.0.1:${port}`, {
      ca: readFileSync(path.join(certDir, 'ca.crt')),
      cert: readFileSync(path.join(certDir, 'relay-a.crt')),
      key: readFileSync(path.join(certDir, 'relay-a.key')),
      servername: 'relay-b',
    });
    session.on('error', () => {});
    const meta = fc.record(
      { sender: fc.oneof(fc.string(), fc.integer()), recipients: fc.oneof(fc.array(fc.string(), { maxLength: 3 }), fc.string()), receivedAt: fc.oneof(fc.integer(), fc.string()), incarnation: fc.oneof(fc.string(), fc.constant(null)) },
      { requiredKeys: [] },
    );
    const requestBody = fc.oneof(
      fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)),
      fc.json().map((j) => Buffer.from(j)),
      fc.tuple(meta, fc.uint8Array({ maxLength: 100 })).map(([m, raw]) => encodePut(m as never, Buffer.from(raw))),
      fc.tuple(fc.nat(), fc.uint8Array({ maxLength: 50 })).map(([n, raw]) => Buffer.concat([Buffer.from([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]), Buffer.from(raw)])),
    );
    const request = fc.record({
      method: fc.constantFrom('PUT', 'POST', 'GET', 'DELETE', 'PATCH', 'OPTIONS'),
      path: fc.oneof(
        fc.constantFrom('/v1/discard', '/v1/heartbeat', '/v1/messages/', '/', '/v1/messages/../../x', '/v1/messages/%00'),
        fc.stringMatching(/^[A-Za-z0-9]{0,70}$/).map((id) => `/v1/messages/${id}`),
        fc.webPath().map((p) => p || '/'),
      ),
      body: requestBody,
    });
    const cases = fc.sample(request, { seed: SEED + 2, numRuns: PEER_H2_CASES });
    const statuses = new Map<number, number>();
    await inBatches(cases, (c) =>
      new Promise<void>((resolve, reject) => {
        const req = session.request({ ':method': c.method, ':path': c.path }, { endStream: false });
        req.on('response', (h) => {
          const status = Number(h[':status']);
          statuses.set(status, (statuses.get(status) ?? 0) + 1);
          if (status >= 500) reject(new Error(`status ${status}`));
        });
        req.on('error', reject);
        req.on('close', () => resolve());
        req.resume();
        req.end(c.body);
      }),
    );
    console.log('peer endpoint statuses:', Object.fromEntries(statuses));
    expect([...statuses.keys()].every((s) => s < 500)).toBe(true);

    // a body over the limit is refused with 413 without reading it all
    const big = await new Promise<number>((resolve, reject) => {
      const req = session.request({ ':method': 'PUT', ':path': '/v1/messages/AAAAAAAAAAAA' });
      req.on('response', (h) => resolve(Number(h[':status'])));
      req.on('error', reject);
      const chunk = Buffer.alloc(1 << 20, 0x61);
      let sent = 0;
      const pump = () => {
        while (sent < 64 && req.write(chunk)) sent++; // up to 64 MiB, far over maxBodyBytes
        if (sent < 64 && !req.destroyed) req.once('drain', pump);
      };
      pump();
    });
    expect(big).toBe(413);
    session.close(); // graceful: it waits for the upload the server cut short

    await normalMessageGetsThrough('after peer fuzz');
  }, 600000);
});
