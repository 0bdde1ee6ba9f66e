/**
 * The spool's writer thread (see thread.ts): owns the writable connection, runs the write
 * methods it is sent, answers each once its transaction is durable. Calls that arrive while
 * a commit (fsync) is running land in the next transaction.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { Spool, type WritableSpoolOptions } from './index.js';
import { Batcher, toWire, WRITES, type WriterReply, type WriterRequest, type WriterResult } from './thread.js';
import { isStaged } from './staging.js';

const port = parentPort!;
const { dataDir, opts, staging } = workerData as { dataDir: string; opts: WritableSpoolOptions; staging: SharedArrayBuffer };
const allowed = new Set<string>(WRITES);

/** Structured clone turns Buffers into plain Uint8Arrays; SQLite binds Buffers. A staged body is a view of the staging area. */
function revive(x: unknown): unknown {
  if (isStaged(x)) return Buffer.from(staging, x.$staged[0], x.$staged[1]);
  if (x instanceof Uint8Array) return Buffer.isBuffer(x) ? x : Buffer.from(x.buffer, x.byteOffset, x.byteLength);
  if (Array.isArray(x)) return x.map(revive);
  if (x && typeof x === 'object') {
    const o = x as Record<string, unknown>;
    for (const k of Object.keys(o)) o[k] = revive(o[k]);
  }
  return x;
}

const send = (m: WriterReply) => port.postMessage(m);
// a group commit's answers resolve together: they go back in one message
const results = new Batcher<WriterResult>((r) => send({ type: 'results', results: r }));

let spool: Spool;
try {
  spool = Spool.open(dataDir, { ...opts, readonly: false });
  send({ type: 'ready', recovered: spool.recover() });
} catch (e) {
  send({ type: 'failed', error: toWire(e) });
  process.exit(1);
}

port.on('message', (m: WriterRequest) => {
  if (m.type === 'close') {
    void spool.close().finally(() => {
      results.flush();
      send({ type: 'closed' });
    });
    return;
  }
  for (const { seq, method, args } of m.calls) {
    if (!allowed.has(method)) {
      results.push({ seq, ok: false, error: { name: 'Error', message: `spool writer: unknown method ${method}` } });
      continue;
    }
    const fn = spool[method] as (...a: unknown[]) => Promise<unknown>;
    fn.apply(spool, revive(args) as unknown[]).then(
      (value) => results.push({ seq, ok: true, value }),
      (e: unknown) => results.push({ seq, ok: false, error: toWire(e) }),
    );
  }
});
