/**
 * pino logger: one line per lifecycle step of a message, each carrying the node name and the
 * queue id (`id`), so `grep <id>` tells a message's whole story like Postfix's maillog:
 *   connect → client → spooled → accepted (shadow peer, shadow ms) → delivered | deferred |
 *   bounced (to, relay, delay, dsn, response) → removed; on the peer: shadow stored →
 *   shadow discarded; operator actions: held, released, retry requested, deleted by the operator.
 * Format: JSON lines, or pino-pretty (worker-thread transport) when stdout is a terminal
 * (`log.format: auto`) or when asked (`pretty`). The level can change live (reload).
 */
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
  return pino(opts, pino.destination({ sync: false }));
}
