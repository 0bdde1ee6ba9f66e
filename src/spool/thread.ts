/**
 * The spool with its writes on a thread of their own.
 *
 * Why: with `synchronous=FULL` every commit waits for an fsync, and better-sqlite3 waits on
 * the thread that runs it. On the event loop that stalls every SMTP session and the
 * replication link for the whole fsync (measured: 25–50 % of the loop under load), and the
 * group commit could only gather what one loop turn produced.
 *
 * How: the writable `Spool` — the same class, same SQL, same group commit, same pragmas —
 * runs in a worker thread (writer.ts). `ThreadedSpool` is a `Spool` on a second, read-only
 * connection: reads stay synchronous and local (WAL lets a reader see every committed write
 * without waiting for the writer), and every write method is forwarded to the worker and
 * resolves when the worker's transaction is durable. While the worker commits, new writes
 * queue up and go into its next transaction: the group commit now gathers everything that
 * arrived during the fsync. Durability is unchanged: a write resolves only after its commit.
 *
 * Every public member of Spool is in exactly one list: WRITES (forwarded: the forwarders are
 * generated from the list), READS, or OWN. A member in none — a new write not added to
 * WRITES — is a compile error naming it. The compiler cannot see whether a method writes, so
 * a write listed in READS still compiles: the thread test catches it, and on the read-only
 * connection it would fail loudly.
 */
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import Database from 'better-sqlite3';
import { Spool, type WritableSpoolOptions } from './index.js';
import { busyTimeout, pageCache } from './schema.js';
import { Staging, stageArgs } from './staging.js';

/** The staging area's size: a few large bodies on their way to the writer at once. */
const STAGING_BYTES = 32 * 1024 * 1024;

/** Spool's methods that return a promise: only those can wait for another thread's answer. */
type AsyncMethod = { [K in keyof Spool]: Spool[K] extends (...a: never[]) => Promise<unknown> ? K : never }[keyof Spool];

/** Methods of Spool that write: they run in the writer thread. */
export const WRITES = [
  'spoolPrimary',
  'markAccepted',
  'settleInDoubt',
  'settleFailures',
  'dropUnacked',
  'recordAttempt',
  'deferUntil',
  'dropPromotedByPeer',
  'storeShadow',
  'purgeShadows',
  'shadowRecipientsDone',
  'promoteShadows',
  'promotedFor',
  'forgetPromoted',
  'prunePromoted',
  'dropShadows',
  'discardsConfirmed',
  'recipientDiscardsConfirmed',
  'hold',
  'release',
  'retryNow',
  'retryAllNow',
  'deletePrimary',
  'oweDiscards',
  'takeTransfer',
  'handedOver',
  'reshadowed',
  'failForBounce',
] as const satisfies ReadonlyArray<AsyncMethod>;

/** Methods of Spool that only read: they run on the caller's thread, on the read-only connection. */
export const READS = [
  'inDoubt',
  'due',
  'nextDueAt',
  'knownPrimaries',
  'hasShadowsFrom',
  'shadowOrigins',
  'drainPrimaries',
  'drainShadows',
  'isPromoted',
  'shadowIncarnations',
  'shadowsToVerify',
  'oldShadows',
  'owedDiscards',
  'owedRecipientDiscards',
  'discardsPending',
  'get',
  'getWithBody',
  'list',
  'counts',
  'deferredIds',
  'detail',
  'queueStats',
  'diskBytes',
  'browse',
  'queueCounts',
  'topErrors',
  // the SQLite backup API only reads its source
  'backup',
] as const satisfies ReadonlyArray<keyof Spool>;

/** Members that are neither: data, and what ThreadedSpool does itself (recover, close). */
const OWN = ['incarnation', 'file', 'isClosed', 'recover', 'close'] as const satisfies ReadonlyArray<keyof Spool>;

type WriteName = (typeof WRITES)[number];

/** Members of Spool in no list. ThreadedSpool implements them as `never`: none may exist. */
type Unlisted = Exclude<keyof Spool, WriteName | (typeof READS)[number] | (typeof OWN)[number]>;

/** The write methods, as ThreadedSpool forwards them: Spool's own signatures. */
type Writes = Pick<Spool, WriteName>;

/** One forwarder per name in WRITES, built from the list: none can be missing. */
function forwarders(call: (method: WriteName, args: unknown[]) => Promise<unknown>): Writes {
  // the cast is the one place types are taken on trust: each forwarder hands Spool's own
  // arguments to the same method in the writer, which answers with that method's result
  return Object.fromEntries(WRITES.map((method) => [method, (...args: unknown[]) => call(method, args)])) as unknown as Writes;
}

export interface WireError {
  name: string;
  message: string;
  code?: string;
}

export type WriterResult = { seq: number; ok: true; value: unknown } | { seq: number; ok: false; error: WireError };

/**
 * Calls and results travel in batches: what one turn of a thread's work produced (a socket
 * read's writes, a group commit's answers) in one message. Each message wakes the other
 * thread and is a task of its own there; one per call was ~4 % of the primary's main thread
 * at C=20.
 */
export type WriterReply =
  | { type: 'ready'; recovered: ReturnType<Spool['recover']> }
  | { type: 'failed'; error: WireError }
  | { type: 'results'; results: WriterResult[] }
  | { type: 'closed' };

export interface WriterCall {
  seq: number;
  method: WriteName;
  args: unknown[];
}

export type WriterRequest = { type: 'calls'; calls: WriterCall[] } | { type: 'close' };

/** Collects items and hands them over together once the current task's synchronous work is done. */
export class Batcher<T> {
  private items: T[] = [];
  private scheduled = false;

  constructor(private readonly send: (items: T[]) => void) {}

  push(item: T): void {
    this.items.push(item);
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => this.flush());
  }

  flush(): void {
    this.scheduled = false;
    if (this.items.length === 0) return;
    const items = this.items;
    this.items = [];
    this.send(items);
  }
}

export function toWire(e: unknown): WireError {
  const err = e as { name?: string; message?: string; code?: unknown };
  return { name: err?.name ?? 'Error', message: err?.message ?? String(e), code: typeof err?.code === 'string' ? err.code : undefined };
}

export function fromWire(w: WireError): Error {
  const e = new Error(w.message) as Error & { code?: string };
  e.name = w.name;
  if (w.code) e.code = w.code;
  return e;
}

/**
 * The worker's file. Under a TypeScript test runner this module is loaded from src/ while a
 * worker thread can only run the compiled JavaScript: use the build's copy then (`npm test`
 * builds first).
 */
function workerFile(name: 'writer' | 'checkpointer'): string {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.ts')) {
    const root = path.resolve(path.dirname(here), '..', '..');
    return path.join(root, 'dist', 'spool', `${name}.js`);
  }
  return path.join(path.dirname(here), `${name}.js`);
}

interface Waiter {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  /** staging slots its arguments took (freed once the writer answered) */
  staged: number[];
}

export class ThreadedSpool extends Spool implements Record<Unlisted, never> {
  private readonly waiters = new Map<number, Waiter>();
  private seq = 0;
  private dead: Error | undefined;
  private stopping: Promise<void> | undefined;
  private checkpointerAlive = true;
  private readonly calls = new Batcher<WriterCall>((calls) => this.worker.postMessage({ type: 'calls', calls } satisfies WriterRequest));

  private constructor(
    db: Database.Database,
    file: string,
    opts: WritableSpoolOptions,
    private readonly worker: Worker,
    private readonly checkpointer: Worker,
    private readonly recovered: ReturnType<Spool['recover']>,
    private readonly staging: Staging,
    onFatal: (err: Error) => void,
  ) {
    super(db, file, { ...opts, readonly: true });
    checkpointer.once('exit', () => (this.checkpointerAlive = false));
    // own properties: they take the place of Spool's write methods on this instance
    Object.assign(this, forwarders((method, args) => this.forward(method, args)));
    worker.on('message', (m: WriterReply) => {
      if (m.type !== 'results') return;
      for (const r of m.results) {
        const w = this.waiters.get(r.seq);
        if (!w) continue;
        this.waiters.delete(r.seq);
        for (const at of w.staged) this.staging.free(at);
        if (r.ok) w.resolve(r.value);
        else w.reject(fromWire(r.error));
      }
    });
    const die = (err: Error) => {
      if (this.dead) return;
      this.dead = err;
      for (const w of this.waiters.values()) w.reject(err);
      this.waiters.clear();
      if (!this.stopping) onFatal(err);
    };
    worker.on('error', (e) => die(new Error(`spool writer thread failed: ${e.message}`)));
    worker.on('exit', (code) => die(new Error(`spool writer thread exited (${code})`)));
  }

  /**
   * Starts the writer thread (it opens the spool, migrates it and runs recovery), then opens
   * the read-only connection.
   * `onFatal` hears of a writer thread that died (every write fails from then on).
   */
  static async openThreaded(
    dataDir: string,
    opts: WritableSpoolOptions,
    o: { onFatal?: (err: Error) => void } = {},
  ): Promise<ThreadedSpool> {
    const onFatal = o.onFatal ?? (() => {});
    // checkpoints run on a thread of their own (checkpointer.ts): off every commit's path
    opts = { ...opts, externalCheckpoints: true };
    const staging = new Staging(STAGING_BYTES);
    const worker = new Worker(workerFile('writer'), { workerData: { dataDir, opts, staging: staging.area } });
    const ready = await new Promise<ReturnType<Spool['recover']>>((resolve, reject) => {
      const onMessage = (m: WriterReply) => {
        if (m.type === 'ready') resolve(m.recovered);
        else if (m.type === 'failed') reject(fromWire(m.error));
        else return;
        worker.off('message', onMessage);
        worker.off('error', reject);
      };
      worker.on('message', onMessage);
      worker.once('error', reject);
    }).catch(async (e: unknown) => {
      await worker.terminate();
      throw e;
    });
    const file = path.join(dataDir, 'spool.db');
    const db = new Database(file, { readonly: true, fileMustExist: true });
    busyTimeout(db, opts.busyTimeoutMs);
    pageCache(db);
    const checkpointer = new Worker(workerFile('checkpointer'), { workerData: { file, busyTimeoutMs: opts.busyTimeoutMs } });
    // a checkpointer that fails leaves the writer's own (rarer) checkpoints: nothing is lost
    checkpointer.on('error', () => undefined);
    checkpointer.unref();
    return new ThreadedSpool(db, file, opts, worker, checkpointer, ready, staging, onFatal);
  }

  private forward(method: WriteName, args: unknown[]): Promise<unknown> {
    if (this.dead) return Promise.reject(this.dead);
    if (this.stopping) return Promise.reject(new Error('spool is closed'));
    const seq = ++this.seq;
    const staged: number[] = [];
    const wire = stageArgs(args, this.staging, staged) as unknown[];
    return new Promise<unknown>((resolve, reject) => {
      this.waiters.set(seq, { resolve, reject, staged });
      this.calls.push({ seq, method, args: wire });
    });
  }

  protected override write<T>(): Promise<T> {
    // a write method not listed in WRITES reached the read-only connection
    return Promise.reject(new Error('spool: this write method is not forwarded to the writer thread (add it to WRITES)'));
  }

  /** Recovery ran in the writer thread when it opened the spool; this is its result. */
  override recover(): ReturnType<Spool['recover']> {
    return this.recovered;
  }

  /** Lets the writer finish what it was given, stops it, closes the read connection. */
  override close(): Promise<void> {
    // calls made before the close go to the writer before it
    if (!this.stopping) this.calls.flush();
    this.stopping ??= (async () => {
      if (this.checkpointerAlive) {
        await new Promise<void>((resolve) => {
          this.checkpointer.once('exit', () => resolve());
          this.checkpointer.once('message', () => resolve());
          this.checkpointer.postMessage({ type: 'close' });
        });
      }
      await this.checkpointer.terminate();
      if (!this.dead) {
        const closed = new Promise<void>((resolve) => {
          const onMessage = (m: WriterReply) => {
            if (m.type === 'closed') resolve();
          };
          this.worker.on('message', onMessage);
          this.worker.once('exit', () => resolve());
        });
        this.worker.postMessage({ type: 'close' } satisfies WriterRequest);
        await closed;
      }
      await this.worker.terminate();
      await super.close();
    })();
    return this.stopping;
  }
}
