/**
 * `npm run bench`: every scenario of docs/benchmarks.md in one run, each figure beside the
 * baseline it was measured against in the same run. Prints a table, writes the JSON record to
 * bench/results/<timestamp>.json and, for a full run, the generated table of docs/benchmarks.md.
 *
 *   npm run bench                  full run (about 5 minutes on 2 cores)
 *   npm run bench -- --smoke       about a second of load per scenario (CI)
 *   npm run bench -- --only 2,4    some scenarios only (never written to the docs)
 *   npm run bench -- --no-docs     leave docs/benchmarks.md alone
 *   npm run bench -- --only 2 --profile /tmp/prof
 *                                  CPU profiles of the floor and router processes (.cpuprofile)
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { childNodeFlags, stopAllLabs } from './lab';
import { BenchRun } from './measure';
import { say } from './progress';
import { machine, markdownTable, terminalTable, writeDocSection, SCENARIOS } from './report';
import { breakerDecision } from './scenarios/breaker';
import { severalControllers } from './scenarios/controllers';
import { chainCost } from './scenarios/chain';
import { failoverCost } from './scenarios/failover';
import { memory } from './scenarios/memory';
import { prefixRouting } from './scenarios/prefix';
import { hedging } from './scenarios/hedging';
import { floorAndRouter } from './scenarios/router';
import { scale } from './scenarios/scale';

const ROOT = resolve(__dirname, '../..');

const USAGE = `npm run bench [-- --smoke] [-- --only 1,2,...] [-- --no-docs]
  --smoke     about a second of load per scenario
  --only L    comma-separated scenarios (1 and 2 run together): ${Object.entries(SCENARIOS).map(([n, s]) => `\n                ${n} ${s}`).join('')}
  --no-docs   do not rewrite the generated table in docs/benchmarks.md
  --profile D write a CPU profile of every floor, responder and router process to folder D
`;

/** Scenario groups in run order; 1 and 2 share their rounds. */
const GROUPS: Array<{ scenarios: number[]; run: (r: BenchRun) => Promise<void> }> = [
  { scenarios: [1, 2], run: floorAndRouter },
  { scenarios: [3], run: chainCost },
  { scenarios: [4], run: failoverCost },
  { scenarios: [5], run: breakerDecision },
  { scenarios: [6], run: scale },
  { scenarios: [7], run: memory },
  { scenarios: [8], run: prefixRouting },
  { scenarios: [9], run: severalControllers },
  { scenarios: [10], run: hedging },
];

function parse(argv: string[]): { smoke: boolean; only: Set<number>; docs: boolean; profile?: string } | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      smoke: { type: 'boolean' },
      only: { type: 'string' },
      'no-docs': { type: 'boolean' },
      profile: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) return undefined;
  const all = Object.keys(SCENARIOS).map(Number);
  const only = values.only ? new Set(values.only.split(',').map((s) => Number(s.trim()))) : new Set(all);
  for (const n of only) if (!all.includes(n)) throw new Error(`--only: no scenario ${n} (1 to ${all.length})`);
  // A profiled run is slower than a real one: its figures must not become the published ones.
  const docs = !values['no-docs'] && !values.only && !values.smoke && !values.profile;
  return { smoke: values.smoke === true, only, docs, profile: values.profile ? resolve(values.profile) : undefined };
}

/** Set on SIGINT/SIGTERM: what fails after it is the interruption, not a finding. */
let interrupted = false;

async function main(): Promise<number> {
  let opts: ReturnType<typeof parse>;
  try {
    opts = parse(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (!opts) {
    process.stdout.write(USAGE);
    return 0;
  }
  const onSignal = (sig: NodeJS.Signals): void => {
    if (interrupted) return;
    interrupted = true;
    say(`\n${sig}: stopping every process the benchmark started…`);
    void stopAllLabs().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  if (opts.profile) {
    mkdirSync(opts.profile, { recursive: true });
    childNodeFlags.push('--cpu-prof', `--cpu-prof-dir=${opts.profile}`);
  }
  const run = new BenchRun({ smoke: opts.smoke, only: opts.only });
  const m = machine();
  const started = new Date();
  say(`mlx-router benchmark (${opts.smoke ? 'smoke' : 'full'}) · node ${m.node} · ${m.cpu} · ${m.cores} cores`);
  try {
    for (const g of GROUPS) {
      if (!g.scenarios.some((s) => opts.only.has(s))) continue;
      say(`\n${g.scenarios.map((s) => `${s}. ${SCENARIOS[s]}`).join('\n')}`);
      await g.run(run);
    }
  } finally {
    run.client.close();
    await stopAllLabs();
  }
  const seconds = (Date.now() - started.getTime()) / 1000;
  const figures = run.figures.filter((f) => opts.only.has(f.scenario));
  process.stdout.write(`\n${terminalTable(figures)}\n`);

  const stamp = started.toISOString().replace(/[:.]/g, '-');
  const dir = resolve(ROOT, 'bench/results');
  mkdirSync(dir, { recursive: true });
  const file = resolve(dir, `${stamp}.json`);
  const record = { startedAt: started.toISOString(), seconds, mode: opts.smoke ? 'smoke' : 'full', machine: m, figures, raw: run.raw };
  writeFileSync(file, JSON.stringify(record, null, 2));
  say(`\n${figures.length} figures in ${seconds.toFixed(0)} s · ${file}`);
  const missed = figures.filter((f) => f.met === false);
  if (missed.length) say(`targets not met: ${missed.map((f) => `${f.scenario}. ${f.name}`).join('; ')}`);

  if (opts.docs) {
    const header =
      `Latest full run: ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC, ${seconds.toFixed(0)} s · ` +
      `node ${m.node} · ${m.cpu} · ${m.cores} cores · ${m.memoryGiB} GiB · ${m.platform}`;
    writeDocSection(resolve(ROOT, 'docs/benchmarks.md'), `${header}\n\n${markdownTable(figures)}`);
    say('docs/benchmarks.md updated');
  }
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  async (err) => {
    if (interrupted) return;
    process.stderr.write(`\nbenchmark failed: ${(err as Error).stack ?? String(err)}\n`);
    await stopAllLabs();
    process.exitCode = 1;
  },
);
