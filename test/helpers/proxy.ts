/**
 * A TCP proxy for network faults on loopback (tc netem is not available on these kernels):
 * forwards every connection to a target, and on command stops forwarding without closing
 * (a silent network: no RST, no FIN), drops one direction only, delays, cuts (RST), or
 * refuses new connections. Real sockets both sides; nothing of the relay is mocked.
 * For a next hop that misbehaves: a black hole (accepts TCP, never answers), a trickle (N
 * bytes a second, nothing lost), and a reset in the middle of an SMTP DATA upload.
 */
import net from 'node:net';

export type Direction = 'up' | 'down';

interface Conn {
  client: net.Socket;
  server: net.Socket;
  /** this connection never forwards again (frozen), whatever the proxy's mode */
  frozen: boolean;
  /** bytes held back by a trickle, per direction */
  queued: Record<Direction, Buffer[]>;
  /** client → target bytes seen, until DATA was seen (resetInData) */
  upText: string;
  inData: boolean;
}

export class TcpProxy {
  private readonly server = net.createServer((c) => this.accept(c));
  private readonly conns = new Set<Conn>();
  /** up: client → target; down: target → client. A dropped direction forwards nothing. */
  private dropped = new Set<Direction>();
  private delayMs = 0;
  private refusing = false;
  private blackholing = false;
  private trickleBps = 0;
  private trickleTimer: NodeJS.Timeout | undefined;
  private resettingData = false;
  /** connections reset in the middle of DATA (resetInData) */
  resets = 0;
  /** the target the proxy forwards to (a test may point it elsewhere) */
  targetPort: number;
  port = 0;

  constructor(
    targetPort: number,
    private readonly targetHost = '127.0.0.1',
  ) {
    this.targetPort = targetPort;
  }

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
    if (this.blackholing) {
      // a black hole: the TCP handshake completes, then nothing, ever (no target behind it)
      const server = new net.Socket();
      this.conns.add({ client, server, frozen: true, queued: { up: [], down: [] }, upText: '', inData: false });
      client.on('error', () => {});
      return;
    }
    const server = net.connect(this.targetPort, this.targetHost);
    const conn: Conn = { client, server, frozen: false, queued: { up: [], down: [] }, upText: '', inData: false };
    this.conns.add(conn);
    client.setNoDelay(true);
    server.setNoDelay(true);
    const pipe = (from: net.Socket, to: net.Socket, dir: Direction) => {
      from.on('data', (d: Buffer) => {
        // data on a silent path is swallowed, as a network that drops packets would
        if (conn.frozen || this.dropped.has(dir)) return;
        if (dir === 'up' && this.resettingData && this.cutInData(conn, d)) return;
        if (this.trickleBps > 0 || conn.queued[dir].length) {
          conn.queued[dir].push(d);
          return;
        }
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
    this.blackholing = false;
    this.resettingData = false;
    this.trickle(0);
  }

  /**
   * A next hop that accepts TCP and never answers: open connections stop forwarding for
   * good (never closed), new ones complete the handshake and get nothing. heal() ends it for
   * new connections only; the hung ones stay hung until the client gives up on them.
   */
  blackhole(): void {
    this.blackholing = true;
    this.freezeExisting();
  }

  /**
   * At most `bps` bytes a second per direction per connection, nothing lost (0: normal;
   * what was held back is then sent at once).
   */
  trickle(bps: number): void {
    this.trickleBps = bps;
    clearInterval(this.trickleTimer);
    this.trickleTimer = undefined;
    const flush = (c: Conn, dir: Direction, max: number) => {
      const to = dir === 'up' ? c.server : c.client;
      let left = max;
      while (left > 0 && c.queued[dir].length) {
        const head = c.queued[dir][0]!;
        const part = head.subarray(0, left);
        if (part.length === head.length) c.queued[dir].shift();
        else c.queued[dir][0] = head.subarray(part.length);
        left -= part.length;
        if (to.writable) to.write(part);
      }
    };
    if (bps <= 0) {
      for (const c of this.conns) if (!c.frozen) for (const dir of ['up', 'down'] as const) flush(c, dir, Infinity);
      return;
    }
    // one byte every 1000/bps ms (rounded to at least 10 ms between sends)
    const every = Math.max(10, Math.round(1000 / bps));
    const per = Math.max(1, Math.round((bps * every) / 1000));
    this.trickleTimer = setInterval(() => {
      for (const c of this.conns) if (!c.frozen) for (const dir of ['up', 'down'] as const) flush(c, dir, per);
    }, every);
    this.trickleTimer.unref();
  }

  /**
   * Every connection that starts an SMTP DATA upload is reset (RST both ways) once part of
   * the message went through, until heal(): the next hop never sees the final dot.
   */
  resetInData(): void {
    this.resettingData = true;
  }

  /** Handles one client → target chunk in resetInData mode; true when it cut the connection. */
  private cutInData(c: Conn, d: Buffer): boolean {
    if (!c.inData) {
      // the DATA command line; nodemailer sends the body only after the 354
      c.upText = (c.upText + d.toString('latin1')).slice(-64);
      if (/(^|\n)DATA\r\n$/i.test(c.upText)) c.inData = true;
      return false;
    }
    const half = d.subarray(0, Math.max(1, Math.floor(d.length / 2)));
    c.server.write(half, () => {
      c.client.resetAndDestroy();
      c.server.resetAndDestroy();
    });
    c.frozen = true;
    this.conns.delete(c);
    this.resets++;
    return true;
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
    clearInterval(this.trickleTimer);
    for (const c of this.conns) {
      c.client.destroy();
      c.server.destroy();
    }
    this.conns.clear();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
