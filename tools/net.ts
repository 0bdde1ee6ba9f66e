/**
 * Ports for configurations that must name each other's ports before the nodes bind them.
 *
 * Why not port 0 and close: that hands out a port from the kernel's ephemeral range, which
 * every other listener on port 0 and every outgoing connection draws from too, so a test
 * running beside it could take the port before the node binds it (seen as EADDRINUSE under
 * parallel suites). These ports come from below the ephemeral range instead, from a slice of
 * its own for each test worker (VITEST_POOL_ID), handed out in turn so one process never gets
 * the same port twice, and each checked free by binding it.
 */
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { listenOn } from '../src/base/net.js';

const LOW = 20000;
const SLICE = 1500;

/** The first port of the kernel's ephemeral range (32768 where it cannot be read). */
function ephemeralStart(): number {
  try {
    const first = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(first) && first > LOW + SLICE ? first : 32768;
  } catch {
    return 32768;
  }
}

const slices = Math.max(1, Math.floor((ephemeralStart() - LOW) / SLICE));
const worker = Number(process.env.VITEST_POOL_ID ?? process.env.VITEST_WORKER_ID ?? 0);
const base = LOW + (((worker % slices) + slices) % slices) * SLICE;
// where in its slice a process starts: two runs of the same worker slot rarely overlap
let next = process.pid % SLICE;

function bindable(port: number, host: string): Promise<boolean> {
  const s = net.createServer();
  return listenOn(s, host, port).then(
    () => new Promise<boolean>((r) => s.close(() => r(true))),
    () => false,
  );
}

export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let tries = 0; tries < SLICE; tries++) {
    const port = base + (next++ % SLICE);
    if (await bindable(port, host)) return port;
  }
  throw new Error(`no free port in ${base}-${base + SLICE - 1}`);
}
