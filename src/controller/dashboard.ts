/**
 * `/dashboard`: the operator page, served from static files shipped in the package (`dashboard/`
 * at the package root: HTML, CSS and one dependency-free script; nothing is built at install).
 * The files are read once, at start; the page reads the cluster API and its event feed.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { FastifyInstance, FastifyReply } from 'fastify';

/** The package root: the nearest folder above this module with our package.json (src/ or dist/src/). */
export function packageRoot(from: string = __dirname): string {
  for (let dir = from; ; dir = dirname(dir)) {
    const file = join(dir, 'package.json');
    if (existsSync(file) && (JSON.parse(readFileSync(file, 'utf8')) as { name?: string }).name === 'mlx-router') return dir;
    if (dirname(dir) === dir) throw new Error(`mlx-router's package.json not found above ${from}`);
  }
}

let version: string | undefined;
export function packageVersion(): string {
  version ??= (JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
  return version;
}

const FILES: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
};

export function registerDashboard(app: FastifyInstance): void {
  const dir = join(packageRoot(), 'dashboard');
  const files = new Map<string, { body: Buffer; type: string }>();
  for (const [name, type] of Object.entries(FILES)) files.set(name, { body: readFileSync(join(dir, name)), type });
  const serve = (name: string) => async (_req: unknown, reply: FastifyReply) => {
    const f = files.get(name)!;
    return reply.type(f.type).header('cache-control', 'no-cache').header('x-content-type-options', 'nosniff').send(f.body);
  };
  app.get('/dashboard', serve('index.html'));
  app.get('/dashboard/', serve('index.html'));
  for (const name of Object.keys(FILES)) app.get(`/dashboard/${name}`, serve(name));
}
