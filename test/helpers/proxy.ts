/**
 * A TCP proxy for network faults on loopback (tc netem is not available on these kernels):
 * forwards every connection to a target, and on command stops forwarding without closing
 * (a silent network: no RST, no FIN), drops one direction only, delays, cuts (RST), or
 * refuses new connections. Real sockets both sides; nothing of the relay is mocked.
 */
import net from 'node:net';

export type Direction = 'up' | 'down';

interface Conn {
  client: net.Socket;
  server: net.Socket;
  /** this connection never forwards again (frozen), whatever the proxy's mode */
  frozen: boolean;
}

export class TcpProxy {
  private readonly server = net.createServer((c) => this.accept(c));
  private readonly conns = new Set<Conn>();
  /** up: client → target; down: target → client. A dropped direction forwards nothing. */
  private dropped = new Set<Direction>();
  private delayMs = 0;
  private refusing = false;
  port = 0;

  constructor(
    private readonly targetPort: number,
    private readonly targetHost = '127.0.0.1',
  ) {}

  async listen(port = 0, host = '127.0.0.1'): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => resolve());
    });
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  private accept(client: net.Socket): void {
    if (this.refusing) {
      client.resetAndDestroy();
      return;
    }
    const server = net.connect(this.targetPort, this.targetHost);
    const conn: Conn = { client, server, frozen: false };
    this.conns.add(conn);
    client.setNoDelay(true);
    server.setNoDelay(true);
    const pipe = (from: net.Socket, to: net.Socket, dir: Direction) => {
      from.on('data', (d: Buffer) => {
        // data on a silent path is swallowed, as a network that drops packets would
        if (conn.frozen || this.dropped.has(dir)) return;
        if (this.delayMs > 0) setTimeout(() => to.writable && to.write(d), this.delayMs);
        else if (to.writable) to.write(d);
      });
    };
    pipe(client, server, 'up');
    pipe(server, client, 'down');
    const end = () => {
      this.conns.delete(conn);
      client.destroy();
      server.destroy();
    };
    // a silent network delivers no FIN or RST either: a frozen connection stays open
    client.on('close', () => conn.frozen || end());
    server.on('close', () => conn.frozen || end());
    client.on('error', () => {});
    server.on('error', () => {});
  }

  /** Back to forwarding both ways (frozen connections stay frozen: their bytes are gone). */
  heal(): void {
    this.dropped.clear();
    this.refusing = false;
  }

  /** Silently drops both directions, for existing and new connections (a partition). */
  partition(): void {
    this.dropped = new Set(['up', 'down']);
  }

  /** Silently drops one direction only. */
  drop(dir: Direction): void {
    this.dropped.add(dir);
  }

  /** Delays every chunk by `ms` (0: none). */
  delay(ms: number): void {
    this.delayMs = ms;
  }

  /**
   * The connections open now stop forwarding for good, and are never closed; new ones
   * forward normally. This is the state the wedged link was found in: a session with no
   * working socket behind it while the peer itself is up.
   */
  freezeExisting(): number {
    let n = 0;
    for (const c of this.conns) {
      if (!c.frozen) n++;
      c.frozen = true;
    }
    return n;
  }

  /** Resets every connection (RST to both sides). */
  cut(): void {
    for (const c of this.conns) {
      c.client.resetAndDestroy();
      c.server.resetAndDestroy();
    }
    this.conns.clear();
  }

  /** New connections are reset at once (a closed port); existing ones are cut. */
  refuse(): void {
    this.refusing = true;
    this.cut();
  }

  /** Connections currently open through the proxy (frozen ones included). */
  get connections(): number {
    return this.conns.size;
  }

  async close(): Promise<void> {
    for (const c of this.conns) {
      c.client.destroy();
      c.server.destroy();
    }
    this.conns.clear();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
