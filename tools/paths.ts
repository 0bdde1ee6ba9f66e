/** Where the product is, from a tool run from its sources (tests) or from its build. */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json'))) dir = path.dirname(dir);
  return dir;
}

export const ROOT = repoRoot();
/** the product's CLI, as `npm run build` makes it (what is shipped) */
export const PRODUCT_CLI = path.join(ROOT, 'dist', 'cli.js');
