/**
 * Progress for long phases: one `\r`-rewritten line on stderr when it is a terminal, and one plain
 * line per finished phase otherwise (CI logs should not fill with carriage returns).
 */

const WIDTH = 24;

export interface Progress {
  /** Fraction done in [0, 1] and a short live detail (e.g. the current request rate). */
  update(fraction: number, detail?: string): void;
  /** Ends the line with a summary. */
  done(summary: string): void;
}

function bar(fraction: number): string {
  const f = Math.max(0, Math.min(1, fraction));
  const full = Math.round(f * WIDTH);
  return '█'.repeat(full) + '░'.repeat(WIDTH - full);
}

/** A progress line for one phase; the label names scenario and phase. */
export function progress(label: string): Progress {
  const tty = process.stderr.isTTY === true;
  let last = 0;
  const write = (text: string): void => {
    const cols = process.stderr.columns || 100;
    process.stderr.write('\r' + text.slice(0, cols - 1).padEnd(Math.min(cols - 1, last)));
    last = Math.min(cols - 1, text.length);
  };
  return {
    update(fraction, detail = '') {
      if (tty) write(`  ${label}  ${bar(fraction)} ${String(Math.round(fraction * 100)).padStart(3)}%  ${detail}`);
    },
    done(summary) {
      if (tty) {
        write(`  ${label}  ${summary}`);
        process.stderr.write('\n');
      } else {
        process.stderr.write(`  ${label}  ${summary}\n`);
      }
    },
  };
}

/** A heading line on stderr, so stdout can stay the table alone. */
export function say(text: string): void {
  process.stderr.write(text + '\n');
}
