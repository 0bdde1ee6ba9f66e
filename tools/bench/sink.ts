/**
 * The next hop every system under test delivers to: Postfix's `smtp-sink` when installed
 * (C, cheap, so it does not steal CPU from the relay being measured), else a Node sink.
 * Both print a running message count (`mesg=N`); the time the count reaches a target is the
 * "last message at the sink" moment of an end-to-end measurement.
 */
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { freePort } from '../net.js';
import { findBinary, isRoot, stopChild, waitForPort, type Registry } from './procs.js';

export class BenchSink {
  private n = 0;
  private waiters: Array<{ target: number; resolve: (t: number) => void }> = [];

  private constructor(
    readonly kind: 'smtp-sink' | 'node',
    readonly port: number,
    readonly pid: number,
    private readonly stopFn: () => Promise<void>,
  ) {}

  static async start(reg: Registry, prefer: 'auto' | 'node' = 'auto'): Promise<BenchSink> {
    const port = await freePort();
    const bin = prefer === 'auto' ? findBinary('smtp-sink') : null;
    // smtp-sink refuses to run as root without a user to drop to
    const args = bin ? [...(isRoot() ? ['-u', 'postfix'] : []), '-c', `127.0.0.1:${port}`, '1024'] : [];
    const child = bin
      ? reg.spawn(bin, args)
      : reg.spawn(process.execPath, [fileURLToPath(new URL('./node-sink.js', import.meta.url)), String(port)]);
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const sink = new BenchSink(bin ? 'smtp-sink' : 'node', port, child.pid ?? 0, () => stopChild(child, 2000));
    child.stdout!.on('data', (d: Buffer) => sink.onOutput(d.toString('latin1')));
    try {
      await waitForPort(port, 10000);
    } catch (e) {
      await stopChild(child, 1000);
      throw new Error(`sink did not start: ${(e as Error).message} ${stderr.trim()}`);
    }
    return sink;
  }

  private onOutput(s: string): void {
    // counters are written on every event, separated by \r (smtp-sink) or \n (ours)
    const all = s.match(/mesg=(\d+)/g);
    if (!all) return;
    const n = Number(all[all.length - 1]!.slice(5));
    if (n <= this.n) return;
    this.n = n;
    const now = performance.now();
    this.waiters = this.waiters.filter((w) => {
      if (n < w.target) return true;
      w.resolve(now);
      return false;
    });
  }

  get count(): number {
    return this.n;
  }

  /** Resolves with performance.now() at the moment the count reached `target`. */
  waitCount(target: number, timeoutMs: number): Promise<number> {
    if (this.n >= target) return Promise.resolve(performance.now());
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.resolve !== done);
        reject(new Error(`sink: ${this.n} of ${target} messages after ${timeoutMs} ms`));
      }, timeoutMs);
      const done = (at: number) => {
        clearTimeout(t);
        resolve(at);
      };
      this.waiters.push({ target, resolve: done });
    });
  }

  stop(): Promise<void> {
    return this.stopFn();
  }
}
