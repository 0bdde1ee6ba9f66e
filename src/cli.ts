#!/usr/bin/env node
/**
 * cli — `shadowrelay start | check-config | queue list | certs init | demo`.
 * Exit codes: 0 ok, 1 configuration or usage error, 2 runtime failure.
 */
import { Command } from 'commander';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { loadConfig, ConfigError, type Config } from './config/index.js';
import { Spool, type MessageSummary } from './spool/index.js';
import { writeCertSet } from './certs/index.js';

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

function fmtTime(ms: number): string {
  return new Date(ms).toISOString().replace('T', ' ').slice(0, 19);
}

function queueTable(rows: MessageSummary[]): string {
  if (rows.length === 0) return 'Mail queue is empty\n';
  const out: string[] = [];
  out.push('-Queue ID-           -Role/State-      -Size- ----Arrival Time---- -Attempts- -Next Attempt------- -Sender/Recipient-');
  for (const m of rows) {
    out.push(
      `${m.id.padEnd(20)} ${`${m.role}/${m.state}`.padEnd(17)} ${String(m.size).padStart(6)} ${fmtTime(m.receivedAt)} ${String(m.attempts).padStart(10)} ${fmtTime(m.nextAttemptAt)} ${m.sender || '<>'}`,
    );
    if (m.lastError) out.push(`${' '.repeat(21)}(${m.lastError})`);
    for (const r of m.recipients) out.push(`${' '.repeat(21)}${r.address} [${r.state}]${r.lastError ? ` (${r.lastError})` : ''}`);
    out.push('');
  }
  out.push(`-- ${rows.length} message${rows.length === 1 ? '' : 's'}`);
  return out.join('\n') + '\n';
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
      setTimeout(() => process.exit(2), cfg.node.shutdownTimeoutMs + cfg.shadow.timeoutMs + 5000).unref();
      relay.stop().then(
        () => process.exit(0),
        () => process.exit(2),
      );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });

program
  .command('check-config')
  .description('validate a configuration file and exit (0 valid, 1 invalid)')
  .requiredOption('-c, --config <file>', 'YAML configuration file')
  .action((o: { config: string }) => {
    const cfg = configOrExit(o.config);
    process.stdout.write(`${cfg.file}: ok (node ${cfg.node.name}, peers ${cfg.shadow.peers.map((p) => p.name).join(', ')})\n`);
  });

const queue = program.command('queue').description('inspect the spool');
queue
  .command('list')
  .description('every message in this node\'s spool, primary and shadow')
  .requiredOption('-c, --config <file>', 'YAML configuration file')
  .option('--json', 'print a JSON array')
  .action((o: { config: string; json?: boolean }) => {
    const cfg = configOrExit(o.config);
    let rows: MessageSummary[] = [];
    if (existsSync(path.join(cfg.node.dataDir, 'spool.db'))) {
      const spool = Spool.open(cfg.node.dataDir, { node: cfg.node.name, readonly: true });
      rows = spool.list();
      void spool.close();
    }
    process.stdout.write(o.json ? JSON.stringify(rows, null, 2) + '\n' : queueTable(rows));
  });

const certs = program.command('certs').description('certificates for the replication link');
certs
  .command('init')
  .description('create a CA and one certificate per node')
  .requiredOption('--out <dir>', 'output folder')
  .requiredOption('--nodes <names>', 'comma-separated node names, e.g. relay-a,relay-b')
  .action(async (o: { out: string; nodes: string }) => {
    const names = o.nodes.split(',').map((s) => s.trim()).filter(Boolean);
    for (const f of await writeCertSet(o.out, names)) process.stdout.write(f + '\n');
  });

program
  .command('demo')
  .description('run a loopback pair with generated certificates and a sink, and send a message through it')
  .option('--once', 'exit 0 once the message is delivered and purged on both nodes')
  .action(async (o: { once?: boolean }) => {
    const { runDemo } = await import('./demo.js');
    process.exitCode = await runDemo({ once: !!o.once });
  });

program.parseAsync(process.argv).catch((e: unknown) => {
  process.stderr.write(`shadowrelay: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(2);
});
