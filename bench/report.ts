/**
 * Figures and how they are shown: a table on the terminal, the JSON record in bench/results/, and
 * the generated part of docs/benchmarks.md (between two markers; the text around them is kept).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { dirname } from 'node:path';
import { fmt } from './stats';

/** One reported number, with the baseline it was measured against in the same run. */
export interface Figure {
  scenario: number;
  name: string;
  value: number;
  unit: string;
  baseline?: { label: string; value: number };
  /** Target as text (e.g. "≥ 0.8× floor") and whether this run met it. */
  target?: string;
  met?: boolean;
  note?: string;
}

export const SCENARIOS: Record<number, string> = {
  1: 'Floor: node:http → one NATS request → instant responder',
  2: 'Router, default chain, one zero-latency synthetic worker',
  3: 'Chain cost',
  4: 'Failover cost',
  5: 'Breaker decision',
  6: 'Scale',
  7: 'Memory',
  8: 'Prefix-cache-aware routing (multi-turn, shared prefixes, no sharing, a worker killed)',
  9: 'Several controllers',
  10: 'Hedging: extra attempts on a healthy cluster, time to first token with one slow worker',
};

export interface Machine {
  node: string;
  cpu: string;
  cores: number;
  memoryGiB: number;
  platform: string;
}

export function machine(): Machine {
  const list = cpus();
  return {
    node: process.version,
    cpu: list[0]?.model?.trim() ?? 'unknown',
    cores: list.length,
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    platform: `${process.platform} ${process.arch}`,
  };
}

function ratio(f: Figure): string {
  if (!f.baseline || f.baseline.value === 0 || Number.isNaN(f.baseline.value)) return '';
  return `${(f.value / f.baseline.value).toFixed(2)}×`;
}

function delta(f: Figure): string {
  if (!f.baseline) return '';
  const d = f.value - f.baseline.value;
  return `${d >= 0 ? '+' : ''}${fmt(d)}`;
}

function row(f: Figure): string[] {
  return [
    f.name,
    `${fmt(f.value)} ${f.unit}`,
    f.baseline ? `${fmt(f.baseline.value)} (${f.baseline.label})` : '',
    delta(f),
    ratio(f),
    f.target ?? '',
    f.met === undefined ? '' : f.met ? 'yes' : 'NO',
  ];
}

const HEADER = ['figure', 'value', 'baseline (same run)', 'Δ', 'ratio', 'target', 'met'];

/** The terminal table, grouped by scenario. */
export function terminalTable(figures: Figure[]): string {
  const rows = figures.map(row);
  const widths = HEADER.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
  const out: string[] = [line(HEADER), widths.map((w) => '─'.repeat(w)).join('  ')];
  let scenario = 0;
  figures.forEach((f, i) => {
    if (f.scenario !== scenario) {
      scenario = f.scenario;
      out.push(`${scenario}. ${SCENARIOS[scenario]}`);
    }
    out.push(line(rows[i]));
    if (f.note) out.push(`    ${f.note}`);
  });
  return out.join('\n');
}

/** The same table in Markdown, one section per scenario. */
export function markdownTable(figures: Figure[]): string {
  const out: string[] = [];
  let scenario = 0;
  const esc = (s: string): string => s.replace(/\|/g, '\\|');
  for (const f of figures) {
    if (f.scenario !== scenario) {
      scenario = f.scenario;
      out.push('', `**${scenario}. ${SCENARIOS[scenario]}**`, '', `| ${HEADER.join(' | ')} |`, `|${HEADER.map(() => '---').join('|')}|`);
    }
    const cells = row(f);
    if (f.note) cells[0] += ` <br><sub>${f.note}</sub>`;
    out.push(`| ${cells.map(esc).join(' | ')} |`);
  }
  return out.join('\n').trim();
}

export const BEGIN = '<!-- bench:results:begin (written by `npm run bench`; edit outside these markers) -->';
export const END = '<!-- bench:results:end -->';

/** Replaces the generated section of the doc (creates the doc with a stub around it if missing). */
export function writeDocSection(file: string, section: string): void {
  const generated = `${BEGIN}\n${section}\n${END}`;
  let text = existsSync(file) ? readFileSync(file, 'utf8') : `# Benchmarks\n\n${BEGIN}\n${END}\n`;
  const a = text.indexOf(BEGIN);
  const b = text.indexOf(END);
  text = a >= 0 && b > a ? text.slice(0, a) + generated + text.slice(b + END.length) : `${text.trimEnd()}\n\n${generated}\n`;
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, text);
}
