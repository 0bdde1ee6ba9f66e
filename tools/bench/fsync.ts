/**
 * The simulated disk of the benchmark: fsync-shim.c, built here with the machine's gcc into a
 * temp folder and loaded with LD_PRELOAD into the processes of one system under test. Each
 * "machine" (a shadowrelay node; Postfix with all its daemons) gets its own counter file, so
 * fsync-family calls are counted per node, and optionally a delay per call (a slow disk).
 * Without gcc the benchmark says so and runs without counts and without slow-disk passes.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { findBinary, type Registry } from './procs.js';

/** The C source sits next to this file in the repository (tools/bench/), not in dist-tools. */
function shimSource(): string | null {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const p of [path.join(here, 'fsync-shim.c'), path.resolve(here, '..', '..', '..', 'tools', 'bench', 'fsync-shim.c')]) {
    try {
      readFileSync(p);
      return p;
    } catch {
      /* next */
    }
  }
  return null;
}

export interface Disk {
  /** environment for every process of this machine */
  env: Record<string, string>;
  /** fsync + fdatasync calls so far */
  count(): number;
}

export class FsyncShim {
  private n = 0;
  private constructor(
    private readonly lib: string,
    private readonly dir: string,
  ) {}

  /** Builds the shim; null (with the reason) when there is no gcc or no source. */
  static build(reg: Registry): FsyncShim | string {
    const gcc = findBinary('gcc') ?? findBinary('cc');
    if (!gcc) return 'no C compiler (gcc) on this machine';
    const src = shimSource();
    if (!src) return 'tools/bench/fsync-shim.c not found';
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sr-bench-fsync-'));
    reg.defer('remove the fsync shim', () => rmSync(dir, { recursive: true, force: true }));
    const lib = path.join(dir, 'fsync-shim.so');
    try {
      execFileSync(gcc, ['-shared', '-fPIC', '-O2', '-o', lib, src, '-ldl', '-lpthread'], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (e) {
      return `gcc could not build the fsync shim: ${String((e as { stderr?: Buffer }).stderr ?? e).trim().split('\n')[0]}`;
    }
    return new FsyncShim(lib, dir);
  }

  /**
   * A disk for one machine. `delayUs` per call; `serial`: one call in the device at a time
   * across every process of this machine (a disk without a protected write cache).
   */
  disk(name: string, delayUs = 0, serial = true): Disk {
    const tag = `${name}-${++this.n}`;
    const countFile = path.join(this.dir, `${tag}.count`);
    writeFileSync(countFile, Buffer.alloc(8));
    const env: Record<string, string> = { LD_PRELOAD: this.lib, SR_FSYNC_COUNT_FILE: countFile };
    if (delayUs > 0) {
      env.SR_FSYNC_DELAY_US = String(delayUs);
      if (serial) {
        const lock = path.join(this.dir, `${tag}.lock`);
        writeFileSync(lock, '');
        env.SR_FSYNC_LOCK_FILE = lock;
      }
    }
    return {
      env,
      count: () => {
        try {
          return Number(readFileSync(countFile).readBigInt64LE(0));
        } catch {
          return 0;
        }
      },
    };
  }
}
