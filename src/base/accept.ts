/**
 * More than one accepted connection per event-loop turn for a listening server.
 *
 * Why: libuv accepts one connection per listening handle per turn of the loop (since 1.45,
 * libuv PR #3696; Node 20 ships 1.46). An SMTP relay whose clients open a connection per
 * message then accepts at most one client per turn: under load (turns of a few ms) clients
 * waited in the kernel's accept queue (1–11 of 20 at C=20) and the greeting took 21 ms of a
 * 54 ms transaction, where Postfix's took 2 ms. Node 20 has no SO_REUSEPORT (`reusePort`
 * came in Node 22.12).
 *
 * How: the listening socket is sent to a short-lived helper process over its IPC channel and
 * sent back `extra` times (subprocess.send with a server: each send duplicates the socket's
 * descriptor, SCM_RIGHTS). Each copy is a listening handle of its own on the same socket, so a
 * turn accepts up to extra + 1 connections. A connection accepted on a copy is handed to the
 * server's 'connection' listeners, as Node's cluster module hands over connections. The helper
 * closes its own copy once the last is acknowledged (a client it accepted meanwhile is sent
 * back like the copies) and exits.
 * Without the helper (it cannot start, or answers nothing in time) the server works as
 * before, one accept per turn.
 */
import { spawn } from 'node:child_process';
import type net from 'node:net';

/**
 * What the helper runs: send the server back `n` times, one after the other (Node sends the
 * next handle once the last was acknowledged), then close its own copy and leave. A client
 * its copy accepts meanwhile is sent back too, so none is dropped (a precaution: the tests never
 * saw the helper accept one, its copy is closed within its first turns).
 */
const HELPER = `process.once('message', (n, h) => {
  let sent = 0;
  let pending = 0;
  const leave = () => { if (sent === n && pending === 0) process.disconnect(); };
  h.on('connection', (s) => { pending++; process.send('accept-socket', s, () => { pending--; leave(); }); });
  const next = () => {
    if (sent === n) { h.close(); return leave(); }
    process.send('accept-handle', h, () => { sent++; next(); });
  };
  next();
});`;

export interface AcceptHandles {
  /** copies in use (0: one accept per turn) */
  readonly count: number;
  /** why there are none, when there are none */
  readonly reason?: string;
  /** closes the copies (the server itself is closed by its owner) */
  close(): Promise<void>;
}

/**
 * Adds up to `extra` listening copies to `server` (already listening). `allowHalfOpen`: as
 * the server was created with (its own accepted sockets get it from the server).
 */
export function addAcceptHandles(server: net.Server, extra: number, o: { allowHalfOpen: boolean; timeoutMs?: number }): Promise<AcceptHandles> {
  const copies: net.Server[] = [];
  const result = (reason?: string): AcceptHandles => ({
    count: copies.length,
    reason: copies.length ? undefined : reason,
    close: () => Promise.all(copies.splice(0).map((c) => new Promise<void>((r) => c.close(() => r())))).then(() => undefined),
  });
  if (extra <= 0) return Promise.resolve(result('none asked for'));
  return new Promise<AcceptHandles>((resolve) => {
    let done = false;
    // no NODE_OPTIONS and no flags of ours: the helper is a bare node
    const child = spawn(process.execPath, ['-e', HELPER], { stdio: ['ignore', 'ignore', 'ignore', 'ipc'], env: {} });
    const finish = (reason?: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (child.connected) child.disconnect();
      if (child.exitCode === null) child.kill();
      resolve(result(reason));
    };
    const timer = setTimeout(() => finish('the helper process did not answer in time'), o.timeoutMs ?? 5000);
    child.on('error', (e) => finish(`the helper process could not start: ${e.message}`));
    // after the helper's last message: it disconnects once it has sent them (or died)
    child.on('disconnect', () => finish('the helper process sent no listener back'));
    const handOver = (socket: net.Socket) => {
      socket.allowHalfOpen = o.allowHalfOpen;
      server.emit('connection', socket);
    };
    child.on('message', (m: unknown, h: unknown) => {
      if (m === 'accept-socket' && h) return handOver(h as net.Socket);
      if (m !== 'accept-handle' || !h || done) return;
      const copy = h as net.Server;
      copies.push(copy);
      copy.on('connection', handOver);
      copy.on('error', (e) => server.emit('error', e));
    });
    child.send(extra, server, (err) => {
      if (err) finish(`could not hand the listener to the helper: ${err.message}`);
    });
  });
}
