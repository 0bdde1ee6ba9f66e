/**
 * Configuration reload (SIGHUP) — deciding and preparing; the composition root applies.
 *
 * Implementation summary:
 * - A reload is all or nothing: the new file must validate, every certificate and key it
 *   names must load into a TLS context, and no key that needs a restart may differ. Otherwise
 *   the reload is refused with the reason logged and the running configuration stays whole.
 * - Live: smtp limits, hostname, allowedNetworks, smtp.tls (STARTTLS certificates), the
 *   replication link's certificates (shadow.tls), shadow.timeoutMs and onFailure, the next
 *   hop and delivery settings, admin token, log level.
 * - Restart only: node.*, spool.*, the three listen addresses, shadow.peers, heartbeat,
 *   promotion, reconcile and shadow-age timers, log.format, smtp.maxBytesInFlight.
 */
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import type { Config } from '../config/index.js';

/** Dotted keys whose change needs a restart; compared as JSON. */
export const RESTART_ONLY: ReadonlyArray<string> = [
  'node',
  'smtp.listen',
  'shadow.listen',
  'shadow.peers',
  'shadow.heartbeatMs',
  'shadow.promoteAfterMs',
  'shadow.maxShadowAgeMs',
  'shadow.reconcileIntervalMs',
  'spool',
  'admin.listen',
  'log.format',
  'smtp.maxBytesInFlight',
];

function at(cfg: unknown, dotted: string): unknown {
  return dotted.split('.').reduce<unknown>((o, k) => (o && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined), cfg);
}

/** The restart-only keys that differ between the running and the new configuration. */
export function restartOnlyChanges(running: Config, next: Config): string[] {
  return RESTART_ONLY.filter((k) => JSON.stringify(at(running, k)) !== JSON.stringify(at(next, k)));
}

export interface TlsMaterial {
  shadow: { ca: Buffer; cert: Buffer; key: Buffer };
  smtp?: { cert: Buffer; key: Buffer };
}

/**
 * Reads every certificate and key the configuration names and proves they make a TLS context
 * (a key that does not match its certificate fails here, not halfway through applying).
 */
export function loadTlsMaterial(cfg: Config): TlsMaterial {
  const read = (key: string, file: string) => {
    try {
      return readFileSync(file);
    } catch (e) {
      throw new Error(`${key}: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  };
  const shadow = { ca: read('shadow.tls.ca', cfg.shadow.tls.ca), cert: read('shadow.tls.cert', cfg.shadow.tls.cert), key: read('shadow.tls.key', cfg.shadow.tls.key) };
  try {
    tls.createSecureContext(shadow);
  } catch (e) {
    throw new Error(`shadow.tls: ${(e as Error).message}`);
  }
  let smtp: TlsMaterial['smtp'];
  if (cfg.smtp.tls) {
    smtp = { cert: read('smtp.tls.cert', cfg.smtp.tls.cert), key: read('smtp.tls.key', cfg.smtp.tls.key) };
    try {
      tls.createSecureContext(smtp);
    } catch (e) {
      throw new Error(`smtp.tls: ${(e as Error).message}`);
    }
  }
  return { shadow, smtp };
}
