/**
 * A staging area shared with the writer thread for large message bodies.
 *
 * Why: a body posted to the writer (as a copy or as a SharedArrayBuffer) becomes garbage in
 * the writer's isolate once written, and V8 frees it only when that isolate collects; a
 * writer allocates little else, so it collected about every 64 MB of bodies (V8's external
 * memory step): with 1 MB messages that was ~50-70 MB more RSS per node. A body copied into
 * this one area, reused message after message, leaves nothing behind in the writer.
 *
 * Allocation is a ring: slots are taken at the head and freed when the writer answered
 * (mostly in order; one freed early waits for the older ones). No room: the caller posts the
 * body as before.
 */
import { Parts } from '../base/buffers.js';

export const STAGE_MIN_BYTES = 64 * 1024;

/** What replaces a staged body in the posted arguments. */
export interface StagedRef {
  $staged: [offset: number, length: number];
}

export class Staging {
  readonly area: SharedArrayBuffer;
  private readonly bytes: Buffer;
  /** slots in allocation order */
  private readonly slots: Array<{ start: number; free: boolean }> = [];
  private head = 0;

  constructor(size: number) {
    this.area = new SharedArrayBuffer(size);
    this.bytes = Buffer.from(this.area);
  }

  /** Copies `b` in (a buffer, or a body's pieces one after the other); its slot start, or null when there is no room. */
  put(b: Uint8Array | Parts): number | null {
    const size = this.area.byteLength;
    const n = b instanceof Parts ? b.length : b.byteLength;
    if (n > size / 2) return null;
    const tail = this.slots.length ? this.slots[0]!.start : this.head;
    let at = this.head;
    if (this.slots.length === 0) {
      at = 0;
    } else if (this.head >= tail) {
      // free space: [head, size) then [0, tail)
      if (size - this.head < n) {
        if (tail <= n) return null;
        at = 0;
      }
    } else if (tail - this.head <= n) {
      return null;
    }
    if (b instanceof Parts) b.copyTo(this.bytes, at);
    else this.bytes.set(b, at);
    this.slots.push({ start: at, free: false });
    this.head = at + n;
    return at;
  }

  free(start: number): void {
    const s = this.slots.find((x) => x.start === start && !x.free);
    if (s) s.free = true;
    while (this.slots.length && this.slots[0]!.free) this.slots.shift();
    if (this.slots.length === 0) this.head = 0;
  }
}

/** Arguments with their large bodies staged (new objects where one was; the caller's are untouched). */
export function stageArgs(x: unknown, staging: Staging, taken: number[]): unknown {
  if (x instanceof Uint8Array || x instanceof Parts) {
    // a body in pieces is copied straight into the area; a small one or one without room goes
    // as it is (pieces as one buffer: they do not survive the structured clone)
    const n = x instanceof Parts ? x.length : x.byteLength;
    const at = n < STAGE_MIN_BYTES ? null : staging.put(x);
    if (at === null) return x instanceof Parts ? x.whole() : x;
    taken.push(at);
    return { $staged: [at, n] } satisfies StagedRef;
  }
  if (Array.isArray(x)) {
    let changed = false;
    const out = x.map((v) => {
      const r = stageArgs(v, staging, taken);
      if (r !== v) changed = true;
      return r;
    });
    return changed ? out : x;
  }
  if (x && typeof x === 'object' && Object.getPrototypeOf(x) === Object.prototype) {
    let out: Record<string, unknown> | null = null;
    for (const [k, v] of Object.entries(x)) {
      const r = stageArgs(v, staging, taken);
      if (r !== v) (out ??= { ...(x as Record<string, unknown>) })[k] = r;
    }
    return out ?? x;
  }
  return x;
}

export function isStaged(x: unknown): x is StagedRef {
  return !!x && typeof x === 'object' && Array.isArray((x as StagedRef).$staged) && Object.keys(x).length === 1;
}
