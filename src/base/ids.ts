/**
 * Queue ids: unique across the pair (a shadow copy keeps its primary's id), roughly
 * time-ordered so `queue list` sorts naturally, and short enough to grep like Postfix's.
 */
import { randomBytes } from 'node:crypto';

export function newQueueId(now: number = Date.now()): string {
  return now.toString(16).toUpperCase().padStart(11, '0') + randomBytes(5).toString('hex').toUpperCase();
}
