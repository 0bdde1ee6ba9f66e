#!/usr/bin/env node
/**
 * cli — `shadowrelay start | check-config | queue … | health | drain | spool backup | certs init |
 * hash-password`. (The demo and the test sink are tools: tools/cli.ts, `npm run demo`.)
 * Exit codes: 0 ok, 1 configuration or usage error (or: no such message, not healthy),
 * 2 runtime failure (including: the daemon does not answer).
 * Queue tools talk to the running daemon through its admin endpoint; the read-only ones
 * (`list`, `show`) read the spool file directly when the daemon is down, and say so.
 */
import { Command } from 'commander';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { loadConfig, ConfigError, type Config } from './config/index.js';
import { Spool, type MessageSummary } from './spool/index.js';
import { writeCertSet } from './certs/index.js';
import { adminRequest, DaemonDown, AdminError } from './ops/admin-client.js';
import { queueTable, showText } from './ops/queue-format.js';
import { viewMessage, type MessageView, type ActionResult } from './ops/queue.js';
import { statusText } from './ops/status-format.js';
import type { Overview } from './ops/dashboard.js';
import { formatHostPort } from './base/net.js';
import { monotonicMs } from './base/clock.js';

function configOrExit(file: string): Config {
  try {
    return loadConfig(file);
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(e.message + '\n');
      process.exit(1);
    }
    throw e;
  }
}

const program = new Command();
program.name('shadowrelay').description('SMTP relay that answers 250 only once two machines hold a durable copy');

program
  .command('start')
  .description('run a relay node in the foreground (SIGTERM or SIGINT stops it cleanly)')
  .requiredOption('-c, --config <file>', 'YAML configuration file')
  .action(async (o: { config: string }) => {
    const cfg = configOrExit(o.config);
    const { Relay } = await import('./relay.js');
    const relay = await Relay.start(cfg);
    let stopping = false;
    const stop = (sig: string) => {
      if (stopping) return;
      stopping = true;
      relay.log.info({ signal: sig }, 'signal received');
      // a backstop: the stop is bounded, but never let a stuck part keep the process alive
      const drainMs = cfg.node.drainOnStop ? cfg.node.drainTimeoutMs : 0;
      setTimeout(() => process.exit(2), drainMs + cfg.node.shutdownTimeoutMs + cfg.shadow.timeoutMs + 5000).unref();
      relay.stop().then(
        () => process.exit(0),
        () => process.exit(2),
      );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    // like Postfix's `postfix reload`: re-read the file; a bad one is refused and logged
    process.on('SIGHUP', () => {
      relay.log.info({ signal: 'SIGHUP' }, 'signal received');
      relay.reloadFromFile();
    });
  });

program
  .command('check-config')
  .description('validate a configuration file and exit (0 valid, 1 invalid)')
  .requiredOption('-c, --config <file>', 'YAML configuration file')
  .action((o: { config: string }) => {
    const cfg = configOrExit(o.config);
    process.stdout.write(`${cfg.file}: ok (node ${cfg.node.name}, peers ${cfg.shadow.peers.map((p) => p.name).join(', ')})\n`);
  });

program
  .command('status')
  .description('one screen: the node, its peers with link state and round trip, the queue, the oldest message, last errors, certificate expiry')
  .requiredOption('-c, --config <file>', 'YAML configuration file')
  .option('--json', 'print the overview as JSON')
  .action(async (o: { config: string; json?: boolean }) => {
    const cfg = configOrExit(o.config);
    const admin = formatHostPort(cfg.admin.listen);
    let v: Overview;
    try {
      v = await adminRequest<Overview>(cfg, 'GET', '/api/overview', 10000);
    } catch (e) {
      // one line, and a non-zero exit: scripts and humans both see at once that it is down
      if (e instanceof DaemonDown) process.stderr.write(`shadowrelay: ${cfg.node.name} is not running (nothing answers on ${admin}: ${e.reason})\n`);
      else process.stderr.write(`shadowrelay: ${cfg.node.name}: ${(e as Error).message}\n`);
      process.exit(e instanceof AdminError && e.status !== 401 ? 1 : 2);
    }
    process.stdout.write(o.json ? JSON.stringify(v, null, 2) + '\n' : statusText(v, admin));
  });

const queue = program.command('queue').description('inspect and control the queue (mailq, postqueue, postsuper, postcat)');

function fail(e: unknown): never {
  if (e instanceof DaemonDown) {
    process.stderr.write(`shadowrelay: ${e.message}\n`);
    process.exit(2);
  }
  if (e instanceof AdminError) {
    process.stderr.write(`shadowrelay: ${e.message}\n`);
    process.exit(e.status === 401 ? 2 : 1);
  }
  throw e;
}

/** Runs a read through the daemon, or on the spool file (read-only) when the daemon is down. */
async function readQueue<T>(cfg: Config, viaAdmin: () => Promise<T>, direct: (spool: Spool | null) => T): Promise<T> {
  try {
    return await viaAdmin();
  } catch (e) {
    if (!(e instanceof DaemonDown)) fail(e);
    process.stderr.write(`shadowrelay: ${e.message}; reading the spool file directly\n`);
    if (!existsSync(path.join(cfg.node.dataDir, 'spool.db'))) return direct(null);
    const spool = Spool.open(cfg.node.dataDir, { node: cfg.node.name, readonly: true });
    try {
      return direct(spool);
    } finally {
      void spool.close();
    }
  }
}

queue
  .command('list')
  .description("every message in this node's spool, primary and shadow (like mailq)")
  .requiredOption('-c, --config <file>', 'YAML configuration file')
  .option('--json', 'print a JSON array')
  .action(async (o: { config: string; json?: boolean }) => {
    const cfg = configOrExit(o.config);
    const rows = await readQueue<MessageSummary[]>(
      cfg,
      async () => (await adminRequest<{ messages: MessageSummary[] }>(cfg, 'GET', '/queue')).messages,
      (spool) => spool?.list() ?? [],
    );
    process.stdout.write(o.json ? JSON.stringify(rows, null, 2) + '\n' : queueTable(rows));
  });

queue
  .command('show <id>')
  .description('envelope, per-recipient state, history and headers of one message (like postcat)')
  .requiredOption('-c, --config <file>', 'YAML configuration file')
  .option('--body', 'print the whole message, not only its headers')
  .option('--json', 'print JSON')
  .action(async (id: string, o: { config: string; body?: boolean; json?: boolean }) => {
    const cfg = configOrExit(o.config);
    const v = await readQueue<MessageView | undefined>(
      cfg,
      async () => {
        try {
          return await adminRequest<MessageView>(cfg, 'GET', `/queue/${encodeURIComponent(id)}${o.body ? '?body=1' : ''}`);
        } catch (e) {
          if (e instanceof AdminError && e.status === 404) return undefined;
          throw e;
        }
      },
      (spool) => (spool ? viewMessage(spool, id, !!o.body) : undefined),
    );
    if (!v) {
      process.stderr.write(`shadowrelay: ${id}: no such message in the queue\n`);
      process.exit(1);
    }
    process.stdout.write(o.json ? JSON.stringify(v, null, 2) + '\n' : showText(v));
  });

queue
  .command('flush')
  .description('attempt delivery of every queued message now (like postqueue -f)')
  .requiredOption('-c, --config <file>', 'YAML configuration file')
  .action(async (o: { config: string }) => {
    const cfg = configOrExit(o.config);
    const r = await adminRequest<{ count: number }>(cfg, 'POST', '/queue/flush').catch(fail);
    process.stdout.write(`${r.count} message${r.count === 1 ? '' : 's'} due now\n`);
  });

function action(name: 'retry' | 'hold' | 'release', what: string): void {
  queue
    .command(`${name} <id>`)
    .description(what)
    .requiredOption('-c, --config <file>', 'YAML configuration file')
    .action(async (id: string, o: { config: string }) => {
      const cfg = configOrExit(o.config);
      const r = await adminRequest<ActionResult & { ok: true }>(cfg, 'POST', `/queue/${encodeURIComponent(id)}/${name}`).catch(fail);
      process.stdout.write(`${r.id}: ${r.result}\n`);
    });
}
action('retry', 'attempt delivery of one message now');
action('hold', 'put a message on hold: it is not delivered until released (like postsuper -h)');
action('release', 'release a held message; it is due at once (like postsuper -H)');

queue
  .command('delete [id]')
  .description("delete a message without delivering it; the peer's shadow copy is discarded too (like postsuper -d)")
  .requiredOption('-c, --config <file>', 'YAML configuration file')
  .option('--all-failed', 'delete every message whose last delivery attempt failed (postsuper -d ALL deferred)')
  .action(async (id: string | undefined, o: { config: string; allFailed?: boolean }) => {
    if (!!id === !!o.allFailed) {
      process.stderr.write('shadowrelay: queue delete needs a queue id or --all-failed (not both)\n');
      process.exit(1);
    }
    const cfg = configOrExit(o.config);
    if (o.allFailed) {
      const r = await adminRequest<{ deleted: string[] }>(cfg, 'POST', '/queue/delete-failed').catch(fail);
      for (const d of r.deleted) process.stdout.write(`${d}: deleted\n`);
      process.stdout.write(`${r.deleted.length} message${r.deleted.length === 1 ? '' : 's'} deleted\n`);
      return;
    }
    const r = await adminRequest<ActionResult & { ok: true }>(cfg, 'DELETE', `/queue/${encodeURIComponent(id!)}`).catch(fail);
    process.stdout.write(`${r.id}: ${r.result}\n`);
  });

program
  .command('health')
  .description('ask the running daemon whether it is alive (/healthz) or ready (/readyz); exit 0 when it is')
  .requiredOption('-c, --config <file>', 'YAML configuration file')
  .option('--ready', 'check readiness (a peer answers, or the degraded policy is on) instead of liveness')
  .option('--wait <seconds>', 'keep asking until it answers yes or this many seconds pass', '0')
  .action(async (o: { config: string; ready?: boolean; wait: string }) => {
    const cfg = configOrExit(o.config);
    const until = monotonicMs() + Number(o.wait) * 1000;
    const what = o.ready ? '/readyz' : '/healthz';
    for (;;) {
      let problem: string;
      try {
        await adminRequest(cfg, 'GET', what, 5000);
        process.stdout.write(`${cfg.node.name}: ${o.ready ? 'ready' : 'alive'}\n`);
        return;
      } catch (e) {
        problem = e instanceof AdminError ? `not ready: ${e.message}` : (e as Error).message;
      }
      if (monotonicMs() >= until) {
        process.stderr.write(`shadowrelay: ${cfg.node.name}: ${problem}\n`);
        process.exit(1);
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  });

program
  .command('drain')
  .description("hand this node's queue and the shadow copies it holds to its peers, and stop taking mail (before removing the node); exit 0 once it is empty")
  .requiredOption('-c, --config <file>', 'YAML configuration file')
  .option('--timeout <seconds>', 'give up after this long and report what is left (default node.drainTimeoutMs)')
  .option('--json', 'print the report as JSON')
  .action(async (o: { config: string; timeout?: string; json?: boolean }) => {
    const cfg = configOrExit(o.config);
    const ms = o.timeout === undefined ? cfg.node.drainTimeoutMs : Math.round(Number(o.timeout) * 1000);
    if (!(ms > 0)) {
      process.stderr.write(`shadowrelay: --timeout must be a positive number of seconds, not "${o.timeout}"\n`);
      process.exit(1);
    }
    type Report = import('./shadow/drain.js').DrainReport;
    let r: Report;
    try {
      r = await adminRequest<Report>(cfg, 'POST', `/drain?timeoutMs=${ms}`, ms + 30000);
    } catch (e) {
      // 409: the drain ran and left messages; its report is the error's body
      if (e instanceof AdminError && e.status === 409 && e.body) r = e.body as Report;
      else fail(e);
    }
    if (o.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    else {
      const list = (m: Record<string, number>) => Object.entries(m).map(([k, v]) => `${v} to ${k}`).join(', ') || 'none';
      process.stdout.write(`${cfg.node.name}: transferred ${list(r.transferred)}; shadow copies re-homed ${list(r.reshadowed)}; dropped (origin done) ${r.dropped}; ${r.ms} ms\n`);
      process.stdout.write(r.empty ? `${cfg.node.name}: empty\n` : `${cfg.node.name}: NOT empty: ${r.remaining.primary} primaries, ${r.remaining.shadow} shadow copies, ${r.remaining.outbox} discards owed\n`);
      for (const p of r.problems) process.stdout.write(`  ${p}\n`);
    }
    process.exit(r.empty ? 0 : 1);
  });

program
  .command('kube-zone')
  .description("Kubernetes init container: write the zone label of this pod's node to a file (node.zone: ${NODE_ZONE})")
  .requiredOption('--out <file>', 'file to write the zone to (empty when the node has no zone label)')
  .option('--label <name>', 'the node label to read', 'topology.kubernetes.io/zone')
  .option('--api <url>', 'API server (default: the in-cluster one)')
  .option('--token-file <file>', 'bearer token (default: the service account token)')
  .option('--ca-file <file>', "the API server's CA (default: the service account's)")
  .option('--node <name>', 'node name (default: $NODE_NAME)')
  .action(async (o: { out: string; label: string; api?: string; tokenFile?: string; caFile?: string; node?: string }) => {
    const { writeNodeZone } = await import('./ops/kube-zone.js');
    try {
      const zone = await writeNodeZone(o.out, o);
      process.stdout.write(zone ? `zone ${zone} → ${o.out}\n` : `the node has no ${o.label} label: no zone (placement cannot keep copies out of this node's zone)\n`);
    } catch (e) {
      process.stderr.write(`shadowrelay kube-zone: ${(e as Error).message}\n`);
      process.exit(2);
    }
  });

const spoolCmd = program.command('spool').description('the spool database');
spoolCmd
  .command('backup')
  .description('copy the spool to a file with SQLite\'s online backup (safe while the daemon runs)')
  .requiredOption('-c, --config <file>', 'YAML configuration file')
  .requiredOption('--out <file>', 'backup file to write')
  .action(async (o: { config: string; out: string }) => {
    const cfg = configOrExit(o.config);
    if (!existsSync(path.join(cfg.node.dataDir, 'spool.db'))) {
      process.stderr.write(`shadowrelay: no spool in ${cfg.node.dataDir}\n`);
      process.exit(1);
    }
    const spool = Spool.open(cfg.node.dataDir, { node: cfg.node.name, readonly: true });
    try {
      const r = await spool.backup(o.out);
      process.stdout.write(`${o.out}: ${r.totalPages} pages, ${spool.list().length} messages\n`);
    } finally {
      await spool.close();
    }
  });

const certs = program.command('certs').description('certificates for the replication link');
certs
  .command('init')
  .description('create a CA and one certificate per node')
  .requiredOption('--out <dir>', 'output folder')
  .requiredOption('--nodes <names>', 'comma-separated node names, e.g. relay-a,relay-b')
  .option('--force', 'replace certificates that already exist (a new CA: every node needs the new files)')
  .action(async (o: { out: string; nodes: string; force?: boolean }) => {
    const names = o.nodes.split(',').map((s) => s.trim()).filter(Boolean);
    const files = ['ca.crt', 'ca.key', ...names.flatMap((n) => [`${n}.crt`, `${n}.key`])].map((f) => path.join(o.out, f));
    // idempotent: a re-run (e.g. compose's one-shot service on every `up`) keeps the CA
    if (!o.force && existsSync(path.join(o.out, 'ca.crt'))) {
      const missing = files.filter((f) => !existsSync(f));
      if (missing.length) {
        process.stderr.write(`shadowrelay: ${o.out} holds a CA but not ${missing.join(', ')}; use --force to make a new set\n`);
        process.exit(1);
      }
      process.stdout.write(`certificates already exist in ${o.out}; kept (--force replaces them)\n`);
      return;
    }
    for (const f of await writeCertSet(o.out, names)) process.stdout.write(f + '\n');
  });

program
  .command('hash-password')
  .description('print a password hash for smtp.auth.users (reads the password from a prompt or stdin)')
  .option('--algorithm <name>', 'scrypt or argon2id', 'scrypt')
  .option('--password <password>', 'the password itself (visible in the process list and shell history: prefer stdin)')
  .action(async (o: { algorithm: string; password?: string }) => {
    if (o.algorithm !== 'scrypt' && o.algorithm !== 'argon2id') {
      process.stderr.write(`hash-password: --algorithm must be scrypt or argon2id, not "${o.algorithm}"\n`);
      process.exit(1);
    }
    const { readPassword } = await import('./ops/prompt.js');
    const { hashPassword } = await import('./passwords/index.js');
    if (o.password !== undefined) process.stderr.write('hash-password: warning: a password given on the command line is visible to other users\n');
    const password = o.password ?? (await readPassword('Password: '));
    if (!password) {
      process.stderr.write('hash-password: empty password\n');
      process.exit(1);
    }
    process.stdout.write((await hashPassword(password, o.algorithm)) + '\n');
  });

program.parseAsync(process.argv).catch((e: unknown) => {
  process.stderr.write(`shadowrelay: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(2);
});
