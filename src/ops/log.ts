/**
 * pino logger: one line per lifecycle step of a message, each carrying the node name and the
 * queue id (`id`), so `grep <id>` tells a message's whole story like Postfix's maillog:
 *   connect → client → spooled → accepted (shadow peer, shadow ms) → delivered | deferred |
 *   bounced (to, relay, delay, dsn, response) → removed; on the peer: shadow stored →
 *   shadow discarded; operator actions: held, released, retry requested, deleted by the operator.
 * Format: JSON lines, or pino-pretty (worker-thread transport) when stdout is a terminal
 * (`log.format: auto`) or when asked (`pretty`). The level can change live (reload).
 */
import { writeSync } from 'node:fs';
import pino, { type Logger, type DestinationStream } from 'pino';

export type { Logger } from 'pino';

export type LogFormat = 'auto' | 'json' | 'pretty';

export function createLogger(node: string, level: string, dest?: DestinationStream, format: LogFormat = 'json'): Logger {
  const opts = { level, base: { node }, timestamp: pino.stdTimeFunctions.isoTime };
  if (dest) return pino(opts, dest);
  const pretty = format === 'pretty' || (format === 'auto' && process.stdout.isTTY === true);
  if (pretty) {
    return pino({
      ...opts,
      transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:standard', ignore: 'pid,hostname' } },
    });
  }
  return pino(opts, new TurnBatchedDestination(1));
}

/**
 * Log lines go out in one write per event-loop turn. Why: one write per line (sonic-boom
 * sync) or one thread-pool round trip per burst (sonic-boom async) cost 8-28 % of a node's
 * CPU under load; a turn's lines (often dozens) now cost one write(2) from the main thread.
 * What is lost to a kill -9 is at most the current turn's lines; on a normal exit (and
 * process.exit after a fatal error) they are flushed synchronously.
 */
export class TurnBatchedDestination implements DestinationStream {
  private lines: string[] = [];
  private scheduled = false;
  private retry: NodeJS.Timeout | undefined;

  constructor(private readonly fd: number) {
    process.once('exit', () => this.flushSync(true));
  }

  write(line: string): void {
    this.lines.push(line);
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.flushSync(false);
    });
  }

  /** `final`: at exit, so a full pipe is waited on instead of retried later. */
  flushSync(final: boolean): void {
    if (this.lines.length === 0) return;
    let buf = Buffer.from(this.lines.join(''));
    this.lines = [];
    while (buf.length > 0) {
      try {
        buf = buf.subarray(writeSync(this.fd, buf));
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        // a non-blocking pipe that is full: keep the rest in order and try again shortly
        if (code === 'EAGAIN' && !final) {
          this.lines.unshift(buf.toString());
          this.retry ??= setTimeout(() => {
            this.retry = undefined;
            this.flushSync(false);
          }, 5);
          return;
        }
        if (code === 'EAGAIN') continue;
        // stdout closed (EPIPE) or gone: logging must never take the relay down
        return;
      }
    }
  }
}
