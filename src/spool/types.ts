/**
 * The spool's types: the public ones (index.ts re-exports them), the row shape SQLite hands
 * back, and the context the parts share.
 */
import type { BodyFiles } from './files.js';
import type Database from 'better-sqlite3';
import type { Statements } from './statements.js';
import type { Envelope } from '../base/message.js';

export type Role = 'primary' | 'shadow';
export type MessageState = 'spooled' | 'queued' | 'held' | 'shadow';
export type RecipientState = 'pending' | 'delivered' | 'failed';

/** A message to store: its envelope, and the client address it came from (primaries). */
export interface NewMessage extends Envelope {
  client?: string;
}

export interface ShadowCopy extends NewMessage {
  origin: string;
  originIncarnation: string;
  /** recipients (indexes) the origin already delivered */
  done?: number[];
}

/** A message handed over by a draining peer (its remaining recipients only). */
export interface TransferredMessage extends NewMessage {
  held?: boolean;
}

export interface RecipientRow {
  idx: number;
  address: string;
  state: RecipientState;
  lastError: string | null;
  /** a failed recipient whose bounce was accepted (or not needed) */
  reported: boolean;
}

export interface MessageSummary {
  id: string;
  role: Role;
  state: MessageState;
  origin: string;
  sender: string;
  size: number;
  receivedAt: number;
  nextAttemptAt: number;
  attempts: number;
  lastError: string | null;
  shadowPeer: string | null;
  recipients: RecipientRow[];
}

export interface MessageWithBody extends MessageSummary {
  body: Buffer;
}

/** What `queue show` needs beyond the summary. */
export interface MessageDetail extends MessageSummary {
  client: string | null;
  originIncarnation: string;
}

/** One line of the queue gauges: how many messages of a role/state, and the oldest arrival. */
export interface QueueStat {
  role: Role;
  state: MessageState;
  count: number;
  oldestReceivedAt: number;
}

export interface RecipientOutcome {
  idx: number;
  state: RecipientState;
  error?: string;
}

export interface AttemptResult {
  /** every recipient is final and the message was purged */
  purged: boolean;
  pending: number;
  /** failed recipients still waiting for their bounce */
  unreported: number;
  /** the message was no longer in the spool (cancelled while the attempt ran) */
  gone: boolean;
}

/** What a discard from a primary did to this node's copies. */
export interface DiscardResult {
  /** shadow copies purged */
  purged: number;
  /** promoted copies cancelled before this node finished them */
  cancelled: string[];
  /** ids (or id/recipient) both the origin and this node delivered */
  duplicates: string[];
}

export interface PromotedMessage {
  id: string;
  origin: string;
  pending: number;
}

export interface ShadowRef {
  id: string;
  origin: string;
  originIncarnation: string;
  receivedAt: number;
}

/** What the peers said about a primary left `spooled` by an earlier run. */
export interface InDoubtOutcome {
  id: string;
  outcome: { held: string } | 'absent' | 'unanswered';
}

export interface RecipientDiscard {
  id: string;
  idx: number[];
}

export type SpoolOptions = ReadonlySpoolOptions | WritableSpoolOptions;

interface CommonSpoolOptions {
  /** this node's name: origin of the primaries it accepts */
  node: string;
  /** cap on the database size; 0 or absent = unlimited */
  maxSizeBytes?: number;
}

/** inspection only (queue tools while the daemon runs): no migration, no writes */
export interface ReadonlySpoolOptions extends CommonSpoolOptions {
  readonly: true;
}

export interface WritableSpoolOptions extends CommonSpoolOptions {
  readonly?: false;
  /**
   * How long a write waits for a lock held by another connection (`spool.busyTimeoutMs`;
   * its default is the config schema's). better-sqlite3 waits synchronously (the event
   * loop stalls), so keep it short.
   */
  busyTimeoutMs: number;
  /** another connection checkpoints the WAL (the daemon's checkpointer thread): this one only as a safety net */
  externalCheckpoints?: boolean;
}

/** A `messages` row as the statements select it (without client, incarnation and body). */
export interface MessageRow {
  id: string;
  role: Role;
  state: MessageState;
  origin: string;
  sender: string;
  size: number;
  received_at: number;
  next_attempt_at: number;
  attempts: number;
  last_error: string | null;
  shadow_peer: string | null;
}

/** What every part works on: the connection, its statements, this node's identity, the size caps. */
export interface SpoolContext {
  readonly db: Database.Database;
  readonly st: Statements;
  readonly file: string;
  readonly node: string;
  readonly incarnation: string;
  /** hard page cap and the tighter cap for inserting a new message (0 = none) */
  readonly maxPages: number;
  readonly insertPages: number;
  readonly pageSize: number;
  /** large bodies (files.ts) */
  readonly files: BodyFiles;
}
