#!/usr/bin/env node
/**
 * The tools' command line (not part of the shipped package): `demo` runs a loopback pair
 * with a sink and sends one message through it (`npm run demo`); `sink` is the test next hop
 * that prints one JSON line per message (`npm run sink`, the compose pair's `sink` service).
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

program.parseAsync(process.argv).catch((e: unknown) => {
  process.stderr.write(`shadowrelay: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(2);
});
