/**
 * The Grafana dashboard (deploy/grafana/) and the Prometheus rules (deploy/prometheus/)
 * against a real node: every query parses as PromQL (Prometheus's own Lezer grammar) and
 * names only metrics the node exports on /metrics (scraped from a running pair), recording
 * rules excepted where the rules file defines them; the rules file has Prometheus's rule
 * structure (and passes `promtool check rules` where promtool is installed).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import YAML from 'yaml';
import { parser } from '@prometheus-io/lezer-promql';
import { startPair, send, which, runCommand, ROOT, type Pair } from '../helpers/index.js';

const DASHBOARD = path.join(ROOT, 'deploy', 'grafana', 'shadowrelay.json');
const RULES = path.join(ROOT, 'deploy', 'prometheus', 'shadowrelay-rules.yml');

let pair: Pair;
/** every sample name the node can export (histograms with their _bucket/_sum/_count) */
const exported = new Set<string>();
let scrape = '';

beforeAll(async () => {
  pair = await startPair();
  // one message through the pair: the latency histograms have samples
  expect((await send(pair.a.addresses.smtp.port)).code).toBe(250);
  scrape = await new Promise<string>((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port: pair.a.addresses.admin.port, path: '/metrics' }, (res) => {
        let t = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (t += d));
        res.on('end', () => resolve(t));
      })
      .on('error', reject);
  });
  for (const m of scrape.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    const [, name, type] = m as unknown as [string, string, string];
    exported.add(name);
    if (type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) exported.add(name + s);
    if (type === 'summary') for (const s of ['_sum', '_count']) exported.add(name + s);
  }
}, 60000);

afterAll(async () => {
  await pair?.stop();
});

/** Grafana's template variables, as Prometheus would see them after substitution. */
function grafanaToPromQL(expr: string): string {
  return expr.replace(/\$__rate_interval|\$__interval|\$__range/g, '5m').replace(/\$node|\$\{node\}/g, '.*');
}

/** The metric names a PromQL expression selects; throws on a syntax error. */
function metricNames(expr: string): string[] {
  const tree = parser.parse(expr);
  const names: string[] = [];
  const c = tree.cursor();
  do {
    if (c.type.isError) throw new Error(`PromQL syntax error at ${c.from} in: ${expr}`);
    if (c.type.name === 'Identifier' && c.node.parent?.type.name === 'VectorSelector') names.push(expr.slice(c.from, c.to));
  } while (c.next());
  return names;
}

interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: unknown;
  gridPos?: unknown;
  targets?: Array<{ expr: string; refId: string }>;
  panels?: Panel[];
}

describe('Grafana dashboard', () => {
  it('parses, and every query names a metric the node exports', () => {
    expect(exported.has('shadowrelay_replication_seconds_bucket')).toBe(true);
    const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { uid: string; panels: Panel[]; templating: { list: Array<{ query?: unknown }> } };
    expect(dash.uid).toBe('shadowrelay');
    const panels = dash.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
    expect(new Set(panels.map((p) => p.id)).size).toBe(panels.length);
    const used = new Set<string>();
    let queries = 0;
    for (const p of panels.filter((x) => x.type !== 'row')) {
      expect(p.gridPos, p.title).toBeDefined();
      expect(p.datasource, p.title).toBeDefined();
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
      for (const t of p.targets!) {
        queries++;
        const names = metricNames(grafanaToPromQL(t.expr));
        expect(names.length, `${p.title}: ${t.expr}`).toBeGreaterThan(0);
        for (const n of names) {
          expect(exported.has(n), `${p.title}: ${n} is not exported by the node`).toBe(true);
          used.add(n);
        }
      }
    }
    for (const v of dash.templating.list) {
      const q = typeof v.query === 'object' && v.query ? (v.query as { query: string }).query : v.query;
      const m = typeof q === 'string' ? /^label_values\((\w+),\s*(\w+)\)$/.exec(q) : null;
      if (m) expect(exported.has(m[1]!), `template variable: ${m[1]}`).toBe(true);
    }
    // what the operator needs to see is on it
    for (const n of [
      'shadowrelay_messages_accepted_total',
      'shadowrelay_messages_refused_total',
      'shadowrelay_deliveries_total',
      'shadowrelay_replication_seconds_bucket',
      'shadowrelay_peer_link_state',
      'shadowrelay_peer_up',
      'shadowrelay_queue_messages',
      'shadowrelay_queue_oldest_age_seconds',
      'shadowrelay_promoted_messages_total',
      'shadowrelay_duplicate_risk_total',
      'shadowrelay_delivery_deferrals_total',
      'shadowrelay_certificate_expiry_seconds',
      'shadowrelay_spool_bytes',
    ]) {
      expect(used.has(n), `the dashboard shows ${n}`).toBe(true);
    }
    console.log(`grafana.test: ${queries} queries over ${used.size} metrics, all exported`);
  });

  it('the checker itself refuses a misspelt metric and broken PromQL', () => {
    expect(exported.has('shadowrelay_peer_upp')).toBe(false);
    expect(metricNames('rate(shadowrelay_peer_upp[5m])')).toEqual(['shadowrelay_peer_upp']);
    expect(() => metricNames('sum(rate(shadowrelay_peer_up[5m])')).toThrow(/syntax error/);
  });
});

interface Rule {
  record?: string;
  alert?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

describe('Prometheus rules', () => {
  it('have the rule-file structure, parse, and name only exported metrics or their own recordings', async () => {
    const doc = YAML.parse(readFileSync(RULES, 'utf8')) as { groups: Array<{ name: string; rules: Rule[] }> };
    expect(Object.keys(doc)).toEqual(['groups']);
    const groupNames = doc.groups.map((g) => g.name);
    expect(new Set(groupNames).size).toBe(groupNames.length);
    const rules = doc.groups.flatMap((g) => g.rules);
    const recorded = new Set(rules.filter((r) => r.record).map((r) => r.record!));
    const allowedKeys = new Set(['record', 'alert', 'expr', 'for', 'keep_firing_for', 'labels', 'annotations']);
    for (const r of rules) {
      const what = r.alert ?? r.record ?? '?';
      expect(Object.keys(r).every((k) => allowedKeys.has(k)), `${what}: unknown key`).toBe(true);
      expect(!!r.record !== !!r.alert, `${what}: exactly one of record and alert`).toBe(true);
      expect(typeof r.expr, what).toBe('string');
      if (r.record) {
        expect(r.record, 'recording rule names are level:metric:operations').toMatch(/^[a-zA-Z_][\w]*:[\w:]+$/);
        expect(r.for, `${what}: a recording rule has no for`).toBeUndefined();
      } else {
        expect(r.alert).toMatch(/^[A-Z][A-Za-z0-9]+$/);
        if (r.for !== undefined) expect(r.for, `${what}: for`).toMatch(/^(\d+(ms|s|m|h|d|w|y))+$/);
        expect(['critical', 'warning', 'info']).toContain(r.labels?.severity);
        expect(r.annotations?.summary, `${what}: summary`).toBeTruthy();
      }
      for (const n of metricNames(r.expr)) {
        expect(exported.has(n) || recorded.has(n), `${what}: ${n} is neither exported nor recorded here`).toBe(true);
      }
    }
    const alerts = rules.filter((r) => r.alert).map((r) => `${r.alert}: ${r.expr}`);
    for (const [name, metric] of [
      ['no peer reachable', 'shadowrelay_peer_up'],
      ['451 rate', 'shadowrelay:refused_shadow:ratio_rate5m'],
      ['oldest message', 'shadowrelay_queue_oldest_age_seconds'],
      ['spool near full', 'shadowrelay_spool_max_bytes'],
      ['certificate expiry', 'shadowrelay_certificate_expiry_seconds < 14 * 86400'],
    ] as const) {
      expect(alerts.some((a) => a.includes(metric)), `an alert for ${name}`).toBe(true);
    }
    const promtool = which('promtool');
    if (promtool) {
      const r = await runCommand([promtool, 'check', 'rules', RULES]);
      expect(r.code, r.stdout + r.stderr).toBe(0);
    } else {
      console.log('grafana.test: promtool is not installed; the rule structure was checked here instead');
    }
  });
});
