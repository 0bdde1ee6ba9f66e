/**
 * certs — makes a private CA and node certificates for the replication link (and STARTTLS).
 *
 * Implementation summary:
 * - ECDSA P-256 keys from Node's WebCrypto, X.509 from @peculiar/x509 (no openssl binary).
 * - A node certificate names the node in CN and in a DNS SAN (the shadow link checks that
 *   name), plus localhost / 127.0.0.1 / ::1 so a loopback pair works out of the box.
 * - Keys are written with mode 0600.
 */
// @peculiar/x509 resolves its ASN.1 types through tsyringe, which needs this polyfill
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { webcrypto, randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const crypto = webcrypto as unknown as Crypto;
x509.cryptoProvider.set(crypto);

const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY = 24 * 3600 * 1000;

export interface Pem {
  cert: string;
  key: string;
}

export interface CertSet {
  ca: Pem;
  nodes: Record<string, Pem>;
}

async function keyPem(key: CryptoKey): Promise<string> {
  const der = await crypto.subtle.exportKey('pkcs8', key);
  const b64 = Buffer.from(der).toString('base64').replace(/(.{64})/g, '$1\n');
  return `-----BEGIN PRIVATE KEY-----\n${b64.trim()}\n-----END PRIVATE KEY-----\n`;
}

function serial(): string {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f; // positive
  return b.toString('hex');
}

export interface NodeCertOptions {
  /** extra DNS names for the SAN */
  dnsNames?: string[];
  validDays?: number;
}

/** Makes a CA and one certificate per node name, all in memory. */
export async function makeCertSet(nodeNames: string[], opts: NodeCertOptions = {}): Promise<CertSet> {
  const now = Date.now();
  const days = opts.validDays ?? 825;
  const caKeys = (await crypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as CryptoKeyPair;
  const caCert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: 'CN=shadowrelay CA',
    notBefore: new Date(now - DAY),
    notAfter: new Date(now + days * DAY),
    keys: caKeys,
    signingAlgorithm: alg,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });
  const nodes: Record<string, Pem> = {};
  for (const name of nodeNames) {
    const keys = (await crypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as CryptoKeyPair;
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial(),
      subject: `CN=${name}`,
      issuer: caCert.subject,
      notBefore: new Date(now - DAY),
      notAfter: new Date(now + days * DAY),
      publicKey: keys.publicKey,
      signingKey: caKeys.privateKey,
      signingAlgorithm: alg,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
        // one certificate serves both ends of the mutual-TLS link
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
        new x509.SubjectAlternativeNameExtension([
          { type: 'dns', value: name },
          ...(opts.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
          { type: 'dns', value: 'localhost' },
          { type: 'ip', value: '127.0.0.1' },
          { type: 'ip', value: '::1' },
        ]),
        await x509.AuthorityKeyIdentifierExtension.create(caCert),
      ],
    });
    nodes[name] = { cert: cert.toString('pem') + '\n', key: await keyPem(keys.privateKey) };
  }
  return { ca: { cert: caCert.toString('pem') + '\n', key: await keyPem(caKeys.privateKey) }, nodes };
}

/** Writes `ca.crt`, `ca.key`, `<node>.crt`, `<node>.key` into `dir`. Returns the paths. */
export async function writeCertSet(dir: string, nodeNames: string[], opts: NodeCertOptions = {}): Promise<string[]> {
  mkdirSync(dir, { recursive: true });
  const set = await makeCertSet(nodeNames, opts);
  const written: string[] = [];
  const put = (file: string, text: string, mode: number) => {
    const p = path.join(dir, file);
    writeFileSync(p, text, { mode });
    written.push(p);
  };
  put('ca.crt', set.ca.cert, 0o644);
  put('ca.key', set.ca.key, 0o600);
  for (const [name, pem] of Object.entries(set.nodes)) {
    put(`${name}.crt`, pem.cert, 0o644);
    put(`${name}.key`, pem.key, 0o600);
  }
  return written;
}
