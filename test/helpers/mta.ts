/**
 * Real MTAs for interop tests: a throwaway Postfix instance (its own config_directory and
 * queue_directory in a temp dir, listening on a loopback port, relayhost = a shadowrelay node)
 * and swaks. Both are optional: `mtaAvailability()` says why a test must skip.
 */
import { which, runCommand, type RunResult } from './index.js';
import { startPostfix as startThrowawayPostfix, postfixUnavailable, type PostfixInstance } from '../../tools/bench/postfix.js';

export const POSTFIX = which('postfix');
export const SWAKS = which('swaks');

/** Why a throwaway Postfix cannot run here, or null when it can. */
export { postfixUnavailable };

export function swaksUnavailable(): string | null {
  return SWAKS ? null : 'swaks is not installed (.ci/run installs it: apt-get install swaks)';
}

export function swaks(args: string[]): Promise<RunResult> {
  return runCommand([SWAKS!, '--timeout', '60', ...args], 90000);
}

export type { PostfixInstance } from '../../tools/bench/postfix.js';

/**
 * Starts a Postfix that accepts mail from loopback on its own port and relays everything to
 * `relayhost` (`[127.0.0.1]:port`), retrying deferred mail every second or two.
 */
export function startPostfix(o: { relayhost: string; main?: Record<string, string> }): Promise<PostfixInstance> {
  return startThrowawayPostfix({
    relayhost: o.relayhost,
    main: {
      mydomain: 'example.test',
      local_transport: 'error:local delivery is disabled',
      smtputf8_enable: 'yes',
      queue_run_delay: '1s',
      minimal_backoff_time: '1s',
      maximal_backoff_time: '2s',
      smtp_connect_timeout: '10s',
      biff: 'no',
      ...(o.main ?? {}),
    },
  });
}
