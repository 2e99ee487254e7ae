/**
 * The repository's documents stand on their own: no citation of design notes that are not in it,
 * the license package.json promises is there, and the README's examples match what the code does.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { ERROR_CATALOGUE } from '../../src/errors';
import { newId } from '../../src/ids';

const ROOT = join(__dirname, '..', '..');

function filesUnder(dir: string, ext: RegExp): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...filesUnder(path, ext));
    else if (ext.test(name)) out.push(path);
  }
  return out;
}

test('docs - no document, code comment or config cites DESIGN.md, "DESIGN §N" or "the PRD"', () => {
  const files = [
    join(ROOT, 'README.md'),
    join(ROOT, 'cluster.yaml'),
    ...filesUnder(join(ROOT, 'docs'), /\.(md|js|py)$/),
    ...filesUnder(join(ROOT, 'src'), /\.ts$/),
    ...filesUnder(join(ROOT, 'middleware'), /\.ts$/),
    ...filesUnder(join(ROOT, 'bench'), /\.ts$/),
  ];
  expect(files.length).toBeGreaterThan(40);
  const citations = files.flatMap((f) =>
    readFileSync(f, 'utf8')
      .split('\n')
      .map((line, i) => ({ at: `${relative(ROOT, f)}:${i + 1}`, line }))
      .filter(({ line }) => /DESIGN\.md|DESIGN §|\bDESIGN's\b|\bPRD\b|STYLE §/.test(line)),
  );
  expect(citations).toEqual([]);
});

test('docs - the MIT LICENSE that package.json names is there', () => {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { license: string };
  expect(pkg.license).toBe('MIT');
  expect(existsSync(join(ROOT, 'LICENSE'))).toBe(true);
  const license = readFileSync(join(ROOT, 'LICENSE'), 'utf8');
  expect(license).toMatch(/^MIT License/);
  expect(license).toMatch(/Permission is hereby granted, free of charge/);
});

test("docs - the README's metadata example shows a request id of the form the router makes", () => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const shown = /"requestId": "([^"]+)"/.exec(readme)?.[1];
  expect(shown).toBeDefined();
  // The same shape as a fresh id: prefix, then a UUID.
  const shape = (id: string): string => id.replace(/[0-9a-f]/g, 'x');
  expect(shape(shown!)).toBe(shape(newId('req')));
  expect(shown).toMatch(/^req-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
});

test('docs - docs/errors.md has one row per error code, with the catalogue\'s HTTP status, type and OpenAI code', () => {
  const text = readFileSync(join(ROOT, 'docs', 'errors.md'), 'utf8');
  const rows = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const cells = line.split('|').map((c) => c.trim());
    const code = /^`([A-Z_]+)`$/.exec(cells[1] ?? '')?.[1];
    if (code && /^`[a-z_]+`$/.test(cells[4] ?? '')) rows.set(code, cells.slice(2, 5).map((c) => c.replace(/`/g, '')));
  }
  const expected = new Map(Object.entries(ERROR_CATALOGUE).map(([code, e]) => [code, [String(e.status), e.type, e.openaiCode]]));
  expect(rows).toEqual(expected);
});
