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
        'shadow.peers',
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
});
