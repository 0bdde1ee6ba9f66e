/** CLI: check-config names the bad key; queue list; demo --once. */
import { describe, it, expect, afterAll } from 'vitest';
import path from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import YAML from 'yaml';
import { writePairConfigs, deepMerge } from '../tools/pair.js';
import { runCli, runCommand, tmpDir, TOOLS_CLI } from './helpers/index.js';

const { dir, cleanup } = tmpDir();
afterAll(cleanup);

async function baseDoc(): Promise<{ file: string; doc: Record<string, unknown> }> {
  const files = await writePairConfigs({ dir, sinkPort: 2600 });
  const file = files.configs['relay-a']!;
  return { file, doc: YAML.parse(readFileSync(file, 'utf8')) as Record<string, unknown> };
}

describe('check-config', () => {
  it('accepts the generated pair config and the shipped example', async () => {
    const { file } = await baseDoc();
    const ok = await runCli(['check-config', '--config', file]);
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain('ok (node relay-a, peers relay-b)');
  });

  it('accepts the shipped example pair once its certificates exist', async () => {
    const { cpSync } = await import('node:fs');
    const cfgDir = path.join(dir, 'shipped');
    cpSync(path.join(import.meta.dirname, '..', 'config'), cfgDir, { recursive: true });
    const certs = await runCli(['certs', 'init', '--out', path.join(cfgDir, 'certs'), '--nodes', 'relay-a,relay-b']);
    expect(certs.code).toBe(0);
    for (const f of ['example.yaml', 'relay-a.yaml', 'relay-b.yaml']) {
      const r = await runCli(['check-config', '--config', path.join(cfgDir, f)]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
    }
  });

  const cases: Array<[string, Record<string, unknown> | ((d: Record<string, unknown>) => void), RegExp]> = [
    ['wrong type', { smtp: { maxMessageSize: 'big' } }, /smtp\.maxMessageSize: .*number/i],
    ['unknown key (typo)', { smtp: { maxRecipient: 5 } }, /smtp\.maxRecipient: unknown key/],
    ['bad enum', { shadow: { onFailure: 'ignore' } }, /shadow\.onFailure: /],
    ['bad address', { smtp: { listen: 'localhost' } }, /smtp\.listen: expected "host:port"/],
    ['bad network', { smtp: { allowedNetworks: ['10.0.0.0/33'] } }, /smtp\.allowedNetworks\.0: /],
    ['missing key', (d) => delete (d.node as Record<string, unknown>).name, /node\.name: required key is missing/],
    ['unreadable certificate', { shadow: { tls: { cert: 'certs/nope.crt' } } }, /shadow\.tls\.cert: cannot read .*nope\.crt/],
    ['no peers', { shadow: { peers: [] } }, /shadow\.peers: at least one peer/],
    ['plain-text password', { smtp: { tls: { cert: 'certs/relay-a.crt', key: 'certs/relay-a.key' }, auth: { users: [{ username: 'u', passwordHash: 'secret' }] } } }, /smtp\.auth\.users\.0\.passwordHash: expected a hash made by `shadowrelay hash-password`/],
    ['AUTH without TLS', { smtp: { auth: { users: [{ username: 'u', passwordHash: '$scrypt$ln=15,r=8,p=1$Ev5JmC2QtLOkWdN65xCwig$EVaCR6my98kb/LBgbkfuEORjjyFNPkUxNuxokTDSCRc' }] } } }, /smtp\.auth: needs smtp\.tls/],
    ['requireTLS without TLS', { smtp: { requireTLS: true } }, /smtp\.requireTLS: needs smtp\.tls/],
    ['bad limit', { smtp: { limits: { maxLineLength: 10 } } }, /smtp\.limits\.maxLineLength: /],
    ['bad bare line ending mode', { smtp: { bareLineEndings: 'strip' } }, /smtp\.bareLineEndings: /],
    ['next-hop password twice', { delivery: { nextHop: { auth: { user: 'u', pass: 'p', passFile: 'f' } } } }, /delivery\.nextHop\.auth: give exactly one of pass and passFile/],
  ];
  for (const [what, change, expected] of cases) {
    it(`names the key for: ${what}`, async () => {
      const { file, doc } = await baseDoc();
      let bad: Record<string, unknown>;
      if (typeof change === 'function') {
        bad = structuredClone(doc);
        change(bad);
      } else bad = deepMerge(doc, change);
      const badFile = path.join(path.dirname(file), `bad-${what.replace(/\W+/g, '-')}.yaml`);
      writeFileSync(badFile, YAML.stringify(bad));
      const r = await runCli(['check-config', '--config', badFile]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(badFile);
      expect(r.stderr).toMatch(expected);
    });
  }

  it('reports YAML syntax errors with the file name', async () => {
    const f = path.join(dir, 'syntax.yaml');
    writeFileSync(f, 'node: { name: a\nsmtp: [');
    const r = await runCli(['check-config', '--config', f]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/syntax\.yaml[\s\S]*YAML syntax/);
  });
});

describe('hash-password', () => {
  it('reads the password from stdin and prints a hash that verifies', async () => {
    const { spawn } = await import('node:child_process');
    const { CLI } = await import('./helpers/index.js');
    const { verifyPassword } = await import('../src/passwords/index.js');
    const p = spawn(process.execPath, [CLI, 'hash-password'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stdin.end('s3cret pass\n');
    expect(await new Promise((r) => p.on('close', r))).toBe(0);
    expect(out.trim()).toMatch(/^\$scrypt\$ln=15,r=8,p=1\$/);
    expect(await verifyPassword('s3cret pass', out.trim())).toBe(true);
    expect(await verifyPassword('s3cret pas', out.trim())).toBe(false);
  });
});

describe('queue list', () => {
  it('prints [] as JSON and a mailq-like line for an empty or missing spool', async () => {
    const { file } = await baseDoc();
    const j = await runCli(['queue', 'list', '--config', file, '--json']);
    expect(j.code).toBe(0);
    expect(JSON.parse(j.stdout)).toEqual([]);
    const t = await runCli(['queue', 'list', '--config', file]);
    expect(t.stdout).toContain('Mail queue is empty');
  });
});

describe('demo', () => {
  it('demo --once exits 0 after the message is delivered and purged on both nodes', async () => {
    // the demo is a tool (not in the shipped package): `npm run demo` runs this
    const r = await runCommand([process.execPath, TOOLS_CLI, 'demo', '--once'], 90000);
    expect(r.stderr).toBe('');
    expect(r.stdout).toContain('relay-b holds the shadow copy: yes');
    expect(r.stdout).toContain('purged on relay-a and on relay-b');
    expect(r.code).toBe(0);
  }, 120000);
});
