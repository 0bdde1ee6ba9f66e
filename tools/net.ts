/** A TCP port that was free a moment ago (for configs that must name each other's ports). */
import net from 'node:net';
import { listenOn } from '../src/base/net.js';

export async function freePort(host = '127.0.0.1'): Promise<number> {
  const s = net.createServer();
  const { port } = await listenOn(s, host, 0);
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}
