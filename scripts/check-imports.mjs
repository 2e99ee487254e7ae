#!/usr/bin/env node
/**
 * Import-graph check (run by `npm run lint`): fails when the TypeScript sources under src/ and
 * middleware/ import each other in a cycle, type-only imports included (a type cycle is still a
 * tangle of owners), or when a middleware reaches into src/controller or src/worker internals.
 * Reads `import ... from`, `export ... from`, `import()` and `require()` with relative paths; no
 * package is needed for that.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const ROOT = resolve(dirname(new URL(import.meta.url).pathname), '..');
const DIRS = ['src', 'middleware'];
/** Folders a middleware must not import from: it gets what it needs through the public types. */
const MIDDLEWARE_FORBIDDEN = ['src/controller/', 'src/worker/', 'src/commands/'];

function files(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...files(p));
    else if (p.endsWith('.ts') && !p.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

const SPEC = /(?:\bfrom\s*|\bimport\s*\(\s*|\brequire\s*\(\s*|^\s*import\s+)['"](\.{1,2}\/[^'"]*)['"]/gm;

function resolveSpec(from, spec) {
  const base = resolve(dirname(from), spec.replace(/\.js$/, ''));
  for (const candidate of [`${base}.ts`, join(base, 'index.ts')]) if (existsSync(candidate)) return candidate;
  return undefined;
}

const graph = new Map();
for (const dir of DIRS) {
  for (const file of files(join(ROOT, dir))) {
    const text = readFileSync(file, 'utf8').replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
    const deps = new Set();
    for (const m of text.matchAll(SPEC)) {
      const target = resolveSpec(file, m[1]);
      if (target) deps.add(target);
    }
    graph.set(file, deps);
  }
}

const rel = (f) => relative(ROOT, f);
const problems = [];

for (const [file, deps] of graph) {
  if (!rel(file).startsWith('middleware/')) continue;
  for (const d of deps) {
    const r = rel(d);
    if (MIDDLEWARE_FORBIDDEN.some((p) => r.startsWith(p))) problems.push(`${rel(file)} imports ${r}: middleware use the public types (src/types.ts), not controller internals`);
  }
}

// Tarjan's strongly connected components: every component of more than one file is a cycle.
let index = 0;
const stack = [];
const meta = new Map();
function strong(v) {
  meta.set(v, { index, low: index, on: true });
  index++;
  stack.push(v);
  for (const w of graph.get(v) ?? []) {
    if (!graph.has(w)) continue;
    if (!meta.has(w)) {
      strong(w);
      meta.get(v).low = Math.min(meta.get(v).low, meta.get(w).low);
    } else if (meta.get(w).on) {
      meta.get(v).low = Math.min(meta.get(v).low, meta.get(w).index);
    }
  }
  if (meta.get(v).low === meta.get(v).index) {
    const component = [];
    let w;
    do {
      w = stack.pop();
      meta.get(w).on = false;
      component.push(w);
    } while (w !== v);
    if (component.length > 1 || graph.get(v).has(v)) problems.push(`import cycle: ${component.map(rel).sort().join(' <-> ')}`);
  }
}
for (const v of graph.keys()) if (!meta.has(v)) strong(v);

if (problems.length > 0) {
  for (const p of problems) console.error(p);
  console.error(`check-imports: ${problems.length} problem(s)`);
  process.exit(1);
}
console.log(`check-imports: ${graph.size} files, no cycles`);
