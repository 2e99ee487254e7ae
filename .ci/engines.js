#!/usr/bin/env node
/**
 * Checks that every package in package-lock.json declares (through its `engines.node`) that it runs
 * on each Node version given: `node .ci/engines.js 20.19.0 22.23.5 24.22.3`. A package pinned back
 * for the lowest supported Node must still admit the newest ones, and no upgrade may drop one.
 */
'use strict';
const { readFileSync } = require('node:fs');
const { join } = require('node:path');
const semver = require('semver');

/**
 * Packages allowed to claim less, each with the reason it cannot matter. Keep this list short and
 * re-check it when a dependency is upgraded.
 */
const EXCEPTIONS = {
  // fastify requires light-my-request (and its cookie) lazily, only for fastify.inject(), which
  // mlx-router never calls; cookie 2 also loads and works on Node 20 (the suite runs on 20).
  cookie: 'only light-my-request (fastify.inject) uses it, never loaded by the router',
};

const versions = process.argv.slice(2).map((v) => v.replace(/^v/, ''));
if (versions.length === 0) {
  process.stderr.write('usage: node .ci/engines.js VERSION...\n');
  process.exit(2);
}
const lock = JSON.parse(readFileSync(join(__dirname, '..', 'package-lock.json'), 'utf8'));
const refused = [];
let checked = 0;
for (const [path, pkg] of Object.entries(lock.packages)) {
  const range = pkg.engines?.node;
  if (!path || !range) continue;
  checked++;
  const name = path.replace(/^.*node_modules\//, '');
  for (const v of versions) {
    if (semver.satisfies(v, range, { includePrerelease: true })) continue;
    if (EXCEPTIONS[name]) process.stdout.write(`engines: ${name}@${pkg.version} wants node ${range}, not ${v}; allowed: ${EXCEPTIONS[name]}\n`);
    else refused.push(`${name}@${pkg.version} wants node ${range}, not ${v}`);
  }
}
if (refused.length > 0) {
  process.stderr.write(`packages that do not support every tested Node:\n  ${refused.join('\n  ')}\n`);
  process.exit(1);
}
process.stdout.write(`engines: ${checked} packages with an engines.node range checked against node ${versions.join(', ')}: none refuses one\n`);
