/**
 * config — loads the YAML configuration, validates it against a schema, fills defaults.
 *
 * Implementation summary:
 * - One file per node. Keys are the public interface (see README "Configuration").
 * - Every error names the file and the dotted key (`smtp.maxMessageSize: ...`) so an
 *   operator can fix it without reading code; unknown keys are errors (typos are common).
 * - Relative paths (dataDir, certificates) resolve against the folder of the config file.
 * - Each key's default, and whether changing it needs a restart (`restart(…)`), stand beside
 *   the key in the schema; `restartOnlyChanges` is derived from those marks.
 * - `host:port` values are parsed here, once, into `{host, port}`.
 * - `loadConfig` reads every certificate and key the file names, once, and proves they make
 *   a TLS context (a key that does not match its certificate fails here, not halfway through
 *   applying a reload); the parts get the bytes (`Config.tls`).
 * - A reload (SIGHUP) is all or nothing: the new file must load as above and no restart-only
 *   key may differ; otherwise the running configuration stays whole (the composition root
 *   applies it).
 * - `${VAR}` / `${VAR:-default}` in a string value is replaced from the environment before
 *   validation (one ConfigMap for every pod of a StatefulSet: the pod's name and zone come
 *   from its environment); an unset variable without a default is an error naming the key.
 * - `shadow.peersFrom` expands into `shadow.peers` (the StatefulSet's ordinals, without this
 *   node), so the rest of the code sees one peer list.
 */
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import path from 'node:path';
import os from 'node:os';
import YAML from 'yaml';
import { z } from 'zod';
import ipaddr from 'ipaddr.js';
import { domainToASCII } from 'node:url';
import { passwordHashProblem } from '../passwords/index.js';
import { parseHostPort, type HostPort } from '../base/net.js';

export class ConfigError extends Error {
  constructor(
    readonly file: string,
    readonly problems: string[],
  ) {
    super(`config error in ${file}:\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

const hostPort = z.string().transform((s, ctx): HostPort => {
  const hp = parseHostPort(s);
  if (hp) return hp;
  ctx.addIssue({ code: 'custom', message: 'expected "host:port" (IPv6 as "[::1]:port")' });
  return z.NEVER;
});

/**
 * Marks a key whose change needs a restart (a reload that changes one is refused). Wrap the
 * key's whole schema: a method called on the result (`.strict()`, `.default()`) makes a new
 * schema without the mark (test/config pins the list).
 */
const restartOnly = z.registry<Record<string, never>>();
function restart<T extends z.ZodType>(t: T): T {
  const marked = t.clone();
  restartOnly.add(marked, {});
  return marked;
}

const cidr = z.string().refine(
  (s) => {
    try {
      ipaddr.parseCIDR(s);
      return true;
    } catch {
      return ipaddr.isValid(s);
    }
  },
  { message: 'expected an IP address or CIDR range such as 10.0.0.0/8' },
);

const positiveInt = z.number().int().positive();
const nonNegativeInt = z.number().int().min(0);
const fileRef = z.string().min(1);

// empty means "not set" (an environment variable that was not filled in)
const zoneName = z
  .string()
  .max(128)
  .regex(/^[A-Za-z0-9._\/-]*$/, 'letters, digits, ".", "_", "/" or "-"')
  .transform((s) => (s === '' ? undefined : s));

const peer = z.object({ name: z.string().min(1), address: hostPort, zone: zoneName.optional() }).strict();

// a StatefulSet's peers by ordinal: `{i}` in name and address is replaced by 0 … replicas-1
const peersFrom = z
  .object({
    replicas: z.number().int().min(2).max(1000),
    name: z.string().includes('{i}', { message: 'must contain {i} (the ordinal)' }),
    address: z.string().includes('{i}', { message: 'must contain {i} (the ordinal)' }),
  })
  .strict();

const domainName = z
  .string()
  .refine((s) => domainToASCII(s.replace(/^\./, '').replace(/\.$/, '')) !== '', { message: 'expected a domain name such as example.com' });

// Postfix's defaults where Postfix has the same limit (named in README's config table)
const smtpLimits = z
  .object({
    maxConnections: positiveInt.default(500),
    maxConnectionsPerAddress: positiveInt.default(50),
    connectionRatePerMinute: nonNegativeInt.default(120),
    commandTimeoutMs: positiveInt.default(300000),
    dataTimeoutMs: positiveInt.default(600000),
    maxLineLength: z.number().int().min(512).default(2048),
    maxErrors: positiveInt.default(20),
    maxReceivedHeaders: positiveInt.default(50),
  })
  .strict()
  .prefault({});

const smtpAuth = z
  .object({
    users: z
      .array(
        z
          .object({
            username: z.string().min(1).max(256).refine((s) => !/[\x00-\x1f\x7f]/.test(s), { message: 'control characters are not allowed' }),
            passwordHash: z.string().refine((s) => passwordHashProblem(s) === null, { message: 'expected a hash made by `shadowrelay hash-password` ($scrypt$… or $argon2id$…)' }),
          })
          .strict(),
      )
      .min(1),
    failureDelayMs: nonNegativeInt.default(1000),
    maxFailures: positiveInt.default(5),
    failureWindowMs: positiveInt.default(600000),
    lockoutMs: positiveInt.default(900000),
  })
  .strict();

const schema = z
  .object({
    node: restart(
      z
        .object({
          name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'letters, digits, ".", "_" or "-"'),
          // failure domain (rack, zone): shadow copies go to another one when they can
          zone: zoneName.optional(),
          dataDir: z.string().min(1),
          // SIGTERM/SIGINT hands the queue to peers first (`shadowrelay drain`), for scale-down
          drainOnStop: z.boolean().default(false),
          // the longest a drain may take before it reports what is left
          drainTimeoutMs: positiveInt.default(120000),
          // SIGTERM/SIGINT: how long transactions and deliveries in flight may take to finish
          shutdownTimeoutMs: positiveInt.default(30000),
        })
        .strict(),
    ),
    smtp: z
      .object({
        listen: restart(hostPort),
        hostname: z.string().min(1).default(os.hostname()),
        allowedNetworks: z.array(cidr).default(['127.0.0.0/8', '::1/128']),
        maxMessageSize: positiveInt.default(26214400),
        maxRecipients: positiveInt.default(100),
        // message bodies held at once while being received and accepted (memory bound)
        maxBytesInFlight: restart(positiveInt.default(16 * 1024 * 1024)),
        // RFC 5321 §4.5.3.2.7 asks servers to wait at least 5 minutes for a client.
        socketTimeoutMs: positiveInt.default(300000),
        tls: z.object({ cert: fileRef, key: fileRef }).strict().optional(),
        requireTLS: z.boolean().default(false),
        relayDomains: z.array(domainName).default([]),
        bareLineEndings: z.enum(['normalize', 'reject']).default('normalize'),
        auth: smtpAuth.optional(),
        limits: smtpLimits,
      })
      .strict(),
    shadow: z
      .object({
        listen: restart(hostPort),
        // live on reload: a node added to the peer lists starts taking shadows (README "Scale-out")
        peers: z.array(peer).optional(),
        peersFrom: peersFrom.optional(),
        // where each message's one shadow copy goes (README "Scale-out")
        placement: z.enum(['preferRemote', 'remoteOnly', 'any']).default('preferRemote'),
        tls: z.object({ ca: fileRef, cert: fileRef, key: fileRef }).strict(),
        timeoutMs: positiveInt.default(5000),
        onFailure: z.enum(['reject', 'accept']).default('reject'),
        heartbeatMs: restart(positiveInt.default(5000)),
        promoteAfterMs: restart(positiveInt.default(60000)),
        // default: maxShadowAgeMs(cfg) below (it depends on delivery.retry.maxAgeMs)
        maxShadowAgeMs: restart(positiveInt.optional()),
        reconcileIntervalMs: restart(positiveInt.default(30000)),
      })
      .strict(),
    spool: restart(
      z
        .object({
          // 0 = no cap; otherwise at least 1 MiB
          maxSizeBytes: z
            .number()
            .int()
            .min(0)
            .refine((n) => n === 0 || n >= 1048576, { message: 'must be 0 (no cap) or at least 1048576' })
            .default(0),
          busyTimeoutMs: z.number().int().min(0).default(1000),
        })
        .strict()
        .prefault({}),
    ),
    delivery: z
      .object({
        nextHop: z
          .object({
            host: z.string().min(1),
            port: z.number().int().min(1).max(65535).default(25),
            tls: z.enum(['none', 'opportunistic', 'required']).default('opportunistic'),
            ca: fileRef.optional(),
            tlsServerName: z.string().min(1).optional(),
            auth: z
              .object({ user: z.string().min(1), pass: z.string().min(1).optional(), passFile: fileRef.optional() })
              .strict()
              .refine((a) => (a.pass === undefined) !== (a.passFile === undefined), { message: 'give exactly one of pass and passFile' })
              .optional(),
          })
          .strict(),
        concurrency: positiveInt.default(10),
        retry: z
          .object({
            initialMs: positiveInt.default(300000),
            maxMs: positiveInt.default(4000000),
            maxAgeMs: positiveInt.default(432000000),
          })
          .strict()
          .prefault({}),
        // how long the next hop may take: TCP connect, the 220 greeting, and any silence
        // within a session (a hung next hop holds a delivery slot this long)
        timeouts: z
          .object({
            connectMs: positiveInt.default(30000),
            greetingMs: positiveInt.default(30000),
            socketMs: positiveInt.default(300000),
          })
          .strict()
          .prefault({}),
      })
      .strict(),
    admin: z
      .object({
        listen: restart(hostPort.prefault('127.0.0.1:9025')),
        // bearer token for /metrics and the /queue API (the probes stay open)
        token: z.string().min(16, 'at least 16 characters').optional(),
        tokenFile: fileRef.optional(),
      })
      .strict()
      .refine((a) => !(a.token && a.tokenFile), { message: 'set admin.token or admin.tokenFile, not both' })
      .prefault({}),
    log: z
      .object({
        level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
        // auto: human-readable when stdout is a terminal, JSON lines otherwise
        format: restart(z.enum(['auto', 'json', 'pretty']).default('auto')),
      })
      .strict()
      .prefault({}),
  })
  .strict();

type Schema = z.infer<typeof schema>;
export type PeerConfig = z.infer<typeof peer>;

/** A validated configuration document (`parseConfig`): `shadow.peers` always filled in. */
export type ParsedConfig = Omit<Schema, 'shadow'> & { shadow: Omit<Schema['shadow'], 'peers'> & { peers: PeerConfig[] } } & { file: string };

/** The certificates and keys a configuration names, read once (`loadConfig`). */
export interface TlsMaterial {
  shadow: { ca: Buffer; cert: Buffer; key: Buffer };
  smtp?: { cert: Buffer; key: Buffer };
  /** delivery.nextHop.ca */
  nextHopCa?: Buffer;
}

/** A configuration loaded from its file, with its TLS material. */
export type Config = ParsedConfig & { tls: TlsMaterial };

/** The dotted keys marked `restart(…)` in the schema. */
function restartKeys(t: z.ZodType, at: string[] = []): string[] {
  if (restartOnly.has(t)) return [at.join('.')];
  if (t instanceof z.ZodObject) return Object.entries(t.shape).flatMap(([k, v]) => restartKeys(v as z.ZodType, [...at, k]));
  if (t instanceof z.ZodDefault || t instanceof z.ZodPrefault || t instanceof z.ZodOptional) return restartKeys(t.unwrap() as z.ZodType, at);
  return [];
}

/** Dotted keys whose change needs a restart; compared as JSON. */
export const RESTART_ONLY: ReadonlyArray<string> = restartKeys(schema);

function at(cfg: unknown, dotted: string): unknown {
  return dotted.split('.').reduce<unknown>((o, k) => (o && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined), cfg);
}

/** The restart-only keys that differ between the running and the new configuration. */
export function restartOnlyChanges(running: ParsedConfig, next: ParsedConfig): string[] {
  return RESTART_ONLY.filter((k) => JSON.stringify(at(running, k)) !== JSON.stringify(at(next, k)));
}

const TWO_DAYS_MS = 2 * 86400_000;

/**
 * Shadow copies must outlive their primary's retries: a copy dropped while its primary
 * still retries is lost if that primary then dies.
 */
export function maxShadowAgeMs(cfg: ParsedConfig): number {
  return cfg.shadow.maxShadowAgeMs ?? Math.max(TWO_DAYS_MS, cfg.delivery.retry.maxAgeMs + 86400_000);
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const key = issue.path.map(String).join('.');
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((k) => `${key ? key + '.' : ''}${k}: unknown key`).join('\n  ');
  }
  if (issue.code === 'invalid_type' && /received undefined/.test(issue.message)) {
    return `${key}: required key is missing`;
  }
  return `${key || '(top level)'}: ${issue.message}`;
}

/** Validates an already parsed document. `file` is used in messages and to resolve paths. */
export function parseConfig(doc: unknown, file: string, env: NodeJS.ProcessEnv = process.env): ParsedConfig {
  const result = schema.safeParse(expandEnv(doc, env, file));
  if (!result.success) throw new ConfigError(file, result.error.issues.map(describeIssue));
  const cfg = { ...result.data, shadow: { ...result.data.shadow, peers: peerList(result.data, file) } };
  const base = path.dirname(path.resolve(file));
  const abs = (p: string) => path.resolve(base, p);
  cfg.node.dataDir = abs(cfg.node.dataDir);
  if (cfg.smtp.tls) cfg.smtp.tls = { cert: abs(cfg.smtp.tls.cert), key: abs(cfg.smtp.tls.key) };
  if (cfg.smtp.requireTLS && !cfg.smtp.tls) throw new ConfigError(file, ['smtp.requireTLS: needs smtp.tls (a certificate to offer STARTTLS with)']);
  if (cfg.smtp.auth && !cfg.smtp.tls) {
    throw new ConfigError(file, ['smtp.auth: needs smtp.tls (clients outside allowedNetworks may send a password only after STARTTLS)']);
  }
  if (cfg.smtp.auth) {
    const seen = new Set<string>();
    for (const [i, u] of cfg.smtp.auth.users.entries()) {
      if (seen.has(u.username)) throw new ConfigError(file, [`smtp.auth.users.${i}.username: duplicate user "${u.username}"`]);
      seen.add(u.username);
    }
  }
  // compared against the unicode form smtp-server gives recipient domains
  cfg.smtp.relayDomains = cfg.smtp.relayDomains.map((d) => d.toLowerCase().replace(/\.$/, ''));
  const hop = cfg.delivery.nextHop;
  if (hop.ca) hop.ca = abs(hop.ca);
  if (hop.auth?.passFile) hop.auth.passFile = abs(hop.auth.passFile);
  if (cfg.admin.tokenFile) cfg.admin.tokenFile = abs(cfg.admin.tokenFile);
  cfg.shadow.tls = {
    ca: abs(cfg.shadow.tls.ca),
    cert: abs(cfg.shadow.tls.cert),
    key: abs(cfg.shadow.tls.key),
  };
  const names = new Set<string>();
  for (const [i, p] of cfg.shadow.peers.entries()) {
    if (p.name === cfg.node.name) throw new ConfigError(file, [`shadow.peers.${i}.name: a node cannot be its own peer`]);
    if (names.has(p.name)) throw new ConfigError(file, [`shadow.peers.${i}.name: duplicate peer "${p.name}"`]);
    names.add(p.name);
  }
  if (cfg.shadow.placement === 'remoteOnly') {
    if (!cfg.node.zone) throw new ConfigError(file, ['shadow.placement: remoteOnly needs node.zone (the zone copies must leave)']);
  }
  if (cfg.delivery.retry.initialMs > cfg.delivery.retry.maxMs) {
    throw new ConfigError(file, ['delivery.retry.initialMs: must not exceed delivery.retry.maxMs']);
  }
  return { ...cfg, file: path.resolve(file) };
}

const ENV_REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\$/g;

/** Replaces `${VAR}` and `${VAR:-default}` in every string value; `$$` is a literal `$`. */
function expandEnv(doc: unknown, env: NodeJS.ProcessEnv, file: string, at: string[] = []): unknown {
  if (typeof doc === 'string') {
    return doc.replace(ENV_REF, (all, name: string | undefined, dflt: string | undefined) => {
      if (all === '$$') return '$';
      const v = env[name!];
      if (v !== undefined && v !== '') return v;
      if (dflt !== undefined) return dflt;
      throw new ConfigError(file, [`${at.join('.')}: environment variable ${name} is not set (write \${${name}:-} for "empty is fine")`]);
    });
  }
  if (Array.isArray(doc)) return doc.map((v, i) => expandEnv(v, env, file, [...at, String(i)]));
  if (doc && typeof doc === 'object') {
    return Object.fromEntries(Object.entries(doc).map(([k, v]) => [k, expandEnv(v, env, file, [...at, k])]));
  }
  return doc;
}

/** `shadow.peers`, or the StatefulSet ordinals of `shadow.peersFrom` without this node. */
function peerList(cfg: Schema, file: string): PeerConfig[] {
  const { peers, peersFrom: from } = cfg.shadow;
  if (peers && from) throw new ConfigError(file, ['shadow.peersFrom: give shadow.peers or shadow.peersFrom, not both']);
  if (from) {
    const list: PeerConfig[] = [];
    for (let i = 0; i < from.replicas; i++) {
      const name = from.name.replaceAll('{i}', String(i));
      if (name === cfg.node.name) continue;
      const address = parseHostPort(from.address.replaceAll('{i}', String(i)));
      if (!address) throw new ConfigError(file, ['shadow.peersFrom.address: expected "host:port" with {i} in it']);
      list.push({ name, address });
    }
    if (list.length === from.replicas) {
      throw new ConfigError(file, [`shadow.peersFrom.name: node.name "${cfg.node.name}" is none of the ${from.replicas} names it makes`]);
    }
    return list;
  }
  if (!peers?.length) throw new ConfigError(file, ['shadow.peers: at least one peer is needed: shadowrelay never answers 250 without one']);
  return peers;
}

/** Reads, parses and validates a YAML file; also checks that referenced files are readable. */
export function loadConfig(file: string): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(file, [`cannot read file: ${(e as Error).message}`]);
  }
  const doc = YAML.parseDocument(text, { prettyErrors: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(file, doc.errors.map((e) => `YAML syntax: ${e.message.split('\n')[0]}`));
  }
  const cfg = parseConfig(doc.toJS(), file);
  const problems: string[] = [];
  const read = (key: string, p: string): Buffer => {
    try {
      return readFileSync(p);
    } catch (e) {
      problems.push(`${key}: cannot read ${p}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      return Buffer.alloc(0);
    }
  };
  // every file is read here, once: the parts get the bytes
  const smtp = cfg.smtp.tls && { cert: read('smtp.tls.cert', cfg.smtp.tls.cert), key: read('smtp.tls.key', cfg.smtp.tls.key) };
  const nextHopCa = cfg.delivery.nextHop.ca ? read('delivery.nextHop.ca', cfg.delivery.nextHop.ca) : undefined;
  if (cfg.delivery.nextHop.auth?.passFile) read('delivery.nextHop.auth.passFile', cfg.delivery.nextHop.auth.passFile);
  const shadow = { ca: read('shadow.tls.ca', cfg.shadow.tls.ca), cert: read('shadow.tls.cert', cfg.shadow.tls.cert), key: read('shadow.tls.key', cfg.shadow.tls.key) };
  if (cfg.admin.tokenFile) {
    read('admin.tokenFile', cfg.admin.tokenFile);
    if (!problems.length && !adminToken(cfg)) problems.push(`admin.tokenFile: ${cfg.admin.tokenFile} is empty`);
  }
  if (problems.length) throw new ConfigError(file, problems);
  // a key that does not match its certificate fails here, not halfway through a reload
  for (const [key, m] of [['shadow.tls', shadow], ['smtp.tls', smtp]] as const) {
    if (!m) continue;
    try {
      tls.createSecureContext(m);
    } catch (e) {
      throw new ConfigError(file, [`${key}: ${(e as Error).message}`]);
    }
  }
  return { ...cfg, tls: { shadow, smtp: smtp || undefined, nextHopCa } };
}

/** The admin bearer token (`admin.token`, or the first line of `admin.tokenFile`), if any. */
export function adminToken(cfg: ParsedConfig): string | undefined {
  if (cfg.admin.token) return cfg.admin.token;
  if (!cfg.admin.tokenFile) return undefined;
  try {
    return readFileSync(cfg.admin.tokenFile, 'utf8').split(/\r?\n/)[0]!.trim() || undefined;
  } catch {
    return undefined;
  }
}
