/** pino logger: one JSON line per lifecycle step, each carrying the node name. */
import pino, { type Logger, type DestinationStream } from 'pino';

export type { Logger } from 'pino';

export function createLogger(node: string, level: string, dest?: DestinationStream): Logger {
  return pino({ level, base: { node }, timestamp: pino.stdTimeFunctions.isoTime }, dest ?? pino.destination({ sync: false }));
}
