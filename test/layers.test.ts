/**
 * The layering of src/: reads every import (static, dynamic, type-only, re-export) of every
 * file and checks the graph between parts (a folder of src/, or one of the two root files):
 * no cycle between parts, nothing imports the composition root or the CLI (but the CLI
 * starting the root), and each part imports only parts of the layers below it (README
 * "Design").
 */
import { describe, it, expect } from 'vitest';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { ROOT } from './helpers/index.js';

const SRC = path.join(ROOT, 'src');

/** Bottom first; a part may import only parts of the layers before its own. */
const LAYERS: string[][] = [
  ['base'],
  ['passwords', 'spool', 'certs'],
  ['config', 'shadow', 'delivery', 'smtp'],
  ['accept'],
  ['ops'],
  ['relay.ts'],
  ['cli.ts'],
];

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return e.name.endsWith('.ts') ? [p] : [];
  });
}

/** The part a file of src/ belongs to: its folder under src/, or its own name at the top. */
function partOf(file: string): string {
  const rel = path.relative(SRC, file).split(path.sep);
  return rel[0]!;
}

const IMPORT = /(?:^|[\s;])(?:import|export)\b[^'"`;]*?\bfrom\s*['"]([^'"]+)['"]|\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)|^\s*import\s+['"]([^'"]+)['"]/gm;

/** Edges part → part, each with one file that makes it (for the failure message). */
function importGraph(): Map<string, Map<string, string>> {
  const graph = new Map<string, Map<string, string>>();
  for (const file of sources(SRC)) {
    const from = partOf(file);
    const edges = graph.get(from) ?? new Map<string, string>();
    graph.set(from, edges);
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(IMPORT)) {
      const spec = m[1] ?? m[2] ?? m[3]!;
      if (!spec.startsWith('.')) continue; // a package
      const target = path.resolve(path.dirname(file), spec.replace(/\.js$/, '.ts'));
      expect(target.startsWith(SRC + path.sep), `${path.relative(ROOT, file)} imports ${spec}, outside src/`).toBe(true);
      const to = partOf(target);
      if (to !== from && !edges.has(to)) edges.set(to, path.relative(ROOT, file));
    }
  }
  return graph;
}

/** Every cycle's parts (strongly connected components of more than one part). */
function cycles(graph: Map<string, Map<string, string>>): string[][] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v)?.keys() ?? []) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const scc: string[] = [];
      for (let w = ''; w !== v; ) {
        w = stack.pop()!;
        onStack.delete(w);
        scc.push(w);
      }
      if (scc.length > 1) out.push(scc.sort());
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) visit(v);
  return out;
}

describe('layers of src/', () => {
  const graph = importGraph();
  const describeEdge = (from: string, to: string) => `${from} → ${to} (${graph.get(from)!.get(to)})`;

  it('has no import cycle between parts', () => {
    const found = cycles(graph).map((c) => c.flatMap((p) => c.filter((q) => graph.get(p)?.has(q)).map((q) => describeEdge(p, q))));
    expect(found).toEqual([]);
  });

  it('nothing imports the composition root or the CLI (the CLI starts the root)', () => {
    const bad: string[] = [];
    for (const [from, edges] of graph) {
      for (const to of edges.keys()) {
        if (to === 'cli.ts' || (to === 'relay.ts' && from !== 'cli.ts')) bad.push(describeEdge(from, to));
      }
    }
    expect(bad).toEqual([]);
  });

  it('each part imports only parts of the layers below it', () => {
    const layer = new Map(LAYERS.flatMap((parts, i) => parts.map((p) => [p, i] as const)));
    expect([...graph.keys()].filter((p) => !layer.has(p)), 'parts missing from LAYERS').toEqual([]);
    const bad: string[] = [];
    for (const [from, edges] of graph) {
      for (const to of edges.keys()) if (layer.get(to)! >= layer.get(from)!) bad.push(describeEdge(from, to));
    }
    expect(bad).toEqual([]);
  });
});
