/** The config schema on its own: defaults, `host:port` parsed once, the restart-only keys. */
import { describe, it, expect } from 'vitest';
import { parseConfig, restartOnlyChanges, RESTART_ONLY, ConfigError, type ParsedConfig } from '../../src/config/index.js';

const doc = () => ({
  node: { name: 'relay-a', dataDir: './data' },
  smtp: { listen: '127.0.0.1:2525' },
  shadow: { listen: '[::1]:2625', peers: [{ name: 'relay-b', address: 'relay-b.example.test:2625' }], tls: { ca: 'ca.crt', cert: 'a.crt', key: 'a.key' } },
  delivery: { nextHop: { host: 'mx.example.test' } },
});
const parse = (d: unknown): ParsedConfig => parseConfig(d, '/etc/shadowrelay/relay-a.yaml');

describe('config schema', () => {
  it('parses host:port once into {host, port} (IPv6 in brackets), and names the key of a bad one', () => {
    const cfg = parse(doc());
    expect(cfg.smtp.listen).toEqual({ host: '127.0.0.1', port: 2525 });
    expect(cfg.shadow.listen).toEqual({ host: '::1', port: 2625 });
    expect(cfg.shadow.peers[0]!.address).toEqual({ host: 'relay-b.example.test', port: 2625 });
    expect(cfg.admin.listen).toEqual({ host: '127.0.0.1', port: 9025 }); // the default, parsed too
    const bad = doc();
    bad.smtp.listen = 'localhost';
    expect(() => parse(bad)).toThrow(ConfigError);
    expect(() => parse(bad)).toThrow(/smtp\.listen: expected "host:port" \(IPv6 as "\[::1\]:port"\)/);
  });

  it('fills the defaults of whole sections left out', () => {
    const cfg = parse(doc());
    expect(cfg.spool).toEqual({ maxSizeBytes: 0, busyTimeoutMs: 1000 });
    expect(cfg.smtp.limits).toMatchObject({ maxConnections: 500, maxLineLength: 2048, maxReceivedHeaders: 50 });
    expect(cfg.delivery.retry).toEqual({ initialMs: 300000, maxMs: 4000000, maxAgeMs: 432000000 });
    expect(cfg.log).toEqual({ level: 'info', format: 'auto' });
  });

  it('derives the restart-only keys from the marks in the schema', () => {
    expect([...RESTART_ONLY].sort()).toEqual(
      [
        'node',
        'smtp.listen',
        'smtp.maxBytesInFlight',
        'shadow.listen',
        'shadow.heartbeatMs',
        'shadow.promoteAfterMs',
        'shadow.maxShadowAgeMs',
        'shadow.reconcileIntervalMs',
        'spool',
        'admin.listen',
        'log.format',
      ].sort(),
    );
    const running = parse(doc());
    const next = doc() as ReturnType<typeof doc> & { spool?: unknown; log?: unknown };
    next.node.dataDir = './elsewhere';
    next.spool = { busyTimeoutMs: 200 };
    next.log = { level: 'debug' }; // live
    expect(restartOnlyChanges(running, parse(next))).toEqual(['node', 'spool']);
  });

  it('zones and placement: defaults, the keys, and remoteOnly needs node.zone', () => {
    const cfg = parse(doc());
    expect(cfg.shadow.placement).toBe('preferRemote');
    expect(cfg.node.zone).toBeUndefined();
    const d = doc() as unknown as { node: Record<string, unknown>; shadow: Record<string, unknown> };
    d.node.zone = 'eu-west-1a';
    (d.shadow.peers as Array<Record<string, unknown>>)[0]!.zone = 'eu-west-1b';
    d.shadow.placement = 'remoteOnly';
    const z = parse(d);
    expect(z.node.zone).toBe('eu-west-1a');
    expect(z.shadow.peers[0]!.zone).toBe('eu-west-1b');
    delete d.node.zone;
    expect(() => parse(d)).toThrow(/shadow\.placement: remoteOnly needs node\.zone/);
    d.shadow.placement = 'nearest';
    expect(() => parse(d)).toThrow(/shadow\.placement: Invalid option/);
  });

  it('shadow.peersFrom makes the StatefulSet peer list without this node; errors name the key', () => {
    const d = doc() as unknown as { node: Record<string, unknown>; shadow: Record<string, unknown> };
    d.node.name = 'shadowrelay-1';
    delete d.shadow.peers;
    d.shadow.peersFrom = { replicas: 3, name: 'shadowrelay-{i}', address: 'shadowrelay-{i}.shadowrelay-peers.mail.svc:7001' };
    const cfg = parse(d);
    expect(cfg.shadow.peers).toEqual([
      { name: 'shadowrelay-0', address: { host: 'shadowrelay-0.shadowrelay-peers.mail.svc', port: 7001 } },
      { name: 'shadowrelay-2', address: { host: 'shadowrelay-2.shadowrelay-peers.mail.svc', port: 7001 } },
    ]);
    d.node.name = 'shadowrelay-3';
    expect(() => parse(d)).toThrow(/shadow\.peersFrom\.name: node\.name "shadowrelay-3" is none of the 3 names/);
    d.shadow.peers = [{ name: 'x', address: 'x:1' }];
    expect(() => parse(d)).toThrow(/give shadow\.peers or shadow\.peersFrom, not both/);
    delete d.shadow.peers;
    d.shadow.peersFrom = { replicas: 3, name: 'relay', address: 'a:1' };
    expect(() => parse(d)).toThrow(/shadow\.peersFrom\.name: must contain \{i\}/);
    delete d.shadow.peersFrom;
    expect(() => parse(d)).toThrow(/shadow\.peers: at least one peer is needed/);
  });

  it('expands ${VAR} and ${VAR:-default} from the environment; an unset one names the key', () => {
    const d = doc() as unknown as { node: Record<string, unknown> };
    d.node.name = '${POD_NAME}';
    d.node.zone = '${ZONE:-}';
    d.node.dataDir = '/var/lib/$${literal}/${POD_NAME}';
    const cfg = parseConfig(d, '/etc/x.yaml', { POD_NAME: 'shadowrelay-0' });
    expect(cfg.node.name).toBe('shadowrelay-0');
    expect(cfg.node.zone).toBeUndefined();
    expect(cfg.node.dataDir).toBe('/var/lib/${literal}/shadowrelay-0');
    expect(parseConfig(d, '/etc/x.yaml', { POD_NAME: 'p', ZONE: 'z1' }).node.zone).toBe('z1');
    expect(() => parseConfig(d, '/etc/x.yaml', {})).toThrow(/node\.name: environment variable POD_NAME is not set/);
  });
});
