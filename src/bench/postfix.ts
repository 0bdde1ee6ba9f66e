/**
 * A throwaway Debian Postfix configured as a loopback relay for the side-by-side run: its
 * own config_directory and queue_directory in a temp folder, smtpd on a 127.0.0.1 high port,
 * relayhost = the benchmark's sink, every other setting (fsync of queue files, in_flow_delay,
 * concurrency) at Postfix's defaults. No chroot (the temp folder is not set up for one).
 * Started with `postfix -c DIR start`, stopped with `postfix -c DIR stop`, folder removed.
 */
import { chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { freePort } from '../core/net.js';
import { findBinary, isRoot, processTree, waitForPort } from './procs.js';

export interface PostfixInstance {
  port: number;
  version: string;
  /** the master process and its children right now */
  pids(): number[];
  stop(): Promise<void>;
}

/** Why Postfix cannot be run here, or null when it can. */
export function postfixUnavailable(): string | null {
  if (!findBinary('postfix') || !findBinary('postconf')) return 'Postfix is not installed (Debian: apt-get install postfix)';
  if (!isRoot()) return 'starting a throwaway Postfix needs root (its daemons drop to the postfix user)';
  try {
    execFileSync('id', ['postfix'], { stdio: 'ignore' });
  } catch {
    return 'the postfix user does not exist';
  }
  return null;
}

const MASTER_CF = (port: number) => `# written by the shadowrelay benchmark
127.0.0.1:${port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`;

function postfixCmd(dir: string, action: string): string {
  // postfix only prints its diagnostics on a terminal; they also land in maillog
  return execFileSync(findBinary('postfix')!, ['-c', path.join(dir, 'etc'), action], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

export async function startPostfix(sinkPort: number): Promise<PostfixInstance> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sr-bench-postfix-'));
  // the postfix user must be able to reach its queue below this folder
  chmodSync(dir, 0o755);
  const etc = path.join(dir, 'etc');
  const data = path.join(dir, 'data');
  mkdirSync(etc);
  mkdirSync(path.join(dir, 'queue'));
  mkdirSync(data);
  chownSync(data, Number(execFileSync('id', ['-u', 'postfix'], { encoding: 'utf8' }).trim()), 0);
  const port = await freePort();
  const maillog = path.join(dir, 'maillog');
  writeFileSync(
    path.join(etc, 'main.cf'),
    [
      '# written by the shadowrelay benchmark: a loopback relay with default queue behaviour',
      'compatibility_level = 3.6',
      `queue_directory = ${dir}/queue`,
      `data_directory = ${data}`,
      'mail_owner = postfix',
      'setgid_group = postdrop',
      'myhostname = postfix.bench.test',
      'mydestination =',
      'relay_domains =',
      'local_recipient_maps =',
      'alias_maps =',
      'alias_database =',
      'inet_interfaces = 127.0.0.1',
      'inet_protocols = ipv4',
      'mynetworks = 127.0.0.0/8',
      'smtpd_relay_restrictions = permit_mynetworks, reject',
      `relayhost = [127.0.0.1]:${sinkPort}`,
      `maillog_file_prefixes = ${dir}`,
      `maillog_file = ${maillog}`,
      '',
    ].join('\n'),
  );
  writeFileSync(path.join(etc, 'master.cf'), MASTER_CF(port));
  const remove = () => rmSync(dir, { recursive: true, force: true });
  let version = '';
  try {
    version = execFileSync(findBinary('postconf')!, ['-c', etc, '-h', 'mail_version'], { encoding: 'utf8' }).trim();
    postfixCmd(dir, 'start');
    await waitForPort(port, 20000);
  } catch (e) {
    let tail = '';
    try {
      tail = readFileSync(maillog, 'utf8').trim().split('\n').slice(-5).join('\n');
    } catch {
      /* no log yet */
    }
    try {
      postfixCmd(dir, 'abort');
    } catch {
      /* not running */
    }
    remove();
    throw new Error(`Postfix did not start: ${(e as Error).message}\n${tail}`);
  }
  const masterPid = (): number => {
    try {
      return Number(readFileSync(path.join(dir, 'queue', 'pid', 'master.pid'), 'utf8').trim());
    } catch {
      return 0;
    }
  };
  const pid0 = masterPid();
  let stopping: Promise<void> | undefined;
  return {
    port,
    version,
    pids: () => (pid0 ? processTree(pid0) : []),
    stop: () =>
      (stopping ??= (async () => {
      try {
        postfixCmd(dir, 'stop');
      } catch {
        /* already down */
      }
      // `postfix stop` returns once master is gone; make sure no child lingers
      const end = Date.now() + 10000;
      while (pid0 && processTree(pid0).length > 0 && isAlive(pid0) && Date.now() < end) {
        await new Promise((r) => setTimeout(r, 100));
      }
      if (pid0 && isAlive(pid0)) {
        try {
          process.kill(pid0, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      remove();
      })()),
  };
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
