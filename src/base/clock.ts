/**
 * Time for durations. Timeouts, promotion, reconcile waits and lockouts are measured on a monotonic
 * clock: an NTP step of the wall clock must neither promote a live primary's copies nor end
 * a reconcile wait early. Wall time (Date.now) is only for what is shown or stored as a date.
 */
import { performance } from 'node:perf_hooks';

/** Milliseconds on a monotonic clock (arbitrary origin; only differences mean anything). */
export function monotonicMs(): number {
  return performance.now();
}
