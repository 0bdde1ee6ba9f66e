/** A TCP port that was free a moment ago (for configs that must name each other's ports). */
import net from 'node:net';

export async function freePort(host = '127.0.0.1'): Promise<number> {
  const s = net.createServer();
  const { port } = await listenOn(s, host, 0);
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** Starts `server` listening; resolves with the bound address (the real port when 0 was asked). */
export function listenOn(server: net.Server, host: string, port: number): Promise<{ host: string; port: number }> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const a = server.address();
      resolve({ host, port: typeof a === 'object' && a ? a.port : port });
    });
  });
}
