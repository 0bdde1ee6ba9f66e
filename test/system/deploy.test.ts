/**
 * Deployment files (issue 5): the systemd unit and the Docker image + compose pair.
 * No systemd (as PID 1) and no Docker engine run here, so these tests check what can be
 * checked on one machine:
 * - `systemd-analyze verify` accepts the unit (skipped, with a message, when it is absent), and
 *   the commands the unit runs (pre-check, start, readiness wait, reload by HUP, stop by TERM)
 *   work when run as systemd would run them, with the install paths mapped to this checkout;
 * - docker-compose.yml parses and describes the pair; the Dockerfile is multi-stage, non-root,
 *   production-only, with a spool volume and a HEALTHCHECK; and the compose services' commands
 *   (ENTRYPOINT + CMD / command) run as they would in the containers — with the container
 *   paths mapped to a temp dir and the service names / ports of compose's network mapped to
 *   loopback ports — and carry a message from relay-a to the sink.
 */
import { describe, it, expect, afterEach } from 'vitest';
import path from 'node:path';
import { existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import YAML from 'yaml';
import { ROOT, tmpDir, freePort, send, waitFor, Sink, which, runCommand as run } from '../helpers/index.js';
import { writePairConfigs, deepMerge } from '../../tools/pair.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A long-running command whose stdout lines are collected (JSON ones parsed). */
function daemon(argv: string[]): { proc: ChildProcess; lines: Array<Record<string, unknown>>; exited: Promise<number | null> } {
  const proc = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: Array<Record<string, unknown>> = [];
  createInterface({ input: proc.stdout! }).on('line', (l) => {
    try {
      lines.push(JSON.parse(l) as Record<string, unknown>);
    } catch {
      /* not JSON */
    }
  });
  proc.stderr!.resume();
  const exited = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));
  cleanups.push(() => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  });
  return { proc, lines, exited };
}

// ---- systemd ------------------------------------------------------------------------

const UNIT = path.join(ROOT, 'config', 'shadowrelay.service');
const unitText = readFileSync(UNIT, 'utf8');

function unitValues(key: string): string[] {
  return [...unitText.matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].map((m) => m[1]!.trim());
}

const systemdAnalyze = which('systemd-analyze');
if (!systemdAnalyze) console.warn('deploy.test: systemd-analyze is not installed; `systemd-analyze verify` of the unit is skipped');

describe('systemd unit (config/shadowrelay.service)', () => {
  it.skipIf(!systemdAnalyze)('passes `systemd-analyze verify` with no warning', async () => {
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    let text = unitText;
    // the unit names Debian's node; on a machine with node elsewhere, verify against that one
    if (!existsSync('/usr/bin/node')) text = text.replaceAll('/usr/bin/node', process.execPath);
    const file = path.join(dir, 'shadowrelay.service');
    writeFileSync(file, text);
    const r = await run([systemdAnalyze!, 'verify', file]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it('has a dedicated user, restart on failure, a state directory, hardening and reload by HUP', () => {
    expect(unitValues('User')).toEqual(['shadowrelay']);
    expect(unitValues('Restart')).toEqual(['on-failure']);
    expect(unitValues('StateDirectory')).toEqual(['shadowrelay']);
    expect(unitValues('ExecReload')).toEqual(['/bin/kill -HUP $MAINPID']);
    for (const [k, v] of [
      ['NoNewPrivileges', 'yes'],
      ['ProtectSystem', 'strict'],
      ['PrivateTmp', 'yes'],
      ['ProtectHome', 'yes'],
      ['PrivateDevices', 'yes'],
      ['RestrictSUIDSGID', 'yes'],
    ] as const) {
      expect(unitValues(k), k).toEqual([v]);
    }
    expect(unitValues('CapabilityBoundingSet')).toEqual(['CAP_NET_BIND_SERVICE']);
  });

  it('the commands it runs work as systemd runs them: check, start, wait for health, reload by HUP, stop by TERM', async () => {
    const { dir, cleanup } = tmpDir();
    cleanups.push(cleanup);
    const sink = new Sink();
    const files = await writePairConfigs({ dir, sinkPort: await sink.listen() });
    cleanups.unshift(() => sink.close());
    const cfg = files.configs['relay-a']!;
    const doc = YAML.parse(readFileSync(cfg, 'utf8')) as Record<string, unknown>;
    writeFileSync(cfg, YAML.stringify(deepMerge(doc, { admin: { listen: `127.0.0.1:${await freePort()}` } })));
    // the install layout of the unit, mapped onto this checkout and the generated config
    const map = (cmd: string) =>
      cmd
        .replaceAll('/usr/bin/node', process.execPath)
        .replaceAll('/opt/shadowrelay', ROOT)
        .replaceAll('/etc/shadowrelay/shadowrelay.yaml', cfg)
        .split(/\s+/);
    const [pre] = unitValues('ExecStartPre');
    const [start] = unitValues('ExecStart');
    const [post] = unitValues('ExecStartPost');
    const checked = await run(map(pre!));
    expect(checked.stderr).toBe('');
    expect(checked.code).toBe(0);
    const main = daemon(map(start!));
    const ready = await run(map(post!));
    expect(ready.stdout).toBe('relay-a: alive\n');
    expect(ready.code).toBe(0);
    // ExecReload: kill -HUP $MAINPID
    const reload = unitValues('ExecReload')[0]!.replace('$MAINPID', String(main.proc.pid)).split(/\s+/);
    expect((await run(reload)).code).toBe(0);
    await waitFor(() => main.lines.some((l) => l.msg === 'configuration reloaded'), 20000, 'reload line');
    // KillSignal=SIGTERM: a clean stop exits 0 (Restart=on-failure does not restart it)
    expect(unitValues('KillSignal')).toEqual(['SIGTERM']);
    main.proc.kill('SIGTERM');
    expect(await main.exited).toBe(0);
    expect(main.lines.some((l) => l.msg === 'stopped')).toBe(true);
  });
});

// ---- Docker -------------------------------------------------------------------------

const compose = YAML.parse(readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8'), { merge: true }) as {
  services: Record<string, { command?: string[]; volumes?: string[]; depends_on?: Record<string, { condition: string }>; build?: unknown; image?: string; healthcheck?: { disable?: boolean } }>;
  volumes: Record<string, unknown>;
};
const dockerfile = readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ');

/** Instruction arguments of one stage of the Dockerfile (by its `AS` name), or of its final stage. */
function stage(instr: string, name?: string): string[] {
  const stages = dockerfile.split(/^FROM /m);
  const text = name ? stages.find((s) => new RegExp(`^\\S+ AS ${name}\\s`).test(s))! : stages[stages.length - 1]!;
  return [...text.matchAll(new RegExp(`^${instr}\\s+(.*)$`, 'gm'))].map((m) => m[1]!.trim());
}
const finalStage = (instr: string) => stage(instr);
const execForm = (s: string): string[] => JSON.parse(s) as string[];

const dockerCompose = which('docker-compose');
if (!dockerCompose) console.warn('deploy.test: docker-compose is not installed; its schema check of docker-compose.yml is skipped (the YAML checks still run)');

describe('Docker image and compose pair', () => {
  it('Dockerfile: multi-stage, production deps only, non-root, spool volume, HEALTHCHECK on /healthz', () => {
    expect(dockerfile.match(/^FROM /gm)!.length).toBeGreaterThanOrEqual(2);
    expect(dockerfile).toMatch(/npm prune --omit=dev/);
    expect(finalStage('COPY').some((c) => c.startsWith('--from=build'))).toBe(true);
    expect(finalStage('RUN').join(' ')).not.toMatch(/npm (ci|install)\b/);
    expect(finalStage('USER')).toEqual(['node']);
    expect(finalStage('VOLUME')).toEqual(['["/var/lib/shadowrelay"]']);
    const hc = finalStage('HEALTHCHECK')[0]!;
    expect(hc).toMatch(/CMD \["node", "\/app\/dist\/cli\.js", "health"/);
    // the product image holds the product only: no tools (demo, sink, bench), no tests
    expect(finalStage('COPY').join(' ')).not.toMatch(/dist-tools|tools|test/);
  });

  it('the image runs the daemon with the environment the systemd unit gives it (the bench runs it so too)', () => {
    const unitEnv = unitValues('Environment').sort();
    expect(unitEnv).toContain('MALLOC_MMAP_THRESHOLD_=131072');
    expect(unitEnv).toContain('NODE_OPTIONS=--max-semi-space-size=4');
    expect(finalStage('ENV').sort()).toEqual(unitEnv);
  });

  it('the npm package ships the product only (no tools, no tests)', async () => {
    const r = await run(['npm', 'pack', '--dry-run', '--json', '--ignore-scripts']);
    expect(r.code, r.stderr).toBe(0);
    const files = (JSON.parse(r.stdout) as Array<{ files: Array<{ path: string }> }>)[0]!.files.map((f) => f.path);
    expect(files).toContain('dist/cli.js');
    expect(files.filter((f) => /^(dist-tools|tools|test|src)\//.test(f) || /(bench|sink|demo|pair)\.js$/.test(f))).toEqual([]);
    // nor certificates someone made in the checkout (`certs init --out config/certs`)
    expect(files.filter((f) => /\.(key|crt)$/.test(f))).toEqual([]);
  });

  it('docker-compose.yml: a pair with a one-shot certs service and a sink, spools on volumes', () => {
    const s = compose.services;
    expect(Object.keys(s).sort()).toEqual(['certs', 'relay-a', 'relay-b', 'sink']);
    expect(s.certs!.command).toEqual(['certs', 'init', '--out', '/etc/shadowrelay/certs', '--nodes', 'relay-a,relay-b']);
    // the sink is a tool: its own image, built from the Dockerfile's `sink` stage
    expect(s.sink!.build).toEqual({ context: '.', target: 'sink' });
    expect(s.sink!.image).toBe('shadowrelay-sink:local');
    expect(s.sink!.command).toEqual(['--listen', '0.0.0.0:2600']);
    for (const r of ['relay-a', 'relay-b']) {
      expect(s[r]!.depends_on!.certs!.condition).toBe('service_completed_successfully');
      expect(s[r]!.volumes).toContain(`${r}-spool:/var/lib/shadowrelay`);
      expect(s[r]!.volumes).toContain('certs:/etc/shadowrelay/certs:ro');
      expect(s[r]!.volumes).toContain(`./config/docker/${r}.yaml:/etc/shadowrelay/shadowrelay.yaml:ro`);
      expect(compose.volumes).toHaveProperty(`${r}-spool`);
    }
    for (const svc of ['certs', 'relay-a', 'relay-b']) expect(s[svc]!.image).toBe('shadowrelay:local');
  });

  it.skipIf(!dockerCompose)('docker-compose config accepts the file (when docker-compose is installed)', async () => {
    const r = await run([dockerCompose!, '-f', path.join(ROOT, 'docker-compose.yml'), 'config', '-q']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it("the services' entry commands run as in the containers and carry a message from relay-a to the sink", async () => {
    const { dir: T, cleanup } = tmpDir();
    cleanups.push(cleanup);
    const entry = execForm(finalStage('ENTRYPOINT')[0]!);
    const cmd = execForm(finalStage('CMD')[0]!);
    const health = execForm(finalStage('HEALTHCHECK')[0]!.replace(/^.*?CMD\s+/, ''));
    const certsVol = path.join(T, 'volumes', 'certs');
    mkdirSync(certsVol, { recursive: true });
    // container paths → this machine
    const mapFor = (svc: string) => (arg: string) =>
      arg
        .replace(/^node$/, process.execPath)
        .replace(/^\/app\//, ROOT + '/')
        .replace('/etc/shadowrelay/certs', certsVol)
        .replace('/etc/shadowrelay/shadowrelay.yaml', path.join(T, svc, 'etc', 'shadowrelay', 'shadowrelay.yaml'));

    // the one-shot certs service, twice (compose runs it on every `up`): the CA is kept
    const certsCmd = [...entry, ...compose.services.certs!.command!].map(mapFor('certs'));
    const c1 = await run(certsCmd);
    expect(c1.code).toBe(0);
    const ca = readFileSync(path.join(certsVol, 'ca.crt'), 'utf8');
    const c2 = await run(certsCmd);
    expect(c2.stdout).toContain('already exist');
    expect(readFileSync(path.join(certsVol, 'ca.crt'), 'utf8')).toBe(ca);

    // compose's network: each service name:port becomes a loopback port here
    const ports: Record<string, Record<number, number>> = {};
    for (const svc of ['relay-a', 'relay-b', 'sink']) ports[svc] = { 2525: await freePort(), 2625: await freePort(), 2600: await freePort(), 9025: await freePort() };
    const net = (svc: string, addr: string) => {
      const m = /^(.*):(\d+)$/.exec(addr)!;
      const owner = m[1] === '0.0.0.0' || m[1] === '127.0.0.1' ? svc : m[1]!;
      return `127.0.0.1:${ports[owner]![Number(m[2])]}`;
    };

    const sinkCmd = [...execForm(stage('ENTRYPOINT', 'sink')[0]!), ...compose.services.sink!.command!].map((a) => (a === '0.0.0.0:2600' ? net('sink', a) : mapFor('sink')(a)));
    const sink = daemon(sinkCmd);
    await waitFor(() => sink.lines.some((l) => l.msg === 'sink listening'), 20000, 'sink');

    const relays: Record<string, ReturnType<typeof daemon>> = {};
    for (const svc of ['relay-b', 'relay-a']) {
      const mount = compose.services[svc]!.volumes!.find((v) => v.split(':')[1] === '/etc/shadowrelay/shadowrelay.yaml')!;
      const doc = YAML.parse(readFileSync(path.join(ROOT, mount.split(':')[0]!), 'utf8')) as {
        node: { dataDir: string };
        smtp: { listen: string };
        shadow: { listen: string; peers: Array<{ address: string }> };
        delivery: { nextHop: { host: string; port: number } };
        admin: { listen: string };
      };
      expect(doc.node.dataDir).toBe('/var/lib/shadowrelay');
      doc.node.dataDir = path.join(T, svc, 'var', 'lib', 'shadowrelay');
      doc.smtp.listen = net(svc, doc.smtp.listen);
      doc.shadow.listen = net(svc, doc.shadow.listen);
      for (const p of doc.shadow.peers) p.address = net(svc, p.address);
      const hop = net(svc, `${doc.delivery.nextHop.host}:${doc.delivery.nextHop.port}`).split(':');
      doc.delivery.nextHop = { ...doc.delivery.nextHop, host: hop[0]!, port: Number(hop[1]) };
      doc.admin.listen = net(svc, doc.admin.listen);
      const etc = path.join(T, svc, 'etc', 'shadowrelay');
      mkdirSync(etc, { recursive: true });
      symlinkSync(certsVol, path.join(etc, 'certs')); // the certs volume at /etc/shadowrelay/certs
      writeFileSync(path.join(etc, 'shadowrelay.yaml'), YAML.stringify(doc));
      relays[svc] = daemon([...entry, ...cmd].map(mapFor(svc)));
      await waitFor(() => relays[svc]!.lines.some((l) => l.msg === 'shadowrelay started'), 20000, `${svc} to start`);
      const hc = await run(health.map(mapFor(svc)));
      expect(hc.code, hc.stderr).toBe(0);
    }
    await waitFor(() => relays['relay-a']!.lines.some((l) => l.msg === 'shadow peer up'), 20000, 'peer up');
    const r = await send(ports['relay-a']![2525]!);
    expect(r.code).toBe(250);
    await waitFor(() => sink.lines.some((l) => l.subject === 'test'), 20000, 'the sink to print the message');
  });
});
