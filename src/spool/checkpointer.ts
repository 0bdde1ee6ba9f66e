/**
 * The spool's checkpointer thread: copies the write-ahead log back into the database file
 * (`PRAGMA wal_checkpoint(PASSIVE)`) on a connection of its own, when enough of the log waits
 * or the log stopped growing (wal-index.ts: it looks every CHECKPOINT_MS).
 *
 * Why: SQLite checkpoints inside the commit that crosses `wal_autocheckpoint` (1000 pages by
 * default). That commit — a message's spool write, on its reply path — then also copies up
 * to 4 MB and waits for two more fsyncs (WAL, database): with 1 MB messages one message in
 * four paid it. A PASSIVE checkpoint on another connection never blocks the writer (WAL lets
 * them run side by side); once it has copied every frame, the writer's next transaction
 * starts the log from the beginning again. The writer keeps a large autocheckpoint only as a
 * safety net, should this thread stop.
 */
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { busyTimeout, pageCache } from './schema.js';
import { checkpointDue, WalIndexReader, type CheckpointState } from './wal-index.js';
import { monotonicMs } from '../base/clock.js';

export const CHECKPOINT_MS = 250;

const port = parentPort!;
const { file, busyTimeoutMs } = workerData as { file: string; busyTimeoutMs: number };
const db = new Database(file, { fileMustExist: true });
busyTimeout(db, busyTimeoutMs);
pageCache(db);
// the same durability as the writer: a checkpoint syncs the WAL, then the database file
db.pragma('synchronous = FULL');
// this connection only checkpoints: it must never start one of its own mid-statement
db.pragma('wal_autocheckpoint = 0');

const index = new WalIndexReader(`${file}-shm`);
const state: CheckpointState = { lastFrame: -1, changedAt: monotonicMs(), checkpointAt: monotonicMs() };
let stopping = false;
const timer = setInterval(() => {
  if (stopping) return;
  const now = monotonicMs();
  if (!checkpointDue(index.read(), state, now)) return;
  state.checkpointAt = now;
  try {
    // a few rounds at most: frames the writer added meanwhile are caught up right after
    for (let i = 0; i < 3; i++) {
      const r = db.pragma('wal_checkpoint(PASSIVE)') as Array<{ busy: number; log: number; checkpointed: number }>;
      const row = r[0];
      if (!row || row.log <= 0 || row.checkpointed >= row.log) break;
    }
  } catch {
    // busy or a storage error: the next round tries again (the writer's safety net holds)
  }
}, CHECKPOINT_MS);

port.on('message', (m: { type: string }) => {
  if (m.type !== 'close') return;
  stopping = true;
  clearInterval(timer);
  index.close();
  db.close();
  port.postMessage({ type: 'closed' });
});
