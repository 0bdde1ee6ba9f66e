/**
 * history — the last hour of a node's traffic, in process, for the dashboard: per minute,
 * messages accepted, delivered, deferred, bounced and refused (451s apart), and the
 * replication round trips per peer as a log-scale histogram (p50/p99 of the last minutes).
 *
 * Implementation summary:
 * - A ring of 60 one-minute slots per series, indexed by the monotonic clock (a wall-clock
 *   step must not move traffic into the wrong minute); a slot is cleared when its minute
 *   comes round again. Wall time is only used to label the minutes for display.
 * - Latency buckets grow by 20 % from 0.1 ms (≈ ±10 % on a quantile), up to ~4 minutes.
 * - Fed by the Metrics registry as it counts (one object per node: no global state); the
 *   Prometheus counters stay the durable record, this is only what a person looks at.
 */
import { monotonicMs } from '../base/clock.js';

export const HISTORY_MINUTES = 60;
export const COUNT_KINDS = ['accepted', 'delivered', 'deferred', 'bounced', 'refused', 'refused451'] as const;
export type CountKind = (typeof COUNT_KINDS)[number];

const MINUTE_MS = 60000;
const BUCKET_BASE_S = 0.0001;
const BUCKET_GROWTH = 1.2;
const BUCKETS = 80;

export interface Series {
  /** wall time (ms) of the start of each minute, oldest first; the last one is running */
  minutes: number[];
  counts: Record<CountKind, number[]>;
}

export interface Quantiles {
  /** samples in the window */
  count: number;
  p50Ms: number | null;
  p99Ms: number | null;
}

function bucketOf(seconds: number): number {
  if (!(seconds > BUCKET_BASE_S)) return 0;
  return Math.min(BUCKETS - 1, Math.ceil(Math.log(seconds / BUCKET_BASE_S) / Math.log(BUCKET_GROWTH)));
}

function bucketUpperMs(i: number): number {
  return BUCKET_BASE_S * BUCKET_GROWTH ** i * 1000;
}

export class History {
  /** minute number (monotonic) each slot holds */
  private readonly slotMinute = new Array<number>(HISTORY_MINUTES).fill(-1);
  private readonly counts: Record<CountKind, Float64Array>;
  private readonly latency = new Map<string, Uint32Array[]>();

  constructor(
    private readonly mono: () => number = monotonicMs,
    private readonly wall: () => number = Date.now,
  ) {
    this.counts = Object.fromEntries(COUNT_KINDS.map((k) => [k, new Float64Array(HISTORY_MINUTES)])) as History['counts'];
  }

  private minute(): number {
    return Math.floor(this.mono() / MINUTE_MS);
  }

  /** The slot of the current minute, cleared if it still holds an older minute. */
  private slot(): number {
    const m = this.minute();
    const i = m % HISTORY_MINUTES;
    if (this.slotMinute[i] !== m) {
      this.slotMinute[i] = m;
      for (const k of COUNT_KINDS) this.counts[k][i] = 0;
      for (const slots of this.latency.values()) slots[i]!.fill(0);
    }
    return i;
  }

  add(kind: CountKind, n = 1): void {
    this.counts[kind][this.slot()] += n;
  }

  replicated(peer: string, seconds: number): void {
    let slots = this.latency.get(peer);
    if (!slots) {
      slots = Array.from({ length: HISTORY_MINUTES }, () => new Uint32Array(BUCKETS));
      this.latency.set(peer, slots);
    }
    slots[this.slot()]![bucketOf(seconds)]! += 1;
  }

  /** Per-minute counts of the last `minutes` minutes (the running one last). */
  series(minutes = HISTORY_MINUTES): Series {
    const n = Math.min(HISTORY_MINUTES, Math.max(1, minutes));
    const now = this.minute();
    const nowMono = this.mono();
    const nowWall = this.wall();
    const out: Series = { minutes: [], counts: Object.fromEntries(COUNT_KINDS.map((k) => [k, [] as number[]])) as Series['counts'] };
    for (let m = now - n + 1; m <= now; m++) {
      const i = ((m % HISTORY_MINUTES) + HISTORY_MINUTES) % HISTORY_MINUTES;
      const live = this.slotMinute[i] === m;
      out.minutes.push(Math.round(nowWall - (nowMono - m * MINUTE_MS)));
      for (const k of COUNT_KINDS) out.counts[k].push(live ? this.counts[k][i]! : 0);
    }
    return out;
  }

  /** Sum of one count over the last `minutes` minutes (the running one included). */
  total(kind: CountKind, minutes: number): number {
    return this.series(minutes).counts[kind].reduce((a, b) => a + b, 0);
  }

  /** Replication round-trip quantiles to `peer` over the last `minutes` minutes. */
  quantiles(peer: string, minutes = 5): Quantiles {
    const slots = this.latency.get(peer);
    if (!slots) return { count: 0, p50Ms: null, p99Ms: null };
    const now = this.minute();
    const merged = new Float64Array(BUCKETS);
    for (let m = now - Math.min(HISTORY_MINUTES, minutes) + 1; m <= now; m++) {
      const i = ((m % HISTORY_MINUTES) + HISTORY_MINUTES) % HISTORY_MINUTES;
      if (this.slotMinute[i] !== m) continue;
      slots[i]!.forEach((v, b) => (merged[b]! += v));
    }
    const count = merged.reduce((a, b) => a + b, 0);
    const q = (p: number): number | null => {
      if (count === 0) return null;
      const rank = Math.ceil(p * count);
      let seen = 0;
      for (let b = 0; b < BUCKETS; b++) {
        seen += merged[b]!;
        if (seen >= rank) return Math.round(bucketUpperMs(b) * 100) / 100;
      }
      return Math.round(bucketUpperMs(BUCKETS - 1) * 100) / 100;
    };
    return { count, p50Ms: q(0.5), p99Ms: q(0.99) };
  }
}
