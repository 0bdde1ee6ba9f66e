/**
 * Queue control for operators — what `postqueue`, `postsuper` and `postcat` do for Postfix.
 *
 * Implementation summary:
 * - Reads (`list`, `show`) work on any Spool, including a read-only one opened by the CLI
 *   while the daemon is down.
 * - Actions (`flush`, `retry`, `hold`, `release`, `delete`) run inside the daemon (through the
 *   admin endpoint) so the delivery worker and the discard pump learn at once; each is one
 *   named spool transition and one log line with the queue id.
 * - Only primaries can be acted on: a shadow copy belongs to its primary (act there).
 * - `delete` purges the message and, in the same transaction, owes the peer a discard of its
 *   shadow copy, so the peer never promotes and delivers what the operator deleted.
 * - `delete` with a bounce fails the pending recipients (reason `OPERATOR_DELETED`) and makes
 *   the message due: the delivery worker bounces them to the sender like any failure (the
 *   bounce shadowed like any message), then purges it and owes the discard.
 */
import type { Logger } from 'pino';
import type { QueueSpool, MessageSummary, MessageDetail, BrowseQuery, BrowsePage } from '../spool/index.js';
import { headerSection } from '../base/message.js';
import { OPERATOR_DELETED } from '../delivery/dsn.js';

export interface HistoryEntry {
  at: number | null;
  event: string;
}

export interface MessageView extends MessageDetail {
  /** the header section as received (our Received: line first) */
  headers: string;
  /** what happened so far, reconstructed from the spool (the logs have every step) */
  history: HistoryEntry[];
  /** the whole message, only when asked for */
  body?: string;
}

/** The error a recipient deleted with a bounce carries (the bounce's DSN knows it). */
export { OPERATOR_DELETED };

export type ActionResult =
  | { ok: true; id: string; result: string }
  | { ok: false; status: 404 | 409; error: string };

function history(m: MessageDetail): HistoryEntry[] {
  const h: HistoryEntry[] = [];
  h.push({
    at: m.receivedAt,
    event: `received from ${m.client ?? 'unknown'}: ${m.size} bytes, ${m.recipients.length} recipient(s)`,
  });
  if (m.role === 'shadow') {
    h.push({ at: m.receivedAt, event: `shadow copy held for ${m.origin} (it delivers; this node promotes it only if ${m.origin} stays unreachable)` });
    return h;
  }
  if (m.state === 'spooled') {
    h.push({ at: null, event: 'waiting for the peer to confirm the shadow copy (no 250 given yet)' });
    return h;
  }
  h.push({ at: null, event: m.shadowPeer ? `accepted: shadow copy on ${m.shadowPeer}` : 'accepted WITHOUT a shadow copy (degraded policy)' });
  const done = m.recipients.filter((r) => r.state !== 'pending');
  for (const r of done) h.push({ at: null, event: `${r.address}: ${r.state}${r.lastError ? ` (${r.lastError})` : ''}` });
  if (m.attempts > 0) h.push({ at: null, event: `${m.attempts} delivery attempt(s)${m.lastError ? `, last: ${m.lastError}` : ''}` });
  if (m.state === 'held') h.push({ at: null, event: 'on hold: not delivered until released' });
  else h.push({ at: m.nextAttemptAt, event: m.attempts > 0 ? 'next attempt' : 'first attempt' });
  return h;
}

/** `queue show`: envelope, per-recipient state, history, headers (and the body when asked). */
export function viewMessage(spool: QueueSpool, id: string, withBody: boolean): MessageView | undefined {
  const d = spool.detail(id);
  if (!d) return undefined;
  const raw = spool.getWithBody(id)?.body ?? Buffer.alloc(0);
  const v: MessageView = { ...d, headers: headerSection(raw).text, history: history(d) };
  if (withBody) v.body = raw.toString('utf8');
  return v;
}

export interface QueueServiceOptions {
  spool: QueueSpool;
  log: Logger;
  /** the delivery worker should look for due work now */
  wake: () => void;
  /** the discard pump should send what is owed now */
  pumpDiscards: () => void;
  /** an action changed the queue (live views re-read it) */
  onChange?: () => void;
}

export class QueueService {
  constructor(private readonly o: QueueServiceOptions) {}

  list(): MessageSummary[] {
    return this.o.spool.list();
  }

  /** One page of the queue (the dashboard's queue browser). */
  browse(q: BrowseQuery): BrowsePage {
    return this.o.spool.browse(q);
  }

  show(id: string, withBody: boolean): MessageView | undefined {
    return viewMessage(this.o.spool, id, withBody);
  }

  /** Why an action cannot apply to `id`, or null when the message is a primary we may act on. */
  private refusal(id: string): ActionResult | null {
    const m = this.o.spool.get(id);
    if (!m) return { ok: false, status: 404, error: `${id}: no such message in the queue` };
    if (m.role === 'shadow') {
      return { ok: false, status: 409, error: `${id}: is a shadow copy held for ${m.origin}; act on it there` };
    }
    if (m.state === 'spooled') return { ok: false, status: 409, error: `${id}: is still being accepted` };
    return null;
  }

  async flush(): Promise<{ count: number }> {
    const count = await this.o.spool.retryAllNow();
    this.o.log.info({ count }, 'queue flush requested');
    this.o.wake();
    this.o.onChange?.();
    return { count };
  }

  async retry(id: string): Promise<ActionResult> {
    const no = this.refusal(id);
    if (no) return no;
    if (!(await this.o.spool.retryNow(id))) return { ok: false, status: 409, error: `${id}: is on hold; release it instead` };
    this.o.log.info({ id }, 'retry requested');
    this.o.wake();
    this.o.onChange?.();
    return { ok: true, id, result: 'due now' };
  }

  async hold(id: string): Promise<ActionResult> {
    const no = this.refusal(id);
    if (no) return no;
    if (!(await this.o.spool.hold(id))) return { ok: false, status: 409, error: `${id}: is already on hold` };
    this.o.log.info({ id }, 'held');
    this.o.onChange?.();
    return { ok: true, id, result: 'held' };
  }

  async release(id: string): Promise<ActionResult> {
    const no = this.refusal(id);
    if (no) return no;
    if (!(await this.o.spool.release(id))) return { ok: false, status: 409, error: `${id}: is not on hold` };
    this.o.log.info({ id }, 'released');
    this.o.wake();
    this.o.onChange?.();
    return { ok: true, id, result: 'released' };
  }

  async delete(id: string): Promise<ActionResult> {
    const no = this.refusal(id);
    if (no) return no;
    const peer = await this.o.spool.deletePrimary(id);
    if (peer === undefined) return { ok: false, status: 404, error: `${id}: no such message in the queue` };
    this.o.log.warn({ id, discardTo: peer }, 'deleted by the operator');
    this.o.pumpDiscards();
    this.o.onChange?.();
    return { ok: true, id, result: peer ? `deleted; discard of the shadow copy owed to ${peer}` : 'deleted' };
  }

  /**
   * Deletes with a bounce to the sender: the pending recipients fail and are bounced by the
   * delivery worker (a null sender gets none, as for any failure); the message then leaves.
   */
  async deleteWithBounce(id: string): Promise<ActionResult> {
    const no = this.refusal(id);
    if (no) return no;
    const failed = await this.o.spool.failForBounce(id, OPERATOR_DELETED);
    if (failed === undefined) return { ok: false, status: 404, error: `${id}: no such message in the queue` };
    this.o.log.warn({ id, failed }, 'deleted by the operator with a bounce to the sender');
    this.o.wake();
    this.o.onChange?.();
    return { ok: true, id, result: `${failed} recipient(s) failed; bounce to the sender queued, then deleted` };
  }

  /** Deletes every primary whose last attempt failed (`postsuper -d ALL deferred`). */
  async deleteAllFailed(): Promise<{ deleted: string[] }> {
    const deleted: string[] = [];
    for (const id of this.o.spool.deferredIds()) {
      const r = await this.delete(id);
      if (r.ok) deleted.push(id);
    }
    return { deleted };
  }
}
