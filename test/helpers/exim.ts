/**
 * A throwaway Debian Exim (exim4-daemon-light) for interop tests: its own `-C` configuration,
 * spool, logs and mailboxes in a temp folder, its daemon on a 127.0.0.1 high port, never the
 * system's Exim and never port 25. .ci/run unpacks the package's binary into .cache/exim4/
 * (installing it would remove Postfix: both are Debian's mail-transport-agent) and creates the
 * Debian-exim user the binary was built to run as; a system-wide exim4 on PATH is used too.
 *
 * Two roles: a client that relays everything to smarthosts (manualroute), and a next hop
 * that delivers `localParts@domain` to mbox files (appendfile) and refuses other recipients
 * at RCPT (550, so the pair bounces them).
 */
import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { freePort, ROOT, which, runCommand, waitFor, type RunResult } from './index.js';

/** the user Debian's binary runs its deliveries as */
const EXIM_USER = 'Debian-exim';

export function eximBinary(): string | null {
  const cached = path.join(ROOT, '.cache', 'exim4', 'usr', 'sbin', 'exim4');
  if (existsSync(cached)) return cached;
  return which('exim4');
}

function ids(user: string): { uid: number; gid: number } | null {
  try {
    const uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }).trim());
    return { uid, gid };
  } catch {
    return null;
  }
}

/** Why a throwaway Exim cannot run here, or null when it can. */
export function eximUnavailable(): string | null {
  const bin = eximBinary();
  if (!bin) return 'Exim is not available (.ci/run unpacks Debian\'s exim4-daemon-light into .cache/exim4/)';
  if (process.getuid?.() !== 0) return 'a throwaway Exim needs root (it drops to the Debian-exim user for deliveries)';
  if (!ids(EXIM_USER)) return `the ${EXIM_USER} user does not exist (.ci/run creates it)`;
  try {
    execFileSync(bin, ['-C', '/dev/null', '-bV'], { stdio: 'ignore' });
  } catch (e) {
    return `${bin} -bV fails: ${(e as Error).message} (missing libraries? .ci/run installs them)`;
  }
  return null;
}

export interface EximOptions {
  name: string;
  /** relay everything to these (host, port) smarthosts, in order */
  smarthosts?: Array<{ host: string; port: number }>;
  /** deliver these local parts at `domain` to mbox files; refuse other recipients there */
  local?: { domain: string; localParts: string[] };
}

export interface EximInstance {
  port: number;
  dir: string;
  /** the main log so far */
  mainlog(): string;
  /** the mbox of a local part ('' while it has none) */
  mailbox(localPart: string): string;
  /** messages in Exim's queue */
  queueCount(): number;
  /** one queue run, forced (like `exim -qff`): every message tried now, retry times ignored */
  runQueue(): Promise<RunResult>;
  stop(): Promise<void>;
}

function config(o: EximOptions, dir: string, port: number, bin: string): string {
  const hosts = (o.smarthosts ?? []).map((h) => `${h.host}::${h.port}`).join(':');
  return `# throwaway instance written by shadowrelay's interop tests: loopback only, own spool and logs
primary_hostname = ${o.name}
# re-exec this binary (for deliveries, queue runs), not the compiled-in /usr/sbin/exim4
exim_path = ${bin}
qualify_domain = ${o.local?.domain ?? 'example.test'}
spool_directory = ${dir}/spool
log_file_path = ${dir}/log/%slog
pid_file_path = ${dir}/exim.pid
daemon_smtp_ports = ${port}
local_interfaces = <; 127.0.0.1
disable_ipv6 = true
# no STARTTLS: this instance has no certificate (the pair's own STARTTLS is tested elsewhere)
tls_advertise_hosts =
keep_environment =
host_lookup =
rfc1413_hosts =
dns_retrans = 1s
smtp_accept_queue_per_connection = 0
ignore_bounce_errors_after = 0s
timeout_frozen_after = 1d
received_header_text = Received: from \${sender_helo_name} ([\${sender_host_address}]) by \${primary_hostname} (Exim \${version_number}) with \${received_protocol} id \${message_exim_id}
domainlist local_domains = ${o.local?.domain ?? '!*'}
acl_smtp_rcpt = acl_check_rcpt

begin acl
acl_check_rcpt:
  deny    !hosts = 127.0.0.1
  accept  domains = +local_domains
          verify = recipient
  accept  domains = !+local_domains

begin routers
${
  o.local
    ? `local_user:
  driver = accept
  domains = +local_domains
  local_parts = ${o.local.localParts.join(' : ')}
  transport = local_mbox
  no_more
`
    : ''
}${
  hosts
    ? `smarthost:
  driver = manualroute
  domains = ! +local_domains
  transport = remote_smtp
  route_list = * ${hosts}
  # the smarthosts are on this machine: send to them anyway
  self = send
  no_more
`
    : ''
}
begin transports
remote_smtp:
  driver = smtp
  allow_localhost = true
  hosts_avoid_tls = *
local_mbox:
  driver = appendfile
  # $local_part_data: the local part as matched by local_parts (untainted)
  file = ${dir}/mail/\${local_part_data}
  user = ${EXIM_USER}
  group = ${EXIM_USER}
  mode = 0600

begin retry
*   *   F,1h,1m
`;
}

export async function startExim(o: EximOptions): Promise<EximInstance> {
  const user = ids(EXIM_USER)!;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sr-exim-'));
  for (const d of ['spool', 'log', 'mail']) mkdirSync(path.join(dir, d));
  // Exim re-execs itself as Debian-exim: a copy in the instance's own folder, because that
  // user may not search the folders above the checkout (a clone under a 0700 temp folder)
  const src = eximBinary()!;
  const bin = path.join(dir, 'exim4');
  copyFileSync(src, bin);
  chmodSync(bin, statSync(src).mode & 0o7777);
  const port = await freePort();
  const conf = path.join(dir, 'exim.conf');
  writeFileSync(conf, config(o, dir, port, bin));
  // Exim writes its spool and mailboxes as its own user
  for (const p of [dir, ...['spool', 'log', 'mail'].map((d) => path.join(dir, d))]) chownSync(p, user.uid, user.gid);
  const daemon: ChildProcess = spawn(bin, ['-C', conf, '-bdf', '-q1m'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  daemon.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<void>((r) => daemon.once('exit', () => r()));
  const mainlog = () => {
    try {
      return readFileSync(path.join(dir, 'log', 'mainlog'), 'utf8');
    } catch {
      return '';
    }
  };
  await waitFor(() => /daemon started/.test(mainlog()) || daemon.exitCode !== null, 15000, 'the Exim daemon to start');
  if (daemon.exitCode !== null) throw new Error(`exim did not start: ${stderr}${mainlog()}`);
  return {
    port,
    dir,
    mainlog,
    mailbox: (lp) => {
      try {
        return readFileSync(path.join(dir, 'mail', lp), 'utf8');
      } catch {
        return '';
      }
    },
    queueCount: () => {
      const input = path.join(dir, 'spool', 'input');
      if (!existsSync(input)) return 0;
      return readdirSync(input).filter((f) => f.endsWith('-H') && statSync(path.join(input, f)).isFile()).length;
    },
    runQueue: () => runCommand([bin, '-C', conf, '-qff'], 60000),
    stop: async () => {
      if (daemon.exitCode === null) {
        daemon.kill('SIGTERM');
        await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
        if (daemon.exitCode === null) daemon.kill('SIGKILL');
        await exited;
      }
      // delivery processes the daemon forked finish on their own within their timeouts; a
      // queue runner may still hold the spool for a moment
      await waitFor(() => !processesUnder(dir), 15000, 'Exim processes of the instance to end').catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Whether any process still runs with this instance's configuration. */
function processesUnder(dir: string): boolean {
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(path.join(dir, 'exim.conf'))) return true;
    } catch {
      /* gone meanwhile */
    }
  }
  return false;
}
