/**
 * Files that hold secrets (private keys, the next hop's password, a config with an inline
 * password) should be readable by their owner only; a node warns at start when one is not.
 * It does not refuse to start: the operator may have a reason (a group-readable key for a
 * dedicated service group), and a refusal would take mail delivery down.
 */
import { statSync } from 'node:fs';
import type { ParsedConfig } from '../config/index.js';

export interface SecretFileWarning {
  key: string;
  file: string;
  mode: string;
}

export function secretFileWarnings(cfg: ParsedConfig): SecretFileWarning[] {
  const files: Array<[string, string]> = [['shadow.tls.key', cfg.shadow.tls.key]];
  if (cfg.smtp.tls) files.push(['smtp.tls.key', cfg.smtp.tls.key]);
  const auth = cfg.delivery.nextHop.auth;
  if (auth?.passFile) files.push(['delivery.nextHop.auth.passFile', auth.passFile]);
  if (auth?.pass) files.push(['delivery.nextHop.auth.pass (inline, in the config file)', cfg.file]);
  const out: SecretFileWarning[] = [];
  for (const [key, file] of files) {
    let mode: number;
    try {
      mode = statSync(file).mode;
    } catch {
      continue; // unreadable files are reported by the config check
    }
    if (mode & 0o077) out.push({ key, file, mode: (mode & 0o777).toString(8).padStart(4, '0') });
  }
  return out;
}
