#!/usr/bin/env node
/**
 * The tools' command line (not part of the shipped package): `demo` runs a loopback pair
 * with a sink and sends one message through it (`npm run demo`); `sink` is the test next hop
 * that prints one JSON line per message (`npm run sink`, the compose pair's `sink` service);
 * `scale-sim` is the placement simulation at 100 relays (`npm run scale-sim`).
 */
import { Command } from 'commander';
import { parseHostPort } from '../src/base/net.js';
import { headerSection } from '../src/base/message.js';

const program = new Command();
program.name('shadowrelay-tools').description('demo and test tools for shadowrelay');

program
  .command('sink')
  .description('a test SMTP sink: accepts every message and prints one JSON line per message (for trying a pair)')
  .option('--listen <host:port>', 'address to listen on', '127.0.0.1:2600')
  .action(async (o: { listen: string }) => {
    const hp = parseHostPort(o.listen);
    if (!hp) {
      process.stderr.write(`shadowrelay: --listen: expected "host:port", got "${o.listen}"\n`);
      process.exit(1);
    }
    const { Sink } = await import('./sink.js');
    const sink = new Sink();
    sink.on('message', (m: { from: string; to: string[]; raw: Buffer }) => {
      const subject = /^Subject:[ \t]*(.*)$/im.exec(headerSection(m.raw).text)?.[1] ?? '';
      process.stdout.write(JSON.stringify({ time: new Date().toISOString(), from: m.from, to: m.to, size: m.raw.length, subject }) + '\n');
      sink.messages.length = 0; // long-running: keep nothing
    });
    const port = await sink.listen(hp.port, hp.host);
    process.stdout.write(JSON.stringify({ msg: 'sink listening', host: hp.host, port }) + '\n');
    const stop = () => void sink.close().then(() => process.exit(0));
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });

program
  .command('demo')
  .description('run a loopback pair with generated certificates and a sink, and send a message through it')
  .option('--once', 'exit 0 once the message is delivered and purged on both nodes')
  .action(async (o: { once?: boolean }) => {
    const { runDemo } = await import('./demo.js');
    process.exitCode = await runDemo({ once: !!o.once });
  });

program
  .command('scale-sim')
  .description('placement on paper: N relays in zones, one node and then a zone lost (README "Scale-out")')
  .option('--nodes <n>', 'relays', '100')
  .option('--zones <n>', 'failure domains', '3')
  .option('--queued <n>', 'messages queued on each relay', '1000')
  .option('--placement <p>', 'preferRemote | remoteOnly | any', 'preferRemote')
  .option('--json', 'print the figures as JSON')
  .action(async (o: { nodes: string; zones: string; queued: string; placement: string; json?: boolean }) => {
    const { simulate, report, DEFAULTS } = await import('./scale-sim.js');
    const placement = o.placement as 'preferRemote' | 'remoteOnly' | 'any';
    if (!['preferRemote', 'remoteOnly', 'any'].includes(placement)) {
      process.stderr.write(`scale-sim: --placement must be preferRemote, remoteOnly or any\n`);
      process.exit(1);
    }
    const r = simulate({ ...DEFAULTS, nodes: Number(o.nodes), zones: Number(o.zones), queued: Number(o.queued), placement });
    process.stdout.write(o.json ? JSON.stringify(r, null, 2) + '\n' : report(r) + '\n');
  });

program.parseAsync(process.argv).catch((e: unknown) => {
  process.stderr.write(`shadowrelay: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(2);
});
