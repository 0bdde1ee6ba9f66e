/**
 * Process bookkeeping for the benchmark: every child it starts is registered here and stopped
 * on the way out (normal end, error, SIGINT/SIGTERM), plus the /proc readers the benchmark
 * measures memory with. Benchmark-only: nothing in the daemon imports this.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { accessSync, constants, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

export type Cleanup = () => Promise<void> | void;

/** Children and cleanup steps of one benchmark run, undone in reverse order. */
export class Registry {
  private readonly steps: Array<{ what: string; fn: Cleanup }> = [];
  private readonly children = new Set<ChildProcess>();
  private closing: Promise<void> | undefined;

  spawn(cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    this.children.add(p);
    p.once('exit', () => this.children.delete(p));
    return p;
  }

  /** Registers a cleanup step (run last-in first-out by closeAll). */
  defer(what: string, fn: Cleanup): void {
    this.steps.push({ what, fn });
  }

  /** Runs the cleanup steps, then kills any child still running. Idempotent. */
  closeAll(): Promise<void> {
    this.closing ??= (async () => {
      for (const s of this.steps.splice(0).reverse()) {
        try {
          await s.fn();
        } catch (e) {
          process.stderr.write(`[bench] cleanup "${s.what}" failed: ${(e as Error).message}\n`);
        }
      }
      await Promise.all([...this.children].map((c) => stopChild(c, 5000)));
    })();
    return this.closing;
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves when the child has exited. */
export function stopChild(c: ChildProcess, graceMs: number): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => c.kill('SIGKILL'), graceMs);
    c.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    c.kill('SIGTERM');
  });
}

/** Resolves with the exit code (rejects if the process could not be started). */
export function exited(c: ChildProcess): Promise<number | null> {
  if (c.exitCode !== null || c.signalCode !== null) return Promise.resolve(c.exitCode);
  return new Promise((resolve, reject) => {
    c.once('error', reject);
    c.once('exit', (code) => resolve(code));
  });
}

/** Finds an executable in PATH and in the sbin folders Debian puts Postfix's tools in. */
export function findBinary(name: string): string | null {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/local/sbin', '/sbin'];
  for (const d of dirs) {
    if (!d) continue;
    const p = path.join(d, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return null;
}

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

/** Polls until a TCP connect to host:port succeeds. */
export async function waitForPort(port: number, timeoutMs: number, host = '127.0.0.1'): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host, port }, () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`nothing listens on ${host}:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** GET on 127.0.0.1: the body as text, or null when there was no 200. */
export function httpText(port: number, urlPath: string): Promise<string | null> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve(res.statusCode === 200 ? body : null));
      res.on('error', () => resolve(null));
    });
    req.on('error', () => resolve(null));
    req.on('timeout', () => {
      req.destroy();
      resolve(null);
    });
  });
}

/** GET http://127.0.0.1:port/path → status code (0 when unreachable). */
export function httpStatus(port: number, urlPath: string): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', () => resolve(0));
    req.on('timeout', () => {
      req.destroy();
      resolve(0);
    });
  });
}

function statusField(pid: number, field: string): number | null {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** Peak resident set size (VmHWM) in bytes, or null when /proc is not readable. */
export const peakRss = (pid: number): number | null => statusField(pid, 'VmHWM');
/** Current resident set size (VmRSS) in bytes. */
export const currentRss = (pid: number): number | null => statusField(pid, 'VmRSS');

/**
 * Proportional set size in bytes: shared pages split between the processes sharing them, so
 * a sum over many processes of one program (Postfix's daemons) does not count them N times.
 * Falls back to RSS when smaps_rollup is not readable.
 */
export function currentPss(pid: number): number | null {
  try {
    const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch {
    /* not readable */
  }
  return currentRss(pid);
}

/**
 * Resets a process's VmHWM so the next reading is the peak of the next phase only
 * (Linux `clear_refs` 5; needs the same user or root). Returns false when not possible.
 */
export function resetPeakRss(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

/** The pid and every descendant of it (from /proc/<pid>/stat ppid fields). */
export function processTree(root: number): number[] {
  const parent = new Map<number, number>();
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc');
  } catch {
    return [root];
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      // the command name may contain spaces or parentheses: fields follow the last ')'
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      parent.set(Number(e), Number(rest[1]));
    } catch {
      /* exited meanwhile */
    }
  }
  const out = [root];
  for (let i = 0; i < out.length; i++) {
    for (const [pid, ppid] of parent) if (ppid === out[i]) out.push(pid);
  }
  return out;
}

/**
 * Samples memory while a phase runs: the max of the sum of VmRSS over `pids()` (used for
 * Postfix, whose work is spread over short-lived processes) and a time series for the
 * leak check.
 */
export class RssSampler {
  maxSum = 0;
  readonly series: Array<{ t: number; rss: number[] }> = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly pids: () => number[],
    private readonly everyMs: number,
    private readonly keepSeries = false,
    private readonly measure: (pid: number) => number | null = currentRss,
  ) {}

  start(): this {
    this.sample();
    this.timer = setInterval(() => this.sample(), this.everyMs);
    this.timer.unref();
    return this;
  }

  sample(): void {
    const rss = this.pids().map((p) => this.measure(p) ?? 0);
    const sum = rss.reduce((a, b) => a + b, 0);
    if (sum > this.maxSum) this.maxSum = sum;
    if (this.keepSeries) this.series.push({ t: Date.now(), rss });
  }

  stop(): this {
    clearInterval(this.timer);
    this.sample();
    return this;
  }
}

/** Clock ticks per second of /proc/<pid>/stat times (USER_HZ; 100 on Linux). */
const TICKS_PER_SEC = 100;

/**
 * CPU time (user + system, plus reaped children's) of the given processes, in ms. Postfix's
 * master reaps its daemons, so their time lands in its cutime once they exit.
 */
export function cpuMs(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // fields 14-17 of stat (utime stime cutime cstime) are 11-14 after the ')'
      ticks += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
    } catch {
      /* exited */
    }
  }
  return (ticks * 1000) / TICKS_PER_SEC;
}

/** CPU used by a changing set of processes between two moments (a process seen only once counts from 0). */
export class CpuMeter {
  private readonly start = new Map<number, number>();

  constructor(private readonly pids: () => number[]) {
    for (const p of pids()) this.start.set(p, cpuMs([p]));
  }

  elapsedMs(): number {
    const now = new Set(this.pids());
    let total = 0;
    for (const p of now) total += cpuMs([p]) - (this.start.get(p) ?? 0);
    // a process that exited meanwhile was reaped with all its time, also the part before start
    for (const [p, t] of this.start) if (!now.has(p)) total -= t;
    return total;
  }
}

export function loadavg(): [number, number, number] {
  const [a, b, c] = os.loadavg();
  return [round2(a!), round2(b!), round2(c!)];
}

export const round2 = (x: number): number => Math.round(x * 100) / 100;
