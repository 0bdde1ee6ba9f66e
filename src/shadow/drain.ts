/**
 * Drain: empty this node before it is removed (`shadowrelay drain`, `POST /drain`, or a
 * graceful stop with `node.drainOnStop`). Exchange's `Redirect-Message` and KumoMTA's queue
 * transfer do the same job; here no message ever has fewer than two copies:
 *
 * 1. This node stops taking work: SMTP answers 421, readiness fails, the link says
 *    `draining` in heartbeats and refuses new shadow copies (503: primaries pick another
 *    peer at once), delivery pauses (no message is both sent and handed over).
 * 2. Every queued (or held) primary is handed to a healthy peer T — its shadow holder S when
 *    S can take it (S already holds the bytes; T then shadows it on a third node), else
 *    another peer, which shadows it anywhere but here and S. T writes it as its own primary
 *    (original envelope, remaining recipients) only after its new shadow is confirmed, in
 *    one transaction with dropping the copy it held; this node drops its copy only after T
 *    confirmed, and owes S a discard (a no-op on S when S is T). Copies during the hand-over:
 *    here + S → here + S + T + new shadow → T + new shadow.
 * 3. Every shadow copy held here for an origin O is re-homed: O makes a new copy on another
 *    peer, records it, and answers; then this copy is dropped.
 * 4. Owed discards are sent. The node is empty when it holds no message and owes nothing.
 * Rounds repeat (a peer that was down may come back) until empty or `deadlineMs`; then the
 * report says what moved and what is left and why. Delivery resumes if the node is not empty.
 */
import type { Logger } from 'pino';
import type { DrainSpool } from '../spool/index.js';
import type { ShadowLink } from './index.js';
import { monotonicMs } from '../base/clock.js';

export interface DrainOptions {
  nodeName: string;
  spool: DrainSpool;
  link: ShadowLink;
  log: Logger;
  /** stop taking new mail: 421 from now on, and wait for transactions being accepted */
  stopAccepting: () => Promise<void>;
  /** stop starting deliveries and wait for those in flight */
  pauseDelivery: () => Promise<void>;
  resumeDelivery: () => void;
}

export interface DrainReport {
  /** primaries handed to peers: peer → count */
  transferred: Record<string, number>;
  /** shadow copies re-homed by their origins: origin → count */
  reshadowed: Record<string, number>;
  /** shadow copies dropped because their origin no longer held the message */
  dropped: number;
  remaining: { primary: number; shadow: number; outbox: number };
  empty: boolean;
  ms: number;
  /** why what is left is left (last error per message or origin, at most 20) */
  problems: string[];
}

const BATCH = 200;
const PARALLEL = 8;
const RESHADOW_BATCH = 50;
const ROUND_PAUSE_MS = 250;

export class Drainer {
  private running: Promise<DrainReport> | undefined;

  constructor(private readonly o: DrainOptions) {}

  /** Runs the drain (one at a time: a second call gets the running one's report). */
  drain(deadlineMs: number): Promise<DrainReport> {
    this.running ??= this.run(deadlineMs).finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async run(deadlineMs: number): Promise<DrainReport> {
    const { spool, link, log } = this.o;
    const t0 = monotonicMs();
    const end = t0 + deadlineMs;
    const report: DrainReport = { transferred: {}, reshadowed: {}, dropped: 0, remaining: { primary: 0, shadow: 0, outbox: 0 }, empty: false, ms: 0, problems: [] };
    const problems = new Map<string, string>();
    log.info({ deadlineMs }, 'drain: started (no new mail, no new shadow copies; handing the queue to peers)');
    link.setDraining(true);
    await this.o.stopAccepting();
    await this.o.pauseDelivery();
    for (;;) {
      problems.clear();
      await this.transferRound(report, problems, end);
      await this.reshadowRound(report, problems, end);
      link.pumpDiscards();
      const c = spool.counts();
      report.remaining = c;
      if (c.primary === 0 && c.shadow === 0 && c.outbox === 0) break;
      if (monotonicMs() >= end) break;
      await new Promise((r) => setTimeout(r, ROUND_PAUSE_MS));
    }
    report.empty = report.remaining.primary === 0 && report.remaining.shadow === 0 && report.remaining.outbox === 0;
    report.ms = Math.round(monotonicMs() - t0);
    report.problems = [...problems].slice(0, 20).map(([k, v]) => `${k}: ${v}`);
    if (report.remaining.outbox > 0) report.problems.push(`${report.remaining.outbox} discards owed to peers not yet confirmed`);
    if (!report.empty) this.o.resumeDelivery();
    log[report.empty ? 'info' : 'warn']({ ...report }, report.empty ? 'drain: done, this node is empty' : 'drain: ended with messages left');
    return report;
  }

  private async transferRound(report: DrainReport, problems: Map<string, string>, end: number): Promise<void> {
    const { spool, link, log, nodeName } = this.o;
    const ids = spool.drainPrimaries(BATCH * 50);
    const work = ids.slice();
    const one = async (id: string) => {
      const m = spool.getWithBody(id);
      if (!m || m.role !== 'primary' || (m.state !== 'queued' && m.state !== 'held')) return;
      if (!m.recipients.some((r) => r.state === 'pending')) return;
      // its shadow holder first (it has the bytes, and the copy count never drops); else any
      // healthy peer, which will shadow it neither here nor on the old holder
      const holder = m.shadowPeer && link.isHealthy(m.shadowPeer) ? [m.shadowPeer] : [];
      const others = link.transferCandidates(id, [nodeName, ...(m.shadowPeer ? [m.shadowPeer] : [])]);
      let lastErr = 'no healthy peer to take it';
      for (const to of [...holder, ...others]) {
        try {
          const r = await link.transfer(m, to);
          if (await spool.handedOver(id)) {
            report.transferred[to] = (report.transferred[to] ?? 0) + 1;
            log.info({ id, to, shadowPeer: r.shadowPeer, result: r.result }, 'transferred out: a peer queued it and shadowed it on a third node');
          }
          return;
        } catch (e) {
          lastErr = `${to}: ${(e as Error).message}`;
        }
      }
      problems.set(id, lastErr);
      log.debug({ id, err: lastErr }, 'drain: could not hand over (retried next round)');
    };
    const workers = Array.from({ length: Math.min(PARALLEL, work.length) }, async () => {
      for (let id = work.shift(); id !== undefined && monotonicMs() < end; id = work.shift()) await one(id);
    });
    await Promise.all(workers);
  }

  private async reshadowRound(report: DrainReport, problems: Map<string, string>, end: number): Promise<void> {
    const { spool, link, log } = this.o;
    for (const origin of spool.shadowOrigins()) {
      if (monotonicMs() >= end) return;
      if (!link.isHealthy(origin)) {
        const n = spool.drainShadows(origin, 1_000_000).length;
        problems.set(`origin ${origin}`, `${n} shadow copies held for it, and it cannot be reached (it promotes nothing while we hold them; drain again once it is back, or let promotion run)`);
        continue;
      }
      for (;;) {
        const ids = spool.drainShadows(origin, RESHADOW_BATCH);
        if (ids.length === 0 || monotonicMs() >= end) break;
        let r: { moved: string[]; gone: string[] };
        try {
          r = await link.reshadow(origin, ids);
        } catch (e) {
          problems.set(`origin ${origin}`, (e as Error).message);
          break;
        }
        const settled = [...r.moved, ...r.gone];
        const dropped = settled.length ? await spool.dropShadows(origin, settled) : [];
        report.reshadowed[origin] = (report.reshadowed[origin] ?? 0) + r.moved.length;
        report.dropped += r.gone.length;
        for (const id of dropped) log.info({ id, origin }, 'shadow handed back: its origin shadowed it on another peer');
        // nothing moved: the origin could not place them now (try again next round)
        if (settled.length === 0) {
          problems.set(`origin ${origin}`, 'could not shadow the copies on another peer now');
          break;
        }
      }
    }
  }
}
