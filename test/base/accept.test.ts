/**
 * base/accept.ts: a listening server accepts more than one queued connection per event-loop
 * turn (libuv accepts one per listening handle per turn), and the copies go away on close.
 * Real sockets, a real helper process; turns are counted, not timed.
 */
import { describe, it, expect, afterEach } from 'vitest';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { addAcceptHandles, type AcceptHandles } from '../../src/base/accept.js';
import { countTurns } from '../helpers/index.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function listening(): Promise<{ server: net.Server; port: number; turnsOf: number[] }> {
  const turnsOf: number[] = [];
  const turns = countTurns();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    turnsOf.push(turns.now());
    s.on('error', () => undefined);
    s.end('hi\r\n');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  cleanups.push(() => turns.stop());
  cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
  return { server, port: (server.address() as net.AddressInfo).port, turnsOf };
}

/** `n` clients connect while the loop is held up, so all wait in the accept queue at once. */
async function burst(port: number, n: number): Promise<void> {
  const clients = Array.from({ length: n }, () => net.connect(port, '127.0.0.1'));
  for (const c of clients) c.on('error', () => undefined);
  const end = performance.now() + 100;
  while (performance.now() < end); // the kernel completes the handshakes meanwhile
  await Promise.all(clients.map((c) => new Promise<void>((r) => c.on('close', () => r()).resume())));
}

describe('accept handles', () => {
  it('without copies a turn accepts one connection; with three, four queued connections are accepted in one turn', async () => {
    const plain = await listening();
    await burst(plain.port, 4);
    expect(new Set(plain.turnsOf).size, 'libuv: one accept per listening handle per turn').toBe(4);

    const more = await listening();
    const handles: AcceptHandles = await addAcceptHandles(more.server, 3, { allowHalfOpen: true });
    cleanups.push(() => handles.close());
    expect(handles.reason).toBeUndefined();
    expect(handles.count).toBe(3);
    await burst(more.port, 4);
    expect(more.turnsOf).toHaveLength(4);
    expect(new Set(more.turnsOf).size, 'all four in the same turn').toBe(1);
  });

  it('sockets accepted on a copy keep the half-open setting; closing the copies and the server closes the port', async () => {
    const { server, port } = await listening();
    const handles = await addAcceptHandles(server, 3, { allowHalfOpen: true });
    const seen: boolean[] = [];
    server.on('connection', (s: net.Socket) => seen.push(s.allowHalfOpen));
    for (let i = 0; i < 8; i++) await burst(port, 2);
    expect(seen).toHaveLength(16);
    expect(seen.every((x) => x)).toBe(true);
    await handles.close();
    await new Promise<void>((r) => server.close(() => r()));
    const refused = await new Promise<string>((resolve) => {
      const c = net.connect(port, '127.0.0.1');
      c.on('connect', () => resolve('connected'));
      c.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
    });
    expect(refused).toBe('ECONNREFUSED');
  });

  it('clients that connect while the copies are being made are all served', async () => {
    // a slow connection handler keeps this loop busy, so the helper's copy (listening until
    // its last copy is acknowledged) takes some of the clients
    const { server, port } = await listening();
    server.on('connection', () => {
      const end = performance.now() + 10;
      while (performance.now() < end);
    });
    // the clients run in a process of their own: this loop is busy
    const clients = `const net = require('node:net'); let ok = 0, n = 0; const N = 60;
      const one = () => { const c = net.connect(${port}, '127.0.0.1'); let got = '';
        c.on('data', (d) => (got += d)); c.on('error', () => {});
        c.on('close', () => { if (got === 'hi\\r\\n') ok++; if (++n === N) console.log(ok + '/' + N); }); };
      let i = 0; const t = setInterval(() => { one(); if (++i === N) clearInterval(t); }, 2);`;
    const out = new Promise<string>((resolve) => {
      const p = spawn(process.execPath, ['-e', clients], { stdio: ['ignore', 'pipe', 'inherit'] });
      let o = '';
      p.stdout.on('data', (d) => (o += d));
      p.on('close', () => resolve(o.trim()));
    });
    const handles = await addAcceptHandles(server, 3, { allowHalfOpen: true });
    cleanups.push(() => handles.close());
    expect(await out).toBe('60/60');
  });

  it('asked for none, or when the helper cannot answer in time: no copies, and the reason', async () => {
    const { server } = await listening();
    expect((await addAcceptHandles(server, 0, { allowHalfOpen: false })).count).toBe(0);
    const late = await addAcceptHandles(server, 3, { allowHalfOpen: false, timeoutMs: 1 });
    expect(late.count).toBe(0);
    expect(late.reason).toMatch(/did not answer in time/);
  });
});
