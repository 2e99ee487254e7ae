/**
 * Headless Chromium for the dashboard tests: Debian's `chromium` (installed by .ci/run when
 * missing), driven by playwright-core, never a downloaded browser. Each launch gets a fresh
 * profile folder, removed on close.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

/** Where screenshots go (gitignored). */
export const ARTIFACTS = join(__dirname, '..', 'artifacts');

/** The path of Debian's chromium, or undefined when it is not installed. */
export function chromiumPath(): string | undefined {
  const found = spawnSync('which', ['chromium'], { encoding: 'utf8' }).stdout.trim();
  return found || undefined;
}

export interface Browser {
  page: Page;
  close(): Promise<void>;
}

export async function launchBrowser(viewport = { width: 1440, height: 900 }): Promise<Browser> {
  const executablePath = chromiumPath();
  if (!executablePath) throw new Error("no 'chromium' on PATH: apt-get install -y chromium (.ci/run does)");
  const profile = mkdtempSync(join(tmpdir(), 'mlx-router-chromium-'));
  let context: BrowserContext;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath,
      headless: true,
      viewport,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  } catch (err) {
    rmSync(profile, { recursive: true, force: true });
    throw err;
  }
  const page = context.pages()[0] ?? (await context.newPage());
  return {
    page,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
