/**
 * Real MTAs for interop tests: a throwaway Postfix instance (its own config_directory and
 * queue_directory in a temp dir, listening on a loopback port, relayhost = a shadowrelay node)
 * and swaks. Both are optional: `mtaAvailability()` says why a test must skip.
 */
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { tmpDir, waitFor, freePort, which, runCommand, type RunResult } from './helpers.js';

export const POSTFIX = which('postfix');
export const SWAKS = which('swaks');

/** Why a throwaway Postfix cannot run here, or null when it can. */
export function postfixUnavailable(): string | null {
  if (!POSTFIX) return 'postfix is not installed (.ci/run installs it: apt-get install postfix)';
  if (process.getuid?.() !== 0) return 'postfix needs root to start its master process';
  if (spawnSync('id', ['postfix']).status !== 0) return 'the postfix user does not exist (install the Debian postfix package)';
  return null;
}

export function swaksUnavailable(): string | null {
  return SWAKS ? null : 'swaks is not installed (.ci/run installs it: apt-get install swaks)';
}

export function swaks(args: string[]): Promise<RunResult> {
  return runCommand([SWAKS!, '--timeout', '60', ...args], 90000);
}

export interface PostfixInstance {
  port: number;
  dir: string;
  maillog(): string;
  stop(): Promise<void>;
}

const MASTER_CF = (port: number) => `# throwaway instance for shadowrelay's interop tests: no chroot, loopback only
127.0.0.1:${port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
`;

/**
 * Starts a Postfix that accepts mail from loopback on its own port and relays everything to
 * `relayhost` (`[127.0.0.1]:port`), retrying deferred mail every second or two.
 */
export async function startPostfix(o: { relayhost: string; main?: Record<string, string> }): Promise<PostfixInstance> {
  const { dir, cleanup } = tmpDir('sr-postfix-');
  // Postfix's daemons run as the postfix user and must reach the queue below this folder
  chmodSync(dir, 0o755);
  const etc = path.join(dir, 'etc');
  const queue = path.join(dir, 'queue');
  const data = path.join(dir, 'data');
  for (const d of [etc, queue, data]) mkdirSync(d, { recursive: true });
  const pw = spawnSync('id', ['-u', 'postfix'], { encoding: 'utf8' });
  const gr = spawnSync('id', ['-g', 'postfix'], { encoding: 'utf8' });
  chownSync(data, Number(pw.stdout.trim()), Number(gr.stdout.trim()));
  const port = await freePort();
  const maillog = path.join(dir, 'maillog');
  const main: Record<string, string> = {
    compatibility_level: '3.6',
    queue_directory: queue,
    data_directory: data,
    mail_owner: 'postfix',
    setgid_group: 'postdrop',
    myhostname: 'postfix.example.test',
    mydomain: 'example.test',
    mydestination: '',
    local_transport: 'error:local delivery is disabled',
    alias_maps: '',
    alias_database: '',
    inet_interfaces: '127.0.0.1',
    inet_protocols: 'ipv4',
    mynetworks: '127.0.0.0/8',
    relayhost: o.relayhost,
    smtputf8_enable: 'yes',
    maillog_file: maillog,
    maillog_file_prefixes: dir,
    queue_run_delay: '1s',
    minimal_backoff_time: '1s',
    maximal_backoff_time: '2s',
    smtp_connect_timeout: '10s',
    biff: 'no',
    ...(o.main ?? {}),
  };
  writeFileSync(path.join(etc, 'main.cf'), Object.entries(main).map(([k, v]) => `${k} = ${v}`).join('\n') + '\n');
  writeFileSync(path.join(etc, 'master.cf'), MASTER_CF(port));
  const started = await runCommand([POSTFIX!, '-c', etc, 'start']);
  const readLog = () => (existsSync(maillog) ? readFileSync(maillog, 'utf8') : '');
  if (started.code !== 0) {
    cleanup();
    throw new Error(`postfix -c ${etc} start failed (${started.code}): ${started.stderr}${readLog()}`);
  }
  const stop = async () => {
    await runCommand([POSTFIX!, '-c', etc, 'stop']);
    // `stop` waits for the master; make sure nothing of this instance is left
    const pidFile = path.join(queue, 'pid', 'master.pid');
    if (existsSync(pidFile)) {
      const pid = Number(readFileSync(pidFile, 'utf8').trim());
      try {
        if (pid > 0) process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitFor(() => readLog().includes('daemon started'), 20000, 'postfix master to start');
    await new Promise<void>((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve();
      });
      s.on('error', reject);
    });
  } catch (e) {
    await stop();
    throw e;
  }
  return { port, dir, maillog: readLog, stop };
}
