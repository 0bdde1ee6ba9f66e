/**
 * Runs Postfix's `smtp-source` (C, one process, negligible CPU next to any relay) as the
 * throughput load generator: `-s` parallel sessions, `-m` messages of `-l` payload bytes,
 * one recipient, a new connection per message — the shape of the baseline run.
 * It stops at the first non-2xx reply (no -A), so a refusal makes the run fail loudly.
 */
import { performance } from 'node:perf_hooks';
import { exited, type Registry } from './procs.js';

export interface SourceResult {
  ok: number;
  wallMs: number;
}

export async function runSmtpSource(
  reg: Registry,
  bin: string,
  o: { port: number; sessions: number; messages: number; size: number },
): Promise<SourceResult> {
  const args = [
    '-s', String(o.sessions),
    '-m', String(o.messages),
    '-l', String(o.size),
    '-M', 'client.bench.test',
    '-f', 'sender@bench.test',
    '-t', 'rcpt@dest.bench.test',
    `127.0.0.1:${o.port}`,
  ];
  const t0 = performance.now();
  const child = reg.spawn(bin, args);
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  child.stdout!.resume();
  const code = await exited(child);
  const wallMs = performance.now() - t0;
  if (code !== 0) throw new Error(`smtp-source exited with ${code}: ${err.trim().split('\n').slice(-3).join(' | ')}`);
  return { ok: o.messages, wallMs };
}
