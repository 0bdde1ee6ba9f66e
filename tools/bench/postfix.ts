/**
 * A throwaway Debian Postfix: its own config_directory and queue_directory in a temp folder,
 * `env` passed to every one of its daemons (import_environment),
 * smtpd on a 127.0.0.1 high port, `relayhost` as given, every other setting (fsync of queue
 * files, in_flow_delay, concurrency) at Postfix's defaults unless `main` overrides it. No
 * chroot (the temp folder is not set up for one). Started with `postfix -c DIR start`,
 * stopped with `postfix -c DIR stop`, folder removed. Used by the benchmark (Postfix side by
 * side with shadowrelay) and by the interop tests (test/mta.ts).
 */
import { chownSync, chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { freePort } from '../net.js';
import { findBinary, isRoot, processTree, waitForPort } from './procs.js';

export interface PostfixInstance {
  port: number;
  dir: string;
  version: string;
  /** the instance's log so far */
  maillog(): string;
  /** the master process and its children right now */
  pids(): number[];
  stop(): Promise<void>;
}

/** Why a throwaway Postfix cannot run here, or null when it can. */
export function postfixUnavailable(): string | null {
  if (!findBinary('postfix') || !findBinary('postconf')) return 'Postfix is not installed (Debian: apt-get install postfix)';
  if (!isRoot()) return 'starting a throwaway Postfix needs root (its daemons drop to the postfix user)';
  try {
    execFileSync('id', ['postfix'], { stdio: 'ignore' });
  } catch {
    return 'the postfix user does not exist (install the Debian postfix package)';
  }
  return null;
}

const MASTER_CF = (port: number) => `# throwaway instance written by shadowrelay (benchmark, interop tests): no chroot, loopback only
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
proxywrite unix - - n - 1 proxymap
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

function postfixCmd(etc: string, action: string, env?: Record<string, string>): string {
  // postfix only prints its diagnostics on a terminal; they also land in maillog
  return execFileSync(findBinary('postfix')!, ['-c', etc, action], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    env: env ? { ...process.env, ...env } : process.env,
  });
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Starts a Postfix that accepts mail from loopback on its own port and relays everything to
 * `relayhost` (e.g. `[127.0.0.1]:2525`). `main` adds or overrides main.cf parameters.
 */
export async function startPostfix(o: { relayhost: string; main?: Record<string, string>; env?: Record<string, string> }): Promise<PostfixInstance> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sr-postfix-'));
  // the postfix user must be able to reach its queue below this folder
  chmodSync(dir, 0o755);
  const etc = path.join(dir, 'etc');
  const queue = path.join(dir, 'queue');
  const data = path.join(dir, 'data');
  for (const d of [etc, queue, data]) mkdirSync(d);
  const id = (flag: string) => Number(execFileSync('id', [flag, 'postfix'], { encoding: 'utf8' }).trim());
  chownSync(data, id('-u'), id('-g'));
  const port = await freePort();
  const maillog = path.join(dir, 'maillog');
  const main: Record<string, string> = {
    compatibility_level: '3.6',
    queue_directory: queue,
    data_directory: data,
    mail_owner: 'postfix',
    setgid_group: 'postdrop',
    myhostname: 'postfix.example.test',
    mydestination: '',
    relay_domains: '',
    local_recipient_maps: '',
    alias_maps: '',
    alias_database: '',
    inet_interfaces: '127.0.0.1',
    inet_protocols: 'ipv4',
    mynetworks: '127.0.0.0/8',
    smtpd_relay_restrictions: 'permit_mynetworks, reject',
    relayhost: o.relayhost,
    maillog_file_prefixes: dir,
    maillog_file: maillog,
    // the master passes on only what import_environment names (the benchmark's fsync shim)
    ...(o.env ? { import_environment: `MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C ${Object.keys(o.env).join(' ')}` } : {}),
    ...(o.main ?? {}),
  };
  writeFileSync(path.join(etc, 'main.cf'), Object.entries(main).map(([k, v]) => `${k} = ${v}`).join('\n') + '\n');
  writeFileSync(path.join(etc, 'master.cf'), MASTER_CF(port));
  const readLog = () => (existsSync(maillog) ? readFileSync(maillog, 'utf8') : '');
  const remove = () => rmSync(dir, { recursive: true, force: true });
  let version = '';
  try {
    version = execFileSync(findBinary('postconf')!, ['-c', etc, '-h', 'mail_version'], { encoding: 'utf8' }).trim();
    postfixCmd(etc, 'start', o.env);
    await waitForPort(port, 20000);
  } catch (e) {
    const tail = readLog().trim().split('\n').slice(-5).join('\n');
    try {
      postfixCmd(etc, 'abort');
    } catch {
      /* not running */
    }
    remove();
    throw new Error(`Postfix did not start: ${(e as Error).message}\n${tail}`);
  }
  let pid0 = 0;
  try {
    pid0 = Number(readFileSync(path.join(queue, 'pid', 'master.pid'), 'utf8').trim());
  } catch {
    /* no pid file: pids() stays empty */
  }
  let stopping: Promise<void> | undefined;
  return {
    port,
    dir,
    version,
    maillog: readLog,
    pids: () => (pid0 && isAlive(pid0) ? processTree(pid0) : []),
    stop: () =>
      (stopping ??= (async () => {
        try {
          postfixCmd(etc, 'stop');
        } catch {
          /* already down */
        }
        // `postfix stop` waits for the master; make sure nothing of this instance is left
        const end = Date.now() + 10000;
        while (pid0 && isAlive(pid0) && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
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
