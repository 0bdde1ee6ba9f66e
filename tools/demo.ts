/**
 * `npm run demo` (tools/cli.ts demo): the main job on loopback. Makes a CA and two node
 * certificates in a temp dir, starts relay-a and relay-b (each the other's shadow peer) and
 * a sink as next hop, sends one message through relay-a and prints its lifecycle.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import nodemailer from 'nodemailer';
import pino from 'pino';
import { loadConfig } from '../src/config/index.js';
import { Relay } from '../src/relay.js';
import { Sink } from './sink.js';
import { writePairConfigs } from './pair.js';
import { waitFor } from './wait.js';

export async function runDemo(opts: { once: boolean; out?: (line: string) => void }): Promise<number> {
  const say = opts.out ?? ((l: string) => process.stdout.write(l + '\n'));
  const dir = mkdtempSync(path.join(os.tmpdir(), 'shadowrelay-demo-'));
  const sink = new Sink();
  const relays: Relay[] = [];
  let release: () => void = () => {};
  sink.replyAfter = new Promise<void>((r) => (release = r));
  const cleanup = async () => {
    release();
    for (const r of relays) await r.stop();
    await sink.close();
  };
  try {
    const sinkPort = await sink.listen();
    const pair = await writePairConfigs({ dir, sinkPort });
    say(`[demo] work dir ${dir}`);
    say(`[demo] generated a CA and certificates for ${pair.names.join(', ')} in ${pair.certDir}`);
    say(`[demo] sink (next hop) listening on 127.0.0.1:${sinkPort}`);
    const logFiles: Record<string, string> = {};
    for (const name of [...pair.names].reverse()) {
      const cfg = loadConfig(pair.configs[name]!);
      logFiles[name] = path.join(dir, `${name}.log`);
      const log = pino({ level: 'info', base: { node: name } }, pino.destination({ dest: logFiles[name], sync: true }));
      const relay = await Relay.start(cfg, { log });
      relays.push(relay);
      say(
        `[demo] ${name}: SMTP on 127.0.0.1:${relay.addresses.smtp.port}, shadow link (mutual TLS) on 127.0.0.1:${relay.addresses.shadow.port}, admin on 127.0.0.1:${relay.addresses.admin.port}`,
      );
    }
    const [b, a] = relays as [Relay, Relay];
    await waitFor(() => a.shadow.anyPeerUp() && b.shadow.anyPeerUp(), 10000, 'peers to see each other');
    say(`[demo] ${a.config.node.name} and ${b.config.node.name} see each other over the shadow link`);

    const client = nodemailer.createTransport({ host: '127.0.0.1', port: a.addresses.smtp.port, secure: false, ignoreTLS: true });
    const info = (await client.sendMail({
      envelope: { from: 'alice@example.test', to: ['bob@example.test'] },
      raw: 'From: alice@example.test\r\nTo: bob@example.test\r\nSubject: shadowrelay demo\r\n\r\nHello through a shadowed pair.\r\n',
    })) as { response: string };
    client.close();
    say(`[demo] client <- ${info.response}`);
    const id = /queued as ([A-Z0-9]+)/.exec(info.response)?.[1];
    if (!id) throw new Error('no queue id in the reply');
    const shadowCopy = b.spool.get(id);
    say(`[demo] at the 250: ${b.config.node.name} holds the shadow copy: ${shadowCopy ? `yes (role ${shadowCopy.role}, origin ${shadowCopy.origin})` : 'NO'}`);
    release(); // let the sink answer the delivery
    await waitFor(() => sink.messages.length > 0, 30000, 'the sink to receive the message');
    say(`[demo] sink received it: ${sink.messages[0]!.raw.length} bytes for ${sink.messages[0]!.to.join(', ')}`);
    await waitFor(() => !a.spool.get(id) && !b.spool.get(id), 30000, 'both copies to be purged');
    say(`[demo] purged on ${a.config.node.name} and on ${b.config.node.name}: no copy remains`);
    say(`[demo] log lines for ${id} (grep ${id}):`);
    for (const name of pair.names) {
      for (const line of readFileSync(logFiles[name]!, 'utf8').split('\n')) {
        if (!line.includes(id)) continue;
        const j = JSON.parse(line) as Record<string, unknown>;
        const { level: _l, time: _t, pid: _p, hostname: _h, node, msg, id: _id, ...rest } = j;
        say(`  ${String(node).padEnd(8)} ${String(msg).padEnd(16)} ${JSON.stringify(rest)}`);
      }
    }
    if (!shadowCopy) return 1;
    if (opts.once) {
      say('[demo] ok');
      return 0;
    }
    say(`[demo] the pair keeps running: send mail to 127.0.0.1:${a.addresses.smtp.port} (relay-a) or 127.0.0.1:${b.addresses.smtp.port} (relay-b); Ctrl-C stops`);
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    return 0;
  } finally {
    await cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
}
