/**
 * certificates — when the node's certificates expire: the replication link's own
 * certificate and its CA (when one of them expires, the link fails and every message gets
 * 451) and the STARTTLS certificate. Read from the TLS material in force (a reload renews
 * it), for `shadowrelay_certificate_expiry_seconds`, the dashboard and `status`.
 */
import { X509Certificate } from 'node:crypto';
import type { TlsMaterial } from '../config/index.js';

export type CertificateName = 'shadow_cert' | 'shadow_ca' | 'smtp_cert';

export interface CertificateExpiry {
  certificate: CertificateName;
  subject: string;
  /** wall time (ms) of notAfter; for a bundle, the earliest of its certificates */
  notAfter: number;
  secondsLeft: number;
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** The certificate of a PEM bundle that expires first (a CA file may hold several). */
function earliest(pem: Buffer): { subject: string; notAfter: number } | null {
  let best: { subject: string; notAfter: number } | null = null;
  for (const block of pem.toString('utf8').match(PEM_CERT) ?? []) {
    try {
      const c = new X509Certificate(block);
      const notAfter = Date.parse(c.validTo);
      if (!best || notAfter < best.notAfter) best = { subject: c.subject.replace(/\n/g, ', '), notAfter };
    } catch {
      /* not a certificate the config check would have let through; nothing to report */
    }
  }
  return best;
}

/** Parses each certificate once per TLS material (a reload brings new buffers). */
export class CertificateWatch {
  private parsed: Array<{ certificate: CertificateName; subject: string; notAfter: number }> = [];

  constructor(tls: TlsMaterial) {
    this.set(tls);
  }

  set(tls: TlsMaterial): void {
    const items: Array<[CertificateName, Buffer | undefined]> = [
      ['shadow_cert', tls.shadow.cert],
      ['shadow_ca', tls.shadow.ca],
      ['smtp_cert', tls.smtp?.cert],
    ];
    this.parsed = items.flatMap(([certificate, pem]) => {
      const e = pem && earliest(pem);
      return e ? [{ certificate, ...e }] : [];
    });
  }

  list(now = Date.now()): CertificateExpiry[] {
    return this.parsed.map((p) => ({ ...p, secondsLeft: Math.round((p.notAfter - now) / 1000) }));
  }
}
