/**
 * accept — the acceptance step, the heart of the guarantee:
 *   [spool locally (fsync) ‖ shadow copy confirmed on a peer's disk] → 250; then, off the
 *   reply path, the "accepted" mark (batched with the next spool transaction).
 * The 250 waits for exactly one fsync on each node: the local write and the peer's, in
 * parallel. A copy left `spooled` (its mark not yet durable) by a crash is settled at the
 * next start by asking the peers (`settleInDoubt`): a peer holds it → the 250 was (or may
 * have been) sent → deliver; no peer holds it → no 250 was sent → drop (the client retries);
 * no peer can be asked within promoteAfterMs → deliver (a counted duplicate risk: a 4xx is
 * only ever sent after the local copy was dropped, so a row still spooled was answered 250
 * or not at all). Degraded accepts (no shadow) and bounces keep their mark on the reply path.
 * If the shadow copy fails, the local copy is dropped and the client gets 451 (it retries);
 * a discard is owed to the peers in case one stored a late copy. With the operator's
 * explicit `onFailure: accept`, the message is accepted without a shadow, logged and counted.
 * A put that got no answer may still have left a copy on the peer: before answering 451
 * the acceptor asks the peer (`resolve`), so a 451 is only ever sent when no copy exists or
 * can appear; a copy that turns out to be there gets its 250; with no answer in time the
 * connection is closed without a reply (the client retries, as after any lost reply).
 * Bounces take the same path (`acceptBounce`: the failed recipients they report are settled
 * in the same transaction). If dropping an unacknowledged copy fails (storage error), the
 * drop is retried in the background: a 'spooled' row left behind would make the peer's late
 * copy look known.
 */
import type { Logger } from 'pino';
import type { AcceptSpool, InDoubtOutcome, RecipientDiscard } from '../spool/index.js';
import type { Bounce } from '../delivery/index.js';
import { reply, HangUp } from '../base/replies.js';
import type { Resolution } from '../shadow/index.js';
import type { Envelope, InboundMessage } from '../base/message.js';
import { noMetrics, type RelayMetrics } from '../base/metrics.js';
import { monotonicMs } from '../base/clock.js';
import type { Body } from '../base/buffers.js';
import type { Marking } from '../base/signal.js';

/** Puts the shadow copy on a peer's disk; resolves with the peer's name (the shadow link). */
export interface Replicator {
  replicate(m: Envelope): Promise<string>;
  /** settles a copy whose put got no answer (the error's `maybeStoredOn`) */
  resolve?(id: string, peers: string[]): Promise<Resolution>;
  /** after a restart: which peers hold which of these copies (one round; `answered`: the peers that answered) */
  whoHolds?(ids: string[]): Promise<{ held: Map<string, string>; answered: string[] }>;
}

export type OnFailure = 'reject' | 'accept';

/** The peers a failed replication sent the copy to (the link names them), if it says. */
function triedOn(err: Error): string[] | undefined {
  const t = (err as { triedOn?: unknown }).triedOn;
  return Array.isArray(t) ? (t as string[]) : undefined;
}

/** What a config reload may change. */
export interface AcceptSettings {
  onFailure: OnFailure;
  /** the name this node gives itself as the client of its own bounces (smtp.hostname) */
  hostname: string;
}

export interface ShadowedAcceptorOptions extends AcceptSettings {
  spool: AcceptSpool;
  replicator: Replicator;
  /** the peers now (the list changes on reload): owed a discard when it is not known which got a copy */
  peerNames: () => string[];
  log: Logger;
  /**
   * called once the message may be delivered, with its bytes when at hand: after its accepted
   * mark is written, or at once with `marking` when the mark rides a later transaction
   */
  onAccepted: (id: string, body?: Body, marking?: Marking) => void;
  /** after a restart, how long copies in doubt wait for a peer's answer before they are delivered anyway */
  promoteAfterMs?: number;
  metrics?: Pick<RelayMetrics, 'accepted' | 'refused' | 'duplicateRisk'>;
}

export class ShadowedAcceptor {
  private readonly metrics: Pick<RelayMetrics, 'accepted' | 'refused' | 'duplicateRisk'>;

  constructor(private readonly o: ShadowedAcceptorOptions) {
    this.metrics = o.metrics ?? noMetrics;
  }

  /** The policy when no peer confirms (readiness depends on it). */
  get onFailure(): OnFailure {
    return this.o.onFailure;
  }

  /** Live change (config reload). */
  reload(s: AcceptSettings): void {
    this.o.onFailure = s.onFailure;
    this.o.hostname = s.hostname;
  }

  /** A bounce is accepted like inbound mail (spooled, shadowed, then queued), as from this node itself. */
  async acceptBounce(b: Bounce): Promise<void> {
    const { bounceFor, ...envelope } = b;
    await this.accept({ ...envelope, client: { address: 'local', helo: this.o.hostname } }, { bounceFor });
  }

  async accept(m: InboundMessage, opts: { bounceFor?: RecipientDiscard } = {}): Promise<string> {
    const { spool, log } = this.o;
    const t0 = process.hrtime.bigint();
    const client = m.client.address;
    // The local write and the shadow copy run at the same time: the 250 waits for both, so
    // the guarantee is the same, and the client waits for one fsync less. A copy the peer
    // stores while the local write fails (452) or the node dies is an orphan, as with a 451:
    // a discard is owed, and the peer's orphan check drops what this node does not know.
    const { client: _from, ...envelope } = m; // the spool keeps the client address only
    const local = spool
      .spoolPrimary({ ...envelope, client })
      .then(
        () => null,
        (err: unknown) => err as Error,
      );
    const shadow = this.o.replicator.replicate(m).then(
      (peer) => ({ peer, err: null }),
      (err: unknown) => ({ peer: null, err: err as Error }),
    );
    const localErr = await local;
    if (localErr) {
      this.metrics.refused('storage');
      log.error({ id: m.id, err: localErr.message }, 'spool write failed');
      // the peer may have stored its copy meanwhile: owe it a discard (retried while the spool fails)
      void shadow.then((r) => (r.err ? undefined : this.drop(m.id, [r.peer!])));
      throw reply(452, '4.3.1', 'Insufficient system storage');
    }
    // spoolMs: the local write alone (the 250 waits for it and the peer's copy, in parallel)
    log.info({ id: m.id, client, from: m.sender, size: m.body.length, nrcpt: m.recipients.length, spoolMs: Number(process.hrtime.bigint() - t0) / 1e6 }, 'spooled');

    let peer: string | null = null;
    const replicated = await shadow;
    const doubt = (replicated.err as { maybeStoredOn?: string[] } | null)?.maybeStoredOn;
    let resolution: Resolution = 'absent';
    if (replicated.err && doubt?.length && this.o.onFailure === 'reject' && this.o.replicator.resolve) {
      resolution = await this.o.replicator.resolve(m.id, doubt);
    }
    if (!replicated.err) {
      peer = replicated.peer;
    } else if (typeof resolution === 'object') {
      peer = resolution.held;
      log.info({ id: m.id, peer }, 'shadow copy confirmed after a doubt: the peer holds it');
    } else if (resolution === 'unknown') {
      this.metrics.refused('shadow_unknown');
      await this.drop(m.id, triedOn(replicated.err));
      log.warn({ id: m.id, reason: replicated.err.message, peers: doubt }, 'closed without a reply: the peer may hold the shadow copy and could not be asked (neither 250 nor 451 would be true)');
      throw new HangUp();
    } else {
      const reason = replicated.err.message;
      if (this.o.onFailure === 'accept') {
        peer = null;
        log.warn({ id: m.id, reason }, 'DEGRADED: accepted without a shadow copy (shadow.onFailure=accept)');
      } else {
        this.metrics.refused('shadow_unconfirmed');
        await this.drop(m.id, triedOn(replicated.err));
        log.warn({ id: m.id, reason }, 'refused: shadow copy not confirmed');
        throw reply(451, '4.4.1', 'Error: shadow copy not confirmed by a peer relay, try again later');
      }
    }
    if (peer === null || opts.bounceFor) {
      // no peer to ask after a crash (degraded), or a bounce settling other rows: durable first
      try {
        await spool.markAccepted(m.id, peer, opts.bounceFor);
      } catch (err) {
        this.metrics.refused('storage');
        await this.drop(m.id, peer ? [peer] : undefined);
        log.error({ id: m.id, err: (err as Error).message }, 'spool write failed');
        throw reply(452, '4.3.1', 'Insufficient system storage');
      }
      this.o.onAccepted(m.id, m.body);
    } else {
      // two durable copies exist: the 250 is true now; the mark rides in a later transaction
      this.markLater(m.id, peer, m.body);
    }
    const shadowMs = Number(process.hrtime.bigint() - t0) / 1e6;
    this.metrics.accepted(peer === null ? null : shadowMs / 1000);
    log.info({ id: m.id, client, from: m.sender, size: m.body.length, nrcpt: m.recipients.length, shadowPeer: peer, shadowMs }, 'accepted');
    return `2.0.0 Ok: queued as ${m.id}`;
  }

  /**
   * The accepted mark off the reply path; on a storage error retried (a restart would settle
   * it with the peer). Delivery starts now, not once the mark is written: serially the mark
   * rides the next message's transaction, and a delivery that waited for it ran inside the
   * next message's accept (on this loop, before its 250). The delivery writes its outcome after
   * the mark (Marking).
   */
  private markLater(id: string, peer: string, body: Body): void {
    const { spool, log } = this.o;
    const written = (async () => {
      for (let wait = 200; ; wait = Math.min(wait * 2, 10000)) {
        try {
          await spool.markAccepted(id, peer);
          return;
        } catch (e) {
          if (spool.isClosed) return;
          log.error({ id, err: (e as Error).message }, 'could not mark the message accepted; retrying');
        }
        await new Promise((r) => setTimeout(r, wait).unref());
      }
    })();
    // after this task: the 250 goes out first (the delivery's first steps are synchronous)
    setImmediate(() => this.o.onAccepted(id, body, { peer, written }));
  }

  /**
   * After a restart, before SMTP listens: settles the primaries an earlier run left
   * `spooled` (see the summary above). Asks the peers until each copy is settled; runs in
   * the background. Resolves when all are settled (tests), or the spool closed.
   */
  async settleInDoubt(): Promise<void> {
    const { spool, log, replicator } = this.o;
    let open = spool.inDoubt();
    if (open.length === 0) return;
    const peers = this.o.peerNames();
    const started = monotonicMs();
    const patience = this.o.promoteAfterMs ?? 60000;
    log.warn({ count: open.length, peers }, 'copies in doubt after a restart (accepted mark not durable): asking the peers whether they hold them');
    for (let wait = 100; open.length > 0; wait = Math.min(wait * 2, 2000)) {
      const answer = replicator.whoHolds ? await replicator.whoHolds(open) : { held: new Map<string, string>(), answered: [] };
      const allAnswered = peers.every((p) => answer.answered.includes(p));
      const giveUp = monotonicMs() - started >= patience;
      const items: InDoubtOutcome[] = [];
      for (const id of open) {
        const holder = answer.held.get(id);
        if (holder) items.push({ id, outcome: { held: holder } });
        else if (allAnswered) items.push({ id, outcome: 'absent' });
        else if (giveUp) items.push({ id, outcome: 'unanswered' });
      }
      if (items.length) {
        let done: { queued: string[]; dropped: string[] };
        try {
          done = await spool.settleInDoubt(items, peers);
        } catch (e) {
          if (spool.isClosed) return;
          log.error({ err: (e as Error).message }, 'could not settle the copies in doubt; retrying');
          await new Promise((r) => setTimeout(r, wait).unref());
          continue;
        }
        const changed = new Set([...done.queued, ...done.dropped]);
        // a row already gone (a reconcile dropped what the peer promoted) needs nothing more
        for (const { id, outcome } of items.filter((i) => changed.has(i.id))) {
          if (outcome === 'absent') {
            log.info({ id }, 'dropped: in doubt after a restart, and no peer holds the shadow copy (no 250 was sent)');
            continue;
          }
          if (outcome === 'unanswered') {
            this.metrics.duplicateRisk('delivered_in_doubt');
            log.warn({ id, waitedMs: Math.round(monotonicMs() - started) }, 'queued without an answer: in doubt after a restart and no peer could be asked within promoteAfterMs (may be delivered twice)');
          } else {
            log.info({ id, shadowPeer: outcome.held }, 'queued: in doubt after a restart, and the peer holds the shadow copy');
          }
          this.o.onAccepted(id);
        }
        const settled = new Set(items.map((i) => i.id));
        open = open.filter((id) => !settled.has(id));
      }
      if (open.length === 0 || spool.isClosed) return;
      await new Promise((r) => setTimeout(r, wait).unref());
    }
  }

  /**
   * Drops an unacknowledged copy; on a storage error keeps trying in the background. A
   * discard is owed to `owed` (the peers a copy went to), or to every peer when unknown.
   */
  private async drop(id: string, owed?: string[]): Promise<void> {
    const { spool, log } = this.o;
    const peers = owed ?? this.o.peerNames();
    try {
      await spool.dropUnacked(id, peers);
      return;
    } catch (e) {
      log.error({ id, err: (e as Error).message }, 'could not drop the unacknowledged copy; retrying');
    }
    void (async () => {
      for (let wait = 200; ; wait = Math.min(wait * 2, 10000)) {
        await new Promise((r) => setTimeout(r, wait).unref());
        try {
          await spool.dropUnacked(id, peers);
          log.info({ id }, 'unacknowledged copy dropped');
          return;
        } catch (e) {
          // once the spool is closed, the start-up recovery drops it
          if (spool.isClosed) return;
          log.error({ id, err: (e as Error).message }, 'could not drop the unacknowledged copy; retrying');
        }
      }
    })();
  }
}
