/**
 * A wall clock that jumps (NTP correcting by hours) must neither promote a live primary's
 * copies nor end a restarted node's wait for its reconcile early: those durations run on the
 * monotonic clock. The node under test runs with Debian's libfaketime preloaded, its wall
 * clock stepped at run time through a timestamp file, its monotonic clock left real
 * (FAKETIME_DONT_FAKE_MONOTONIC). Skipped with a line where libfaketime is not installed.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { send, waitFor, tmpDir } from '../helpers/index.js';
import { startCluster, type Cluster } from '../helpers/cluster.js';
import { deepMerge } from '../../tools/pair.js';

const LIBFAKETIME = ['/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1', '/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1', '/usr/lib/faketime/libfaketime.so.1'].find(
  (f) => existsSync(f),
);
if (!LIBFAKETIME) console.log('[clock] libfaketime not installed (Debian package faketime): clock-jump tests skipped');

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A wall clock for one child process, offset at run time by writing the file. */
function fakeClock(): { env: Record<string, string>; jump: (offset: string) => void } {
  const { dir, cleanup } = tmpDir('sr-clock-');
  cleanups.push(cleanup);
  const file = path.join(dir, 'faketime');
  writeFileSync(file, '+0\n');
  return {
    env: {
      LD_PRELOAD: LIBFAKETIME!,
      FAKETIME_TIMESTAMP_FILE: file,
      // read the file on every call, so a write steps the clock at once
      FAKETIME_NO_CACHE: '1',
      FAKETIME_DONT_FAKE_MONOTONIC: '1',
      // file times stay real: module loading (better-sqlite3's bindings lookup) trips over faked ones
      NO_FAKE_STAT: '1',
    },
    jump: (offset) => writeFileSync(file, `${offset}\n`),
  };
}

async function cluster(o: Record<string, unknown>): Promise<Cluster> {
  const c = await startCluster(
    deepMerge({ shadow: { heartbeatMs: 5000, timeoutMs: 3000, promoteAfterMs: 20000, reconcileIntervalMs: 1000 }, delivery: { retry: { initialMs: 200, maxMs: 1000, maxAgeMs: 432000000 } } }, o),
    {},
    { sinkUp: false },
  );
  cleanups.push(() => c.stop());
  return c;
}

describe.skipIf(!LIBFAKETIME)('wall-clock steps', () => {
  it("the shadow holder's wall clock jumps 2 h ahead: it does not promote the copies of a primary that is alive", async () => {
    const c = await cluster({});
    const clock = fakeClock();
    const b = await c.start('relay-b', { env: clock.env });
    const a = await c.start('relay-a');
    for (let i = 0; i < 3; i++) expect((await send(a.addresses.smtp.port)).code).toBe(250);
    await waitFor(() => c.spoolIds('relay-b', 'shadow').length === 3, 20000, 'three copies on relay-b');
    clock.jump('+2h');
    // a wall-clock promotion timer would fire on relay-b's next failover tick (every second),
    // before the next heartbeat (every 5 s) refreshed the contact time
    await sleep(6000);
    expect(b.lines.filter((l) => l.msg === 'promoted')).toEqual([]);
    expect(b.lines.some((l) => l.msg === 'peer unreachable for promoteAfterMs: promoting its shadow copies')).toBe(false);
    expect(c.spoolIds('relay-b', 'shadow')).toHaveLength(3);
    // and the pair still works with the stepped clock
    await c.sinkUp();
    await waitFor(() => c.received.length === 3, 20000, 'relay-a delivers its three');
    await waitFor(() => c.spoolTotal('relay-b') === 0, 20000, 'relay-b discards its copies');
  }, 90000);

  it("a restarted primary's wall clock jumps 2 h ahead while it waits to reconcile: the wait is not cut short", async () => {
    const c = await cluster({});
    const b = await c.start('relay-b');
    let a = await c.start('relay-a');
    for (let i = 0; i < 3; i++) expect((await send(a.addresses.smtp.port)).code).toBe(250);
    await waitFor(() => c.spoolIds('relay-b', 'shadow').length === 3, 20000, 'three copies on relay-b');
    await c.kill('relay-a', 'SIGKILL');
    // relay-b frozen: the restarted relay-a cannot reconcile and must hold its queue
    b.proc.kill('SIGSTOP');
    cleanups.push(() => void b.proc.kill('SIGCONT'));
    const clock = fakeClock();
    a = await c.start('relay-a', { env: clock.env });
    await c.sinkUp();
    clock.jump('+2h');
    await sleep(4000);
    expect(c.received).toHaveLength(0);
    expect(a.lines.some((l) => l.msg === 'no reconcile with the peer within promoteAfterMs: delivering anyway (duplicate risk if it promoted)')).toBe(false);
    b.proc.kill('SIGCONT');
    await waitFor(() => a.lines.some((l) => l.msg === 'reconciled with peer'), 30000, 'relay-a reconciles once relay-b thaws');
    await waitFor(() => c.received.length === 3, 20000, 'then delivers its three');
  }, 90000);
});
