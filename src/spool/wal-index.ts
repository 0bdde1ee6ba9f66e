/**
 * How much of the write-ahead log is not yet copied into the database file, read from the
 * WAL-index (`spool.db-shm`) that every connection shares, and when the checkpointer should
 * copy it (checkpointer.ts).
 *
 * Why: each checkpoint costs two fsyncs (the log, then the database file). Run every 250 ms
 * they were the extra fsyncs of a serial sender (1.09 per message against Postfix's 1.00).
 * Going by how many frames wait, a checkpoint comes once per CHECKPOINT_FRAMES of log, and
 * once when the log stops growing (an idle node folds its last writes in and syncs them).
 *
 * Format (https://www.sqlite.org/walformat.html, §2.1, stable since SQLite 3.7.0): the file
 * starts with two copies of a 48-byte header in the machine's byte order — iVersion (u32,
 * 3007000) at 0, mxFrame (u32, the last valid frame) at 16 — then the checkpoint info,
 * whose nBackfill (u32, frames already copied) is at 96. A header whose copies differ is
 * being written: the caller reads again on its next round.
 */
import { closeSync, openSync, readSync } from 'node:fs';

const HEADER = 48;
const VERSION = 3007000;
const BYTES = 100;

export interface WalIndex {
  /** frames in the log (0 after the log restarted) */
  mxFrame: number;
  /** frames of it already in the database file */
  nBackfill: number;
}

export class WalIndexReader {
  private fd: number | null = null;
  private readonly buf = Buffer.alloc(BYTES);

  constructor(private readonly shmFile: string) {}

  /** The current counts; null when there is no index yet or it is being rewritten. */
  read(): WalIndex | null {
    try {
      this.fd ??= openSync(this.shmFile, 'r');
      if (readSync(this.fd, this.buf, 0, BYTES, 0) < BYTES) return null;
    } catch {
      return null;
    }
    const b = this.buf;
    // the machine's byte order: the version reads right in one of the two
    const le = b.readUInt32LE(0) === VERSION;
    if (!le && b.readUInt32BE(0) !== VERSION) return null;
    if (!b.subarray(0, HEADER).equals(b.subarray(HEADER, 2 * HEADER))) return null;
    const u32 = (at: number) => (le ? b.readUInt32LE(at) : b.readUInt32BE(at));
    return { mxFrame: u32(16), nBackfill: u32(96) };
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}

/** Frames (pages, 4 KB each by default) of log that start a checkpoint: 16 MB. */
export const CHECKPOINT_FRAMES = 4096;
/** A log that has not grown for this long is checkpointed (and so synced). */
export const CHECKPOINT_IDLE_MS = 1000;
/** A log that keeps growing slowly is checkpointed at least this often. */
export const CHECKPOINT_MAX_AGE_MS = 5000;

/** The checkpointer's memory between rounds. */
export interface CheckpointState {
  /** mxFrame seen last round, and when it last changed */
  lastFrame: number;
  changedAt: number;
  /** when the last checkpoint ran */
  checkpointAt: number;
}

/**
 * Whether to checkpoint now. `idx` null (no index, or one being rewritten, or an unknown
 * format): checkpoint, as every round did before — a PASSIVE checkpoint of an empty log is
 * cheap and never wrong.
 */
export function checkpointDue(idx: WalIndex | null, s: CheckpointState, now: number): boolean {
  if (!idx) return true;
  if (idx.mxFrame !== s.lastFrame) {
    s.lastFrame = idx.mxFrame;
    s.changedAt = now;
  }
  const waiting = idx.mxFrame - idx.nBackfill;
  if (waiting <= 0) return false;
  if (waiting >= CHECKPOINT_FRAMES) return true;
  if (now - s.changedAt >= CHECKPOINT_IDLE_MS) return true;
  return now - s.checkpointAt >= CHECKPOINT_MAX_AGE_MS;
}
