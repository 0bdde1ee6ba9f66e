/**
 * Password hashes for `smtp.auth.users` (PHC string format), made by `shadowrelay hash-password`.
 *
 * - scrypt (node:crypto, the default): `$scrypt$ln=15,r=8,p=1$<salt>$<hash>` (unpadded base64).
 *   N = 2^15, r = 8 → 32 MiB and ~0.1 s per verification on this kind of machine.
 * - argon2id / argon2i / argon2d: the standard `$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>`
 *   (as Dovecot or the argon2 CLI write them), verified with hash-wasm (WebAssembly, no build).
 * Comparisons are constant-time; a verification for an unknown user runs against a dummy
 * hash so that the answer time does not reveal which user names exist.
 */
import { scrypt as scryptCb, randomBytes, timingSafeEqual, type ScryptOptions } from 'node:crypto';
import { argon2id, argon2Verify } from 'hash-wasm';

const SCRYPT_RE = /^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]{16,})\$([A-Za-z0-9+/]{32,})$/;
const ARGON2_RE = /^\$argon2(id|i|d)\$v=19\$m=\d{1,8},t=\d{1,3},p=\d{1,3}\$[A-Za-z0-9+/]{16,}\$[A-Za-z0-9+/]{16,}$/;

export type HashAlgorithm = 'scrypt' | 'argon2id';

/** Why a string is not a password hash we can verify, or null when it is one. */
export function passwordHashProblem(s: string): string | null {
  const m = SCRYPT_RE.exec(s);
  if (m) {
    const [ln, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])];
    if (ln < 10 || ln > 22 || r < 1 || r > 32 || p < 1 || p > 16) return 'scrypt parameters out of range (ln 10..22, r 1..32, p 1..16)';
    return null;
  }
  if (ARGON2_RE.test(s)) return null;
  return 'expected a hash made by `shadowrelay hash-password` ($scrypt$… or $argon2id$…)';
}

const b64 = (b: Buffer) => b.toString('base64').replace(/=+$/, '');

function scrypt(password: Buffer, salt: Buffer, keylen: number, o: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => scryptCb(password, salt, keylen, o, (err, key) => (err ? reject(err) : resolve(key))));
}

function scryptOptions(ln: number, r: number, p: number): ScryptOptions {
  const N = 2 ** ln;
  // node refuses anything above maxmem (32 MiB by default), which N=2^15, r=8 just reaches
  return { N, r, p, maxmem: 128 * N * r * p + 16 * 1024 * 1024 };
}

export async function hashPassword(password: string, algorithm: HashAlgorithm = 'scrypt'): Promise<string> {
  const salt = randomBytes(16);
  if (algorithm === 'argon2id') {
    // RFC 9106's second recommended option (64 MiB, t=3, p=4)
    return argon2id({ password, salt, parallelism: 4, iterations: 3, memorySize: 65536, hashLength: 32, outputType: 'encoded' });
  }
  const [ln, r, p] = [15, 8, 1];
  const key = await scrypt(Buffer.from(password, 'utf8'), salt, 32, scryptOptions(ln, r, p));
  return `$scrypt$ln=${ln},r=${r},p=${p}$${b64(salt)}$${b64(key)}`;
}

/** True when `password` matches `hash`. Never throws for a wrong password; throws for a malformed hash. */
export async function verifyPassword(password: string, hash: string): Promise<boolean> {
  const m = SCRYPT_RE.exec(hash);
  if (m) {
    const salt = Buffer.from(m[4]!, 'base64');
    const want = Buffer.from(m[5]!, 'base64');
    const got = await scrypt(Buffer.from(password, 'utf8'), salt, want.length, scryptOptions(Number(m[1]), Number(m[2]), Number(m[3])));
    return got.length === want.length && timingSafeEqual(got, want);
  }
  if (ARGON2_RE.test(hash)) return argon2Verify({ password, hash });
  throw new Error('unsupported password hash');
}
