/**
 * spool — the only owner of SQLite. Every state change of a message is one named method.
 *
 * Implementation summary:
 * - One database file per node (`<dataDir>/spool.db`), WAL journal, `synchronous=FULL`:
 *   a resolved write promise means the change is on disk (our 250 is a durability promise).
 * - Writes are group-committed: all writes issued in the same event-loop turn run in one
 *   transaction (one fsync), each inside its own savepoint so one failing write does not
 *   undo the others. Reads are synchronous. The daemon runs the writes on a thread of their
 *   own (thread.ts: fsyncs never stall the event loop) and reads on a second connection.
 * - Roles: `primary` (this node accepted it and delivers it) and `shadow` (a copy held for
 *   the peer named in `origin`, never delivered unless promoted).
 * - Primary states: `spooled` (written, shadow copy not yet confirmed, no 250 given) →
 *   `queued` (accepted, 250 given). On open, `spooled` rows are dropped: their client
 *   never saw 250 and retries.
 * - When every recipient of a primary is final (delivered, or failed with its bounce accepted
 *   or not needed), the message is purged and a discard for its shadow copy is queued in the
 *   outbox in the same transaction. A recipient done while others are still pending owes the
 *   peer a recipient-level discard (`outbox_rcpt`), so a promotion delivers only the rest.
 * - Failover (shadow side): `promoteShadows` turns a primary's shadow copies into this node's
 *   own queued primaries and records them in `promoted` until their origin has reconciled;
 *   a discard that arrives for a promoted message cancels it (or counts a duplicate).
 * - Group commit runs `BEGIN IMMEDIATE` (a locked database fails fast, once per batch). When
 *   SQLite rolls a whole batch back (SQLITE_FULL, IOERR), the failing write is rejected and
 *   the others run again in the next batch — nothing is reported durable that was not.
 * - `maxSizeBytes` caps the file (`PRAGMA max_page_count`); new messages must leave a reserve
 *   free, so delivery bookkeeping and purges still work on a full spool.
 * - The schema is versioned in `meta.schema_version`; migrations run in order on open.
 *
 * This file is the `Spool` facade: each method names one transition (or read) and hands the
 * work to the part that does it — primary.ts, shadows.ts (and promotion), outbox.ts,
 * operator.ts, inspect.ts (recovery and reads) — on the connection schema.ts opens, with the
 * statements of statements.ts; writes go through the group commit (commit.ts). Types:
 * types.ts. At the end: the slice of the spool each consumer is given.
 */
import type Database from 'better-sqlite3';
import path from 'node:path';
import { GroupCommit, LAZY_DELAY_MS } from './commit.js';
import { BodyFiles, GoneFiles, type BodyFile } from './files.js';
import { openDatabase, openSchema, sizeCaps } from './schema.js';
import { prepareStatements } from './statements.js';
import * as primary from './primary.js';
import * as shadows from './shadows.js';
import * as outbox from './outbox.js';
import * as operator from './operator.js';
import * as inspect from './inspect.js';
import * as transfer from './transfer.js';
import * as browse from './browse.js';
import type { BrowsePage, BrowseQuery, ErrorGroup, QueueCounts } from './browse.js';
import type {
  AttemptResult,
  DiscardResult,
  InDoubtOutcome,
  MessageDetail,
  MessageSummary,
  MessageWithBody,
  NewMessage,
  PromotedMessage,
  QueueStat,
  RecipientDiscard,
  RecipientOutcome,
  ShadowCopy,
  ShadowRef,
  SpoolContext,
  SpoolOptions,
  TransferredMessage,
} from './types.js';

export type {
  Role,
  MessageState,
  RecipientState,
  NewMessage,
  ShadowCopy,
  RecipientRow,
  MessageSummary,
  MessageWithBody,
  MessageDetail,
  QueueStat,
  RecipientOutcome,
  AttemptResult,
  DiscardResult,
  PromotedMessage,
  ShadowRef,
  RecipientDiscard,
  SpoolOptions,
  WritableSpoolOptions,
  TransferredMessage,
  InDoubtOutcome,
} from './types.js';
export { MIGRATIONS } from './schema.js';
export { BROWSE_STATES, type BrowseState, type BrowseQuery, type BrowsePage, type QueueCounts, type ErrorGroup } from './browse.js';

export class Spool {
  readonly incarnation: string;
  readonly file: string;
  private readonly c: SpoolContext;
  private readonly commits: GroupCommit;
  private readonly gone: GoneFiles;

  protected constructor(db: Database.Database, file: string, opts: SpoolOptions) {
    this.file = file;
    this.incarnation = openSchema(db, file, !!opts.readonly);
    const st = prepareStatements(db);
    const files = new BodyFiles(path.dirname(file), !opts.readonly);
    this.c = { db, st, file, node: opts.node, incarnation: this.incarnation, ...sizeCaps(db, opts), files };
    if (!opts.readonly) {
      // the only writer, before its first write: files without a row go, the rest are counted
      files.sweep(new Map((st.bodyFileNames.all() as BodyFile[]).map((f) => [f.name, f.size])));
      st.goneFilesClear.run();
    }
    this.gone = new GoneFiles(st, files, (fn, lazy) => this.commits.write(fn, lazy));
    this.commits = new GroupCommit(db, LAZY_DELAY_MS, {
      beforeCommit: () => files.beforeCommit(),
      committed: (synced) => {
        files.committed();
        this.gone.committed(synced);
      },
      rolledBack: () => files.rolledBack(),
      mark: () => files.mark(),
      rollBackTo: (mark) => files.rollBackTo(mark),
    });
  }

  /** Opens (creating if needed) `<dataDir>/spool.db`. */
  static open(dataDir: string, opts: SpoolOptions): Spool {
    const { db, file } = openDatabase(dataDir, opts);
    return new Spool(db, file, opts);
  }

  /**
   * Runs `fn` in the next group commit; resolves once it is durable. Protected: ThreadedSpool
   * refuses it on its read-only connection (its writes run in the writer thread).
   */
  protected write<T>(fn: () => T, lazy = false): Promise<T> {
    return this.commits.write(fn, lazy);
  }

  /** Bookkeeping: nobody waits on it for a reply, so it joins the next transaction (commit.ts). */
  protected later<T>(fn: () => T): Promise<T> {
    return this.write(fn, true);
  }

  // ---- primary side (primary.ts) -------------------------------------------------

  /** End of DATA: the message is on this node's disk, not yet acknowledged to the client. */
  spoolPrimary(m: NewMessage): Promise<void> {
    return this.write(() => primary.spoolPrimary(this.c, m));
  }

  /**
   * The shadow copy is confirmed (or degraded policy): the message is ours to deliver.
   * `bounceFor`: this message is the bounce for these failed recipients of another message;
   * they are marked reported in the same transaction (no lost and no double bounce).
   * With a shadow peer and no bounceFor, the mark is bookkeeping (batched, off the reply
   * path): a restart settles a copy left without it by asking the peer (settleInDoubt).
   * Degraded accepts and bounces have nobody to ask or settle more than the message: their
   * mark is durable before the 250.
   */
  markAccepted(id: string, shadowPeer: string | null, bounceFor?: RecipientDiscard): Promise<void> {
    return this.write(() => primary.markAccepted(this.c, id, shadowPeer, bounceFor), shadowPeer !== null && !bounceFor);
  }

  /** Failed recipients that need no bounce (null sender): mark them reported. */
  settleFailures(id: string, idxs: number[]): Promise<{ purged: boolean }> {
    return this.later(() => primary.settleFailures(this.c, id, idxs));
  }

  /**
   * The shadow copy failed: forget the local copy (the client gets 4xx and retries).
   * A peer may still hold a late copy, so a discard is owed to each peer named.
   */
  dropUnacked(id: string, owedDiscardTo: string[]): Promise<void> {
    return this.write(() => primary.dropUnacked(this.c, id, owedDiscardTo));
  }

  /**
   * Records per-recipient outcomes of one delivery attempt. Purges when every recipient is
   * final and every failure reported; otherwise schedules the next attempt (pending
   * recipients, or a bounce still to be accepted) and owes the peer recipient discards.
   */
  recordAttempt(id: string, outcomes: RecipientOutcome[], nextAttemptAt: number, error: string | null): Promise<AttemptResult> {
    // a crash before this commits re-sends the message after restart (a counted duplicate window)
    return this.later(() => primary.recordAttempt(this.c, id, outcomes, nextAttemptAt, error));
  }

  /** Moves the next attempt of a message (e.g. a bounce that could not be accepted yet). */
  deferUntil(id: string, at: number): Promise<void> {
    return this.later(() => primary.deferUntil(this.c, id, at));
  }

  /**
   * Ids of accepted primaries due for an attempt, oldest first. `heldPeers`: skip messages
   * shadowed on these peers (this node must reconcile with them first).
   */
  due(now: number, limit: number, heldPeers: string[] = []): string[] {
    return primary.due(this.c, now, limit, heldPeers);
  }

  /** Earliest next attempt of any queued primary (outside `heldPeers`), or null. */
  nextDueAt(heldPeers: string[] = []): number | null {
    return primary.nextDueAt(this.c, heldPeers);
  }

  /**
   * Reconcile (primary side): `peer` promoted these ids while it could not reach us. Drops
   * our own still-queued copies (the peer delivers them), owing no discard.
   */
  dropPromotedByPeer(peer: string, ids: string[]): Promise<string[]> {
    return this.write(() => primary.dropPromotedByPeer(this.c, peer, ids));
  }

  /**
   * Which of these ids this node holds as its own primary (orphan check). With `asker`: only
   * those whose shadow is on `asker` (or not yet confirmed anywhere) — a copy left on a peer
   * that lost the race to another is an orphan too.
   */
  knownPrimaries(ids: string[], asker?: string): string[] {
    return primary.knownPrimaries(this.c, ids, asker);
  }

  /** A copy of these ids may have been left on `peer` (a put that lost the race): owe it discards. */
  oweDiscards(peer: string, ids: string[]): Promise<void> {
    return this.write(() => primary.oweDiscards(this.c, peer, ids));
  }

  // ---- drain (transfer.ts) -------------------------------------------------------

  /**
   * Takes over a draining peer's message as this node's queued primary (remaining recipients
   * only) with its shadow on `shadowPeer` (already confirmed); replaces a shadow copy of it
   * held here, in the same transaction. 'exists': taken over before; 'conflict': this id is
   * another primary here.
   */
  takeTransfer(m: TransferredMessage, shadowPeer: string): Promise<'accepted' | 'exists' | 'conflict'> {
    return this.write(() => transfer.takeTransfer(this.c, m, shadowPeer));
  }

  /** A peer took this primary over: drop it here, owing its shadow holder a discard. */
  handedOver(id: string): Promise<boolean> {
    return this.write(() => transfer.handedOver(this.c, id));
  }

  /** The shadow of `id` moved from the draining `from` to `to` (confirmed there). */
  reshadowed(id: string, from: string, to: string): Promise<'moved' | 'gone'> {
    return this.write(() => transfer.reshadowed(this.c, id, from, to));
  }

  /** Primaries to hand over (queued and held), oldest first. */
  drainPrimaries(limit: number): string[] {
    return transfer.drainPrimaries(this.c, limit);
  }

  /** Shadow copies of `origin`, oldest first (to be re-homed before this node leaves). */
  drainShadows(origin: string, limit: number): string[] {
    return transfer.drainShadows(this.c, origin, limit);
  }

  // ---- shadow (peer) side and promotion (shadows.ts) -----------------------------

  /** Stores a copy for `origin`; idempotent by id. Resolves once durable. */
  storeShadow(m: ShadowCopy): Promise<'stored' | 'exists'> {
    return this.write(() => shadows.storeShadow(this.c, m));
  }

  /**
   * The primary `origin` is done with these ids: drop our shadow copies. For a copy this
   * node promoted meanwhile, the origin delivered it too: cancel ours if still queued, and
   * report a duplicate when this node had already delivered (some of) it.
   */
  purgeShadows(origin: string, ids: string[]): Promise<DiscardResult> {
    return this.later(() => shadows.purgeShadows(this.c, origin, ids));
  }

  /**
   * The primary `origin` finished these recipients (partial delivery): a promotion must not
   * deliver them again. Applies to shadow copies and to copies this node promoted.
   */
  shadowRecipientsDone(origin: string, items: RecipientDiscard[]): Promise<{ applied: number; duplicates: string[] }> {
    return this.later(() => shadows.shadowRecipientsDone(this.c, origin, items));
  }

  /**
   * Promotion: the shadow copies of `origin` (only those from incarnations other than
   * `exceptIncarnation`, when given) become this node's queued primaries with their still
   * pending recipients, recorded in `promoted` for the origin's reconcile. A copy with no
   * pending recipient left is simply dropped.
   */
  promoteShadows(origin: string, now: number, exceptIncarnation?: string): Promise<{ promoted: PromotedMessage[]; emptied: string[] }> {
    return this.write(() => shadows.promoteShadows(this.c, origin, now, exceptIncarnation));
  }

  /** This node promoted `origin`'s copy `id` and its origin has not reconciled it yet. */
  isPromoted(origin: string, id: string): boolean {
    return shadows.isPromoted(this.c, origin, id);
  }

  hasShadowsFrom(origin: string): boolean {
    return shadows.hasShadowsFrom(this.c, origin);
  }

  /** Every origin this node holds shadow copies of. */
  shadowOrigins(): string[] {
    return shadows.shadowOrigins(this.c);
  }

  /** Incarnations of `origin` this node holds shadow copies from. */
  shadowIncarnations(origin: string): string[] {
    return shadows.shadowIncarnations(this.c, origin);
  }

  /**
   * Reconcile (shadow side): what this node promoted from `origin`'s current incarnation.
   * Runs in the write queue, so a promotion queued before the question is in the answer.
   * Records about earlier incarnations are useless to the origin and are dropped.
   */
  promotedFor(origin: string, incarnation: string): Promise<string[]> {
    return this.write(() => shadows.promotedFor(this.c, origin, incarnation));
  }

  /** The origin has dropped its copies of these promoted ids: forget the records. */
  forgetPromoted(origin: string, ids: string[]): Promise<number> {
    return this.later(() => shadows.forgetPromoted(this.c, origin, ids));
  }

  /** Drops promotion records older than `before` (the origin never came back). */
  prunePromoted(before: number): Promise<number> {
    return this.later(() => shadows.prunePromoted(this.c, before));
  }

  /**
   * Shadow copies of `origin` (incarnation `incarnation`) received before `before`, after
   * the cursor (received_at, id), oldest first — candidates for the orphan check.
   */
  shadowsToVerify(origin: string, incarnation: string, before: number, after: { receivedAt: number; id: string }, limit: number): ShadowRef[] {
    return shadows.shadowsToVerify(this.c, origin, incarnation, before, after, limit);
  }

  /** Drops shadow copies only (orphans, expired copies); returns the ids dropped. */
  dropShadows(origin: string, ids: string[]): Promise<string[]> {
    return this.later(() => shadows.dropShadows(this.c, origin, ids));
  }

  /** Shadow copies of `origin` received before `before` (maximum shadow age), oldest first. */
  oldShadows(origin: string, before: number, limit: number): ShadowRef[] {
    return shadows.oldShadows(this.c, origin, before, limit);
  }

  // ---- discards owed to peers (outbox.ts) ----------------------------------------

  owedDiscards(peer: string, limit: number): string[] {
    return outbox.owedDiscards(this.c, peer, limit);
  }

  discardsConfirmed(peer: string, ids: string[]): Promise<void> {
    return this.later(() => outbox.discardsConfirmed(this.c, peer, ids));
  }

  /** Recipient-level discards owed to `peer`, grouped by message. */
  owedRecipientDiscards(peer: string, limit: number): RecipientDiscard[] {
    return outbox.owedRecipientDiscards(this.c, peer, limit);
  }

  recipientDiscardsConfirmed(peer: string, items: RecipientDiscard[]): Promise<void> {
    return this.later(() => outbox.recipientDiscardsConfirmed(this.c, peer, items));
  }

  /** Discards (whole-message and recipient-level) not yet confirmed by peers. */
  discardsPending(): number {
    return outbox.discardsPending(this.c);
  }

  // ---- operator actions: the queue tools (operator.ts) ---------------------------

  /** Puts a queued primary on hold: delivery skips it until released. True if it was queued. */
  hold(id: string): Promise<boolean> {
    return this.write(() => operator.hold(this.c, id));
  }

  /** Releases a held primary; it is due at once. True if it was held. */
  release(id: string, now = Date.now()): Promise<boolean> {
    return this.write(() => operator.release(this.c, id, now));
  }

  /** Makes a queued primary due at once (`queue retry`). True if it was queued. */
  retryNow(id: string, now = Date.now()): Promise<boolean> {
    return this.write(() => operator.retryNow(this.c, id, now));
  }

  /** Makes every queued primary due at once (`queue flush`). Resolves with how many moved. */
  retryAllNow(now = Date.now()): Promise<number> {
    return this.write(() => operator.retryAllNow(this.c, now));
  }

  /**
   * The operator deletes a primary (queued or held): it is purged without delivery and, in the
   * same transaction, a discard is owed to the peer holding its shadow copy. Resolves with that
   * peer's name (null when there was no shadow), or undefined when no such primary exists.
   */
  deletePrimary(id: string): Promise<string | null | undefined> {
    return this.write(() => operator.deletePrimary(this.c, id));
  }

  /**
   * Deletes a primary with a bounce to its sender: its pending recipients fail with `reason`
   * and it is due now; the delivery worker bounces them and then purges it. Resolves with the
   * number of recipients failed, or undefined when no such primary exists.
   */
  failForBounce(id: string, reason: string, now = Date.now()): Promise<number | undefined> {
    return this.write(() => operator.failForBounce(this.c, id, reason, now));
  }

  /** Primaries whose last delivery attempt failed (Postfix's "deferred" queue), oldest first. */
  deferredIds(): string[] {
    return operator.deferredIds(this.c);
  }

  /** Online backup to `dest` (SQLite backup API): consistent even while the daemon writes. */
  backup(dest: string): Promise<{ totalPages: number }> {
    return operator.backup(this.c, dest);
  }

  // ---- recovery and inspection (inspect.ts) --------------------------------------

  /**
   * Start-up recovery: counts the primaries left `spooled` — in doubt: their client got a
   * 250 whose mark had not committed yet, or no reply at all (a 4xx is sent only after the
   * copy is dropped). They stay until settleInDoubt, after the peers were asked.
   */
  recover(): { inDoubt: number } {
    return inspect.recover(this.c);
  }

  /** Primaries left `spooled` by an earlier run (read at start, before SMTP listens). */
  inDoubt(): string[] {
    return primary.inDoubt(this.c);
  }

  /**
   * Settles primaries in doubt: `held` by a peer → queued, shadowed there (its 250 may have
   * been sent); `absent` from every peer → dropped (no 250 was sent: the client retries);
   * `unanswered` (no peer could be asked in time) → queued without a shadow peer, a discard
   * owed to each of `peers` in case one holds it. Rows no longer spooled are left alone.
   */
  settleInDoubt(items: InDoubtOutcome[], peers: string[]): Promise<{ queued: string[]; dropped: string[] }> {
    return this.write(() => primary.settleInDoubt(this.c, items, peers));
  }

  get(id: string): MessageSummary | undefined {
    return inspect.get(this.c, id);
  }

  getWithBody(id: string): MessageWithBody | undefined {
    return inspect.getWithBody(this.c, id);
  }

  detail(id: string): MessageDetail | undefined {
    return inspect.detail(this.c, id);
  }

  /** Counts and oldest arrival per role and state (for the queue gauges). */
  queueStats(): QueueStat[] {
    return inspect.queueStats(this.c);
  }

  /** Bytes on disk: the database file and its write-ahead log. */
  diskBytes(): number {
    return inspect.diskBytes(this.c);
  }

  list(): MessageSummary[] {
    return inspect.list(this.c);
  }

  /** One page of the queue, filtered and searched (the dashboard's queue browser). */
  browse(q: BrowseQuery): BrowsePage {
    return browse.browse(this.c, q);
  }

  /** Messages by queued / deferred / held / spooled / shadow, and the oldest arrivals. */
  queueCounts(): QueueCounts {
    return browse.queueCounts(this.c);
  }

  /** The replies pending recipients wait on, most frequent first. */
  topErrors(limit: number): ErrorGroup[] {
    return browse.topErrors(this.c, limit);
  }

  counts(): { primary: number; shadow: number; outbox: number } {
    return inspect.counts(this.c);
  }

  get isClosed(): boolean {
    return this.commits.isClosed;
  }

  /** Waits for queued writes, then closes the database (files left to unlink: the next start's sweep). */
  close(): Promise<void> {
    this.gone.close();
    return this.commits.close();
  }
}

// ---- what each consumer may use: one slice each ----------------------------------------
// A part is handed only its slice, so what it can do to the spool is visible in its options.

/** The accept path (core/accept.ts): spool a new message, then accept or drop it. */
export interface AcceptSpool extends Pick<Spool, 'spoolPrimary' | 'markAccepted' | 'dropUnacked' | 'inDoubt' | 'settleInDoubt' | 'isClosed'> {}

/** The delivery worker (delivery/): due messages, attempt outcomes, bounces settled. */
export interface DeliverySpool
  extends Pick<Spool, 'due' | 'nextDueAt' | 'get' | 'getWithBody' | 'recordAttempt' | 'settleFailures' | 'deferUntil' | 'isClosed'> {}

/** The replication server (shadow/server.ts): stores the peers' copies. */
// get: a resolve after a put that got no answer looks up whether the copy is here
// isPromoted: a copy this node promoted (and maybe delivered) is still its responsibility
export interface ServerSpool extends Pick<Spool, 'storeShadow' | 'incarnation' | 'get' | 'isPromoted'> {}

/** Failover (shadow/failover.ts): discards applied, promotion, reconcile, orphan and age checks. */
export interface FailoverSpool
  extends Pick<
    Spool,
    | 'incarnation'
    | 'purgeShadows'
    | 'shadowRecipientsDone'
    | 'promoteShadows'
    | 'hasShadowsFrom'
    | 'shadowOrigins'
    | 'shadowIncarnations'
    | 'promotedFor'
    | 'forgetPromoted'
    | 'prunePromoted'
    | 'shadowsToVerify'
    | 'dropShadows'
    | 'oldShadows'
    | 'dropPromotedByPeer'
    | 'knownPrimaries'
  > {}

/** The replication link (shadow/index.ts): its server and failover, and the discards it pumps. */
export interface LinkSpool
  extends ServerSpool,
    FailoverSpool,
    Pick<Spool, 'owedDiscards' | 'owedRecipientDiscards' | 'discardsConfirmed' | 'recipientDiscardsConfirmed' | 'oweDiscards'> {}

/** Drain (shadow/drain.ts) and taking over a draining peer's queue. */
export interface DrainSpool
  extends LinkSpool,
    Pick<Spool, 'takeTransfer' | 'handedOver' | 'reshadowed' | 'drainPrimaries' | 'drainShadows' | 'getWithBody' | 'counts' | 'dropShadows'> {}

/** The queue tools (ops/queue.ts): inspection and operator actions. */
export interface QueueSpool
  extends Pick<
    Spool,
    | 'list'
    | 'get'
    | 'detail'
    | 'getWithBody'
    | 'deferredIds'
    | 'hold'
    | 'release'
    | 'retryNow'
    | 'retryAllNow'
    | 'deletePrimary'
    | 'failForBounce'
    | 'browse'
    | 'queueCounts'
    | 'topErrors'
  > {}
